//! The in-memory store: zero set-up, one process, FIFO by time of return.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::credential::{
    Credential, CredentialChange, CredentialInfo, LeaseInfo, NewCredential, PoolSummary,
    ReleaseOutcome, StateKind, Stats, StoredCredential,
};
use crate::error::{Error, Result};
use crate::ids::{this_process, CredentialId, LeaseId, LeaseToken};
use crate::limits::Limit;
use crate::store::{
    Added, Admin, ExpiredLease, Grant, GrantAnswer, GrantAttempt, Granting, Leases, OnBusy,
    OnDuplicate, Progress, Receipt, StoreSettings, Want,
};
use crate::time::{duration_ms, earliest, from_ms, now_ms};

/// A store that keeps its pool in this process's memory.
///
/// Credentials are handed out first in, first out by the time they were
/// returned (or added). Nothing survives the process.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), credpool::Error> {
/// use credpool::{MemoryStore, NewCredential, Pool};
/// let pool = Pool::new(MemoryStore::new());
/// pool.add(NewCredential::new("alice", "hunter2")).await?;
/// let lease = pool.acquire().await?;
/// assert_eq!(lease.credential().name(), "alice");
/// # Ok(()) }
/// ```
pub struct MemoryStore {
    settings: StoreSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Indexed by credential id; a removed credential leaves `None`, so ids are never reused.
    slots: Vec<Option<Slot>>,
    by_name: HashMap<Arc<str>, usize>,
    /// Free units of capacity, oldest return first, in runs: one entry
    /// stands for `units` units of one credential returned one after the
    /// other, so a credential of any capacity costs one entry, not one per
    /// unit. An entry is valid while its generation matches the slot's;
    /// stale ones are skipped.
    ready: Ready,
    /// Compact the ready queue when it grows past this many runs.
    compact_at: usize,
    cooling: BinaryHeap<Reverse<(i64, usize)>>,
    expiring: BinaryHeap<Reverse<(i64, usize, LeaseId)>>,
    next_lease: u64,
    /// Credentials that exist and are enabled.
    enabled: usize,
    /// The pool's default quotas, by scope (`""`: every scope).
    default_rates: std::collections::BTreeMap<String, crate::Rate>,
    /// What the weighted waiters of the pool's lines ask for, one entry a
    /// waiter: the credentials that may serve them are kept from the asks
    /// of other lines ([`Leases::weighted_waiting`]).
    kept: Vec<Want>,
}

/// The run-length queue of free units.
#[derive(Default)]
struct Ready(VecDeque<Run>);

/// `units` free units of the credential at `index`, of `generation`.
#[derive(Clone, Copy)]
struct Run {
    index: usize,
    generation: u32,
    units: u32,
}

impl Ready {
    /// Adds `units` free units at the back, joining the last run when it is
    /// the same credential's.
    fn push_back(&mut self, index: usize, generation: u32, units: usize) {
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        if units == 0 {
            return;
        }
        if let Some(last) = self.0.back_mut() {
            if last.index == index && last.generation == generation {
                last.units = last.units.saturating_add(units);
                return;
            }
        }
        self.0.push_back(Run {
            index,
            generation,
            units,
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Slot {
    credential: Credential,
    holders: Vec<Holder>,
    /// The units the holders hold, together (a weighted lease holds more than one).
    held: u32,
    disabled: Option<String>,
    cooling_until: Option<i64>,
    generation: u32,
    last_used_at: Option<i64>,
    use_count: u64,
    created_at: i64,
    /// Quotas and reported budgets by scope (`""`: every scope); a block
    /// of every scope is also kept in `cooling_until`.
    limits: Vec<Limit>,
}

struct Holder {
    lease_id: LeaseId,
    acquired_at: i64,
    expires_at: Option<i64>,
    units: u32,
}

impl Slot {
    fn free_units(&self) -> usize {
        (self.credential.capacity() as usize).saturating_sub(self.held as usize)
    }

    /// Whether `units` units are free at once.
    fn has_free(&self, units: u32) -> bool {
        self.free_units() >= units as usize
    }

    /// Whether this credential is kept for a weighted waiter of another
    /// line than `want`'s: one it may serve (its name, its scope not
    /// blocked here) and has the capacity for. A weighted waiter itself
    /// yields only to those that began to wait before it.
    fn kept_from(&self, kept: &[Want], want: &Want, now: i64) -> bool {
        let before = match kept.iter().position(|waiting| waiting == want) {
            Some(mine) => &kept[..mine],
            None => kept,
        };
        before.iter().any(|waiting| {
            !waiting.same_line(want)
                && waiting
                    .name()
                    .is_none_or(|name| self.credential.name() == name)
                && waiting.units_asked() <= self.most_units(waiting.scope_key())
                && self.blocked_for(waiting.scope_key(), 1, now).is_none()
        })
    }

    /// Takes out the holder at `held`; returns its units.
    fn drop_holder(&mut self, held: usize) -> u32 {
        let holder = self.holders.swap_remove(held);
        self.held = self.held.saturating_sub(holder.units);
        holder.units
    }

    /// The most units one grant for `scope` may take here: its capacity,
    /// or less under a quota of that scope or of every scope.
    fn most_units(&self, scope: &str) -> u32 {
        self.limits
            .iter()
            .filter(|limit| limit.scope.is_empty() || limit.scope == scope)
            .filter_map(Limit::most_units)
            .fold(self.credential.capacity(), u32::min)
    }

    fn can_hand_out(&self) -> bool {
        self.disabled.is_none() && self.cooling_until.is_none()
    }

    /// Until when this credential refuses a grant in `scope` (`""`: the
    /// default) of `units` grants at once, beyond a cool-down of every scope.
    fn blocked_for(&self, scope: &str, units: u32, now: i64) -> Option<i64> {
        self.limits
            .iter()
            .filter(|limit| limit.scope.is_empty() || limit.scope == scope)
            .filter_map(|limit| limit.blocked_for(now, units))
            .max()
    }

    /// Changes the limit of `scope` (made when missing) with `change`. A
    /// cool-down that the limit of every scope set before ends, to be set
    /// again from what it says now (`State::block_every_scope`): returns
    /// whether it did (the credential's free units are then to be queued
    /// anew). A limit that says nothing any more goes.
    fn change_limit(&mut self, scope: &str, now: i64, change: impl FnOnce(&mut Limit)) -> bool {
        let limit = self.limit_mut(scope);
        let old_block = limit.blocked_until(now);
        change(limit);
        let lifted = scope.is_empty() && old_block.is_some() && self.cooling_until == old_block;
        if lifted {
            self.cooling_until = None;
            self.generation = self.generation.wrapping_add(1);
        }
        self.limits.retain(|limit| !limit.is_idle(now));
        lifted
    }

    /// The limit of `scope`, made when it is missing.
    fn limit_mut(&mut self, scope: &str) -> &mut Limit {
        let at = match self.limits.iter().position(|limit| limit.scope == scope) {
            Some(at) => at,
            None => {
                self.limits.push(Limit::new(scope));
                self.limits.sort_by(|a, b| a.scope.cmp(&b.scope));
                self.limits
                    .iter()
                    .position(|limit| limit.scope == scope)
                    .unwrap_or_default()
            }
        };
        &mut self.limits[at]
    }
}

impl MemoryStore {
    /// Adds the credentials, all or nothing, under one lock.
    fn add_all(&self, credentials: Vec<NewCredential>, on_duplicate: OnDuplicate) -> Result<Added> {
        let now = now_ms();
        let mut state = self.lock();
        if on_duplicate == OnDuplicate::Fail {
            let mut seen = HashSet::with_capacity(credentials.len());
            for (position, credential) in credentials.iter().enumerate() {
                let name = credential.name.as_str();
                if state.by_name.contains_key(name) || !seen.insert(name) {
                    return Err(Error::DuplicateName {
                        name: name.to_string(),
                        pool: self.settings.pool().to_string(),
                        entry: Some(position),
                    });
                }
            }
        }
        let mut added = Added::default();
        for (position, new) in credentials.into_iter().enumerate() {
            if state.by_name.contains_key(new.name.as_str()) {
                added.skipped.push(position);
            } else {
                state.insert(new, now);
                added.count += 1;
            }
        }
        Ok(added)
    }

    /// An empty store for the pool named `default`.
    pub fn new() -> Self {
        Self::with_pool_name("default")
    }

    /// An empty store for a pool with the given name (used in messages).
    pub fn with_pool_name(name: impl Into<String>) -> Self {
        Self {
            settings: StoreSettings::new(name),
            state: Mutex::new(State {
                next_lease: 1,
                compact_at: 1024,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the state
        // is still consistent between operations, so go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unknown(&self, name: &str) -> Error {
        Error::UnknownCredential {
            name: name.to_string(),
            pool: self.settings.pool().to_string(),
        }
    }

    fn grant_now(&self, ttl: Option<Duration>, want: &Want) -> Result<GrantAnswer> {
        let now = now_ms();
        let mut expired = Vec::new();
        let mut state = self.lock();
        state.reclaim(now, &mut expired);
        // The unit found, and whether it was taken off the front of the
        // ready queue (its place in the queue's order is then right).
        let found = if want.is_any() && state.kept.is_empty() {
            state.next_ready().map(|index| (index, true))
        } else {
            self.find_for(&mut state, want, now)?
        };
        if let Some((index, in_order)) = found {
            let grant = state.lease_slot(index, ttl, want, now, in_order);
            return Ok(GrantAnswer {
                attempt: GrantAttempt::Granted(grant),
                expired,
            });
        }
        if state.enabled == 0 {
            return Err(Error::NoCredentials {
                pool: self.settings.pool().to_string(),
            });
        }
        if want.is_weighted() {
            self.check_units(&state, want)?;
        }
        let next_cool = state.cooling.peek().map(|Reverse((at, ..))| *at);
        let next_expiry = state.expiring.peek().map(|Reverse((at, ..))| *at);
        let mut retry_at = earliest(next_cool, next_expiry);
        if !want.is_any() {
            // A scope's own blocks end by themselves too.
            let scope = want.scope_key();
            let slots = state.slots.iter().flatten();
            let unblocked = slots
                .filter(|slot| {
                    want.name()
                        .is_none_or(|name| slot.credential.name() == name)
                })
                .filter_map(|slot| slot.blocked_for(scope, want.units_asked(), now))
                .filter(|&at| at != crate::limits::NEVER)
                .min();
            retry_at = earliest(retry_at, unblocked);
        }
        Ok(GrantAnswer {
            attempt: GrantAttempt::Busy {
                retry_at: retry_at.map(from_ms),
            },
            expired,
        })
    }

    /// The credential that serves `want` now, least recently used first:
    /// the ready queue's first entry that the scope does not block, or the
    /// one named. Returns its index, and whether its unit was taken off the
    /// front of the queue (the common case: the least recently used
    /// credential serves the scope); one found further back keeps its
    /// queued units, which the grant queues anew.
    fn find_for(&self, state: &mut State, want: &Want, now: i64) -> Result<Option<(usize, bool)>> {
        let scope = want.scope_key();
        if let Some(name) = want.name() {
            let index = state.index_of(name).ok_or_else(|| self.unknown(name))?;
            let Some(slot) = state.slots[index].as_ref() else {
                return Err(self.unknown(name));
            };
            if let Some(reason) = &slot.disabled {
                return Err(Error::Disabled {
                    name: name.to_string(),
                    pool: self.settings.pool().to_string(),
                    reason: reason.clone(),
                });
            }
            let free = slot.can_hand_out()
                && slot.has_free(want.units_asked())
                && slot.blocked_for(scope, want.units_asked(), now).is_none()
                && !slot.kept_from(&state.kept, want, now);
            return Ok(free.then_some((index, false)));
        }
        let units = want.units_asked();
        let State {
            slots, ready, kept, ..
        } = state;
        let usable = |run: &Run| {
            slots[run.index].as_ref().is_some_and(|slot| {
                slot.generation == run.generation && slot.can_hand_out() && slot.free_units() > 0
            })
        };
        // Stale entries at the front go, as a plain grant drops them.
        while ready.0.front().is_some_and(|run| !usable(run)) {
            ready.0.pop_front();
        }
        let serves = |run: &Run| {
            usable(run)
                && slots[run.index].as_ref().is_some_and(|slot| {
                    slot.has_free(units)
                        && slot.blocked_for(scope, units, now).is_none()
                        && !slot.kept_from(kept, want, now)
                })
        };
        let Some(position) = ready.0.iter().position(serves) else {
            return Ok(None);
        };
        let index = ready.0[position].index;
        // A weighted grant takes several units: the credential's queued
        // ones are queued anew, as for one found further back.
        if position > 0 || units > 1 || !kept.is_empty() {
            return Ok(Some((index, false)));
        }
        if let Some(front) = ready.0.front_mut() {
            front.units -= 1;
            if front.units == 0 {
                ready.0.pop_front();
            }
        }
        Ok(Some((index, true)))
    }

    /// Ends a lease and completes its receipt while the state is still
    /// locked, so that the pool hears of the release before anyone can be
    /// granted the credential it freed.
    fn release_now(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> Result<Arc<str>> {
        let mut state = self.lock();
        let result = state.release(lease, &outcome);
        match &result {
            Ok((name, units)) => receipt.released_units(name, *units),
            Err(_) => receipt.refused(),
        }
        drop(state);
        result.map(|(name, _)| name)
    }

    /// Fails a weighted grant that no enabled credential (or not the one
    /// named) could ever serve: its capacity, or a quota, is smaller.
    fn check_units(&self, state: &State, want: &Want) -> Result<()> {
        let scope = want.scope_key();
        let most = state
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.disabled.is_none())
            .filter(|slot| {
                want.name()
                    .is_none_or(|name| slot.credential.name() == name)
            })
            .map(|slot| slot.most_units(scope))
            .max()
            .unwrap_or(0);
        if want.units_asked() > most {
            return Err(Error::TooManyUnits {
                units: want.units_asked(),
                most,
                named: want.name().is_some(),
                pool: self.settings.pool().to_string(),
            });
        }
        Ok(())
    }
}

impl State {
    /// Takes the first free unit of the ready queue: its credential's index.
    fn next_ready(&mut self) -> Option<usize> {
        let State { slots, ready, .. } = self;
        while let Some(run) = ready.0.front_mut() {
            let usable = slots[run.index].as_ref().is_some_and(|slot| {
                slot.generation == run.generation && slot.can_hand_out() && slot.free_units() > 0
            });
            if !usable {
                // Stale: the credential was removed, disabled, cooled or is full.
                ready.0.pop_front();
                continue;
            }
            let index = run.index;
            run.units -= 1;
            if run.units == 0 {
                ready.0.pop_front();
            }
            return Some(index);
        }
        None
    }

    /// Leases a unit of the credential at `index` for `want`. One found
    /// out of the ready queue's order (`in_order` false) has its queued
    /// units queued anew, behind the others: it was used last.
    fn lease_slot(
        &mut self,
        index: usize,
        ttl: Option<Duration>,
        want: &Want,
        now: i64,
        in_order: bool,
    ) -> Grant {
        let lease_id = LeaseId::new(self.next_lease);
        self.next_lease += 1;
        let expires_at = ttl.map(|ttl| now.saturating_add(duration_ms(ttl)));
        let Some(slot) = self.slots[index].as_mut() else {
            unreachable!("a credential found free exists");
        };
        let units = want.units_asked();
        slot.holders.push(Holder {
            lease_id,
            acquired_at: now,
            expires_at,
            units,
        });
        slot.held += units;
        slot.last_used_at = Some(now);
        slot.use_count += 1;
        let grant = Grant {
            credential: slot.credential.clone(),
            lease_id,
            acquired_at: from_ms(now),
            expires_at: expires_at.map(from_ms),
            units,
        };
        if let Some(at) = expires_at {
            self.expiring.push(Reverse((at, index, lease_id)));
        }
        if !in_order {
            slot.generation = slot.generation.wrapping_add(1);
            if slot.can_hand_out() {
                self.ready
                    .push_back(index, slot.generation, slot.free_units());
            }
        }
        if !slot.limits.is_empty() {
            let scope = want.scope_key();
            for limit in &mut slot.limits {
                if limit.scope.is_empty() || limit.scope == scope {
                    limit.record_units(now, now, units);
                }
            }
            self.block_every_scope(index, now);
        }
        grant
    }

    /// Cools the credential at `index` down in every scope while its limit
    /// of every scope refuses grants.
    fn block_every_scope(&mut self, index: usize, now: i64) {
        let until = self.slots[index].as_ref().and_then(|slot| {
            slot.limits
                .iter()
                .find(|limit| limit.scope.is_empty())
                .and_then(|limit| limit.blocked_until(now))
        });
        if let Some(until) = until {
            self.cool(index, until);
        }
    }

    /// Cools the credential at `index` down until `until` (ms), unless it
    /// cools down longer already.
    fn cool(&mut self, index: usize, until: i64) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        if slot.cooling_until.is_none_or(|current| current < until) {
            slot.cooling_until = Some(until);
            slot.generation = slot.generation.wrapping_add(1);
            self.cooling.push(Reverse((until, index)));
        }
    }

    /// Ends a lease: the credential's name, and the units it held.
    fn release(&mut self, lease: LeaseToken, outcome: &ReleaseOutcome) -> Result<(Arc<str>, u32)> {
        let state = self;
        // The clock costs as much as the rest of a release: read it only when needed.
        let effect = outcome.effect();
        let timed = effect.cool_for.is_some() || effect.report.is_some();
        let now = if state.has_timers() || timed {
            let now = now_ms();
            state.reclaim(now, &mut Vec::new());
            now
        } else {
            0
        };
        let index = slot_index(lease.credential_id());
        let lost = || Error::LeaseLost {
            credential: lease.credential_id().to_string(),
            lease_id: lease.lease_id(),
        };
        let State {
            slots,
            ready,
            enabled,
            ..
        } = state;
        let slot = slots
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or_else(lost)?;
        let held = slot
            .holders
            .iter()
            .position(|holder| holder.lease_id == lease.lease_id())
            .ok_or_else(|| Error::LeaseLost {
                credential: slot.credential.name().to_string(),
                lease_id: lease.lease_id(),
            })?;
        let units = slot.drop_holder(held);
        let name = slot.credential.name_arc().clone();
        // The latest report holds: a cool-down of every scope that the last
        // one set ends, to be set again from what this one says.
        let lifted = effect.report.is_some_and(|limited| {
            slot.change_limit(limited.scope_key(), now, |limit| limit.report(limited, now))
        });
        if let Some(reason) = effect.disable {
            if slot.disabled.is_none() {
                *enabled -= 1;
                slot.generation = slot.generation.wrapping_add(1);
            }
            slot.disabled = Some(reason.to_string());
            return Ok((name, units));
        }
        let cool = effect.cooling_until(now);
        if lifted && slot.can_hand_out() {
            // Every free unit, this one too, is queued anew.
            ready.push_back(index, slot.generation, slot.free_units());
        } else if cool.is_none() && slot.can_hand_out() {
            ready.push_back(index, slot.generation, units as usize);
        }
        if let Some(until) = cool {
            state.cool(index, until);
        }
        if effect.report.is_some() {
            state.block_every_scope(index, now);
        }
        Ok((name, units))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("pool", &self.settings.pool())
            .field("credentials", &state.by_name.len())
            .finish()
    }
}

fn slot_index(id: CredentialId) -> usize {
    usize::try_from(id.get()).unwrap_or(usize::MAX)
}

impl State {
    /// Whether a cool-down or a lease expiry is pending.
    fn has_timers(&self) -> bool {
        !self.cooling.is_empty() || !self.expiring.is_empty()
    }

    /// Ends finished cool-downs and reclaims expired leases.
    fn reclaim(&mut self, now: i64, expired: &mut Vec<ExpiredLease>) {
        while let Some(&Reverse((until, index))) = self.cooling.peek() {
            if until > now {
                break;
            }
            self.cooling.pop();
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            // A later, longer cool-down replaced this one.
            if slot.cooling_until != Some(until) {
                continue;
            }
            slot.cooling_until = None;
            slot.generation = slot.generation.wrapping_add(1);
            if slot.disabled.is_none() {
                self.ready
                    .push_back(index, slot.generation, slot.free_units());
            }
        }
        while let Some(&Reverse((at, index, lease_id))) = self.expiring.peek() {
            if at > now {
                break;
            }
            self.expiring.pop();
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            let Some(held) = slot.holders.iter().position(|holder| {
                holder.lease_id == lease_id && holder.expires_at.is_some_and(|at| at <= now)
            }) else {
                continue;
            };
            let units = slot.drop_holder(held);
            expired.push(ExpiredLease {
                name: slot.credential.name_arc().clone(),
                lease_id,
            });
            if slot.can_hand_out() {
                self.ready.push_back(index, slot.generation, units as usize);
            }
        }
        if self.ready.len() > self.compact_at {
            self.compact_ready();
            // Runs that are all still valid are not compacted again until
            // the queue doubles, so a grant never pays for it twice in a row.
            self.compact_at = (2 * self.ready.len()).max(2 * self.by_name.len() + 1024);
        }
    }

    /// The credential named `name`: its index, its slot, and the ready
    /// queue beside it (for the units a change frees).
    fn named(&mut self, name: &str) -> Option<(usize, &mut Slot, &mut Ready)> {
        let index = self.index_of(name)?;
        let slot = self.slots[index].as_mut()?;
        Some((index, slot, &mut self.ready))
    }

    /// Drops the stale entries of the ready queue, keeping the order of the rest.
    fn compact_ready(&mut self) {
        let slots = &self.slots;
        self.ready.0.retain(
            |&Run {
                 index, generation, ..
             }| {
                slots[index]
                    .as_ref()
                    .is_some_and(|slot| slot.generation == generation && slot.can_hand_out())
            },
        );
    }

    fn insert(&mut self, new: NewCredential, now: i64) {
        let index = self.slots.len();
        let name: Arc<str> = Arc::from(new.name);
        let capacity = new.capacity;
        let disabled = new.disabled;
        let mut limits: Vec<Limit> = new
            .rates
            .into_iter()
            .map(|(scope, rate)| Limit {
                rate: Some(rate),
                ..Limit::new(&scope)
            })
            .collect();
        for (scope, rate) in &self.default_rates {
            if !limits.iter().any(|limit| &limit.scope == scope) {
                limits.push(Limit {
                    rate: Some(*rate),
                    inherited: true,
                    ..Limit::new(scope)
                });
            }
        }
        limits.sort_by(|a, b| a.scope.cmp(&b.scope));
        let credential = Credential::new(
            CredentialId::new(index as u64),
            name.clone(),
            new.secret,
            new.extra,
            capacity,
        );
        if disabled.is_none() {
            self.ready.push_back(index, 0, capacity as usize);
            self.enabled += 1;
        }
        self.by_name.insert(name, index);
        self.slots.push(Some(Slot {
            credential,
            holders: Vec::new(),
            held: 0,
            disabled,
            cooling_until: None,
            generation: 0,
            last_used_at: None,
            use_count: 0,
            created_at: now,
            limits,
        }));
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn info(&self, index: usize, slot: &Slot, now: i64) -> CredentialInfo {
        let stored = StoredCredential {
            id: CredentialId::new(index as u64),
            name: slot.credential.name().to_string(),
            capacity: slot.credential.capacity(),
            holders: slot.held,
            disabled_reason: slot.disabled.clone(),
            cooling_until: slot.cooling_until.map(from_ms),
            has_extra: slot.credential.extra().is_some(),
            last_used_at: slot.last_used_at.map(from_ms),
            use_count: slot.use_count,
            created_at: from_ms(slot.created_at),
            limits: slot.limits.iter().map(|limit| limit.info(now)).collect(),
            leases: slot
                .holders
                .iter()
                .filter(|holder| holder.expires_at.is_none_or(|at| at > now))
                .map(|holder| {
                    LeaseInfo::new(
                        Some(this_process().to_owned()),
                        from_ms(holder.acquired_at),
                        holder.expires_at.map(from_ms),
                        holder.units,
                    )
                })
                .collect(),
        };
        CredentialInfo::new(stored, from_ms(now))
    }
}

impl Leases for MemoryStore {
    fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn runs_calls_in_order(&self) -> bool {
        // Every call takes the one lock, and is done before it returns.
        true
    }

    fn grant(&self, ttl: Option<Duration>, want: &Want, _on_busy: OnBusy) -> Granting {
        // The pool's own line is the whole line: no tickets here.
        Granting::Now(self.grant_now(ttl, want))
    }

    fn weighted_waiting(&self, want: &Want, waiting: bool) {
        let mut state = self.lock();
        if waiting {
            state.kept.push(want.clone());
        } else if let Some(at) = state.kept.iter().position(|kept| kept == want) {
            // In the order they began to wait.
            state.kept.remove(at);
        }
    }

    fn release(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> impl std::future::Future<Output = Result<Arc<str>>> + Send {
        // Done before the future is returned, so dropping it cannot undo it.
        std::future::ready(self.release_now(lease, outcome, receipt))
    }

    #[inline]
    fn release_detached(&self, lease: LeaseToken, receipt: Receipt) {
        // A lease that was taken over or removed has nothing left to release.
        let _ = self.release_now(lease, ReleaseOutcome::Success, receipt);
    }

    async fn renew(&self, lease: LeaseToken, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        let index = slot_index(lease.credential_id());
        let holder = state
            .slots
            .get_mut(index)
            .and_then(Option::as_mut)
            .and_then(|slot| {
                slot.holders
                    .iter_mut()
                    .find(|holder| holder.lease_id == lease.lease_id())
            })
            .ok_or_else(|| Error::LeaseLost {
                credential: lease.credential_id().to_string(),
                lease_id: lease.lease_id(),
            })?;
        let expires_at = ttl.map(|ttl| now.saturating_add(duration_ms(ttl)));
        holder.expires_at = expires_at;
        if let Some(at) = expires_at {
            state.expiring.push(Reverse((at, index, lease.lease_id())));
        }
        Ok(expires_at.map(from_ms))
    }
}

impl Admin for MemoryStore {
    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: Progress,
    ) -> Result<Added> {
        let total = credentials.len();
        let added = self.add_all(credentials, on_duplicate)?;
        progress.report(total);
        Ok(added)
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let mut state = self.lock();
        state.reclaim(now_ms(), &mut Vec::new());
        let index = state.index_of(name).ok_or_else(|| self.unknown(name))?;
        let Some(slot) = state.slots[index].as_ref() else {
            return Err(self.unknown(name));
        };
        if !slot.holders.is_empty() && !force {
            return Err(Error::InUse {
                name: name.to_string(),
                holders: slot.held,
            });
        }
        let was_enabled = slot.disabled.is_none();
        state.slots[index] = None;
        state.by_name.remove(name);
        if was_enabled {
            state.enabled -= 1;
        }
        Ok(())
    }

    async fn pools(&self) -> Result<Vec<PoolSummary>> {
        // As the shared stores answer: only a pool that holds a credential.
        let credentials = self.lock().by_name.len() as u64;
        Ok((credentials > 0)
            .then(|| PoolSummary::new(self.settings.pool().to_string(), credentials))
            .into_iter()
            .collect())
    }

    async fn revoke(&self, name: &str) -> Result<u32> {
        let mut state = self.lock();
        state.reclaim(now_ms(), &mut Vec::new());
        let (index, slot, ready) = state.named(name).ok_or_else(|| self.unknown(name))?;
        let ended = slot.holders.len();
        let freed = std::mem::take(&mut slot.held);
        slot.holders.clear();
        if slot.can_hand_out() {
            ready.push_back(index, slot.generation, freed as usize);
        }
        Ok(u32::try_from(ended).unwrap_or(u32::MAX))
    }

    async fn set_disabled(&self, name: &str, reason: Option<String>) -> Result<()> {
        let mut state = self.lock();
        let index = state.index_of(name).ok_or_else(|| self.unknown(name))?;
        let State {
            slots,
            ready,
            enabled,
            ..
        } = &mut *state;
        let Some(slot) = slots[index].as_mut() else {
            return Err(self.unknown(name));
        };
        let was_enabled = slot.disabled.is_none();
        slot.generation = slot.generation.wrapping_add(1);
        match reason {
            Some(reason) => {
                if was_enabled {
                    *enabled -= 1;
                }
                slot.disabled = Some(reason);
            }
            None => {
                if !was_enabled {
                    *enabled += 1;
                }
                slot.disabled = None;
                if slot.cooling_until.is_none() {
                    ready.push_back(index, slot.generation, slot.free_units());
                }
            }
        }
        Ok(())
    }

    async fn update(&self, name: &str, change: CredentialChange) -> Result<()> {
        let mut state = self.lock();
        state.reclaim(now_ms(), &mut Vec::new());
        let state_defaults = state.default_rates.clone();
        let (index, slot, ready) = state.named(name).ok_or_else(|| self.unknown(name))?;
        let holders = slot.held;
        if let Some(capacity) = change.capacity {
            if capacity < holders {
                return Err(crate::credential::capacity_below_holders(
                    name, capacity, holders,
                ));
            }
        }
        let old = &slot.credential;
        let capacity = change.capacity.unwrap_or(old.capacity());
        let resized = capacity != old.capacity();
        slot.credential = Credential::new(
            old.id(),
            old.name_arc().clone(),
            change.secret.unwrap_or_else(|| old.secret().clone()),
            change
                .extra
                .unwrap_or_else(|| old.extra().map(str::to_string)),
            capacity,
        );
        if resized {
            // The free units queued before no longer count: queue them anew.
            slot.generation = slot.generation.wrapping_add(1);
            if slot.can_hand_out() {
                ready.push_back(index, slot.generation, slot.free_units());
            }
        }
        if !change.rates.is_empty() {
            let now = now_ms();
            for (scope, rate) in change.rates {
                let default = state_defaults.get(&scope).copied();
                let lifted =
                    slot.change_limit(&scope, now, |limit| limit.set_own_rate(rate, default));
                if lifted && slot.disabled.is_none() {
                    ready.push_back(index, slot.generation, slot.free_units());
                }
            }
            state.block_every_scope(index, now);
        }
        Ok(())
    }

    async fn set_default_rate(&self, scope: &str, rate: Option<crate::Rate>) -> Result<()> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        match rate {
            Some(rate) => state.default_rates.insert(scope.to_string(), rate),
            None => state.default_rates.remove(scope),
        };
        for index in 0..state.slots.len() {
            let State { slots, ready, .. } = &mut *state;
            let Some(slot) = slots[index].as_mut() else {
                continue;
            };
            let lifted = slot.change_limit(scope, now, |limit| limit.set_default_rate(rate));
            if lifted && slot.disabled.is_none() {
                ready.push_back(index, slot.generation, slot.free_units());
            }
            state.block_every_scope(index, now);
        }
        Ok(())
    }

    async fn default_rates(&self) -> Result<Vec<(String, crate::Rate)>> {
        Ok(self
            .lock()
            .default_rates
            .iter()
            .map(|(scope, rate)| (scope.clone(), *rate))
            .collect())
    }

    async fn reset_limits(&self, name: Option<&str>, scope: Option<&str>) -> Result<u64> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        let indexes: Vec<usize> = match name {
            Some(name) => vec![state.index_of(name).ok_or_else(|| self.unknown(name))?],
            None => (0..state.slots.len()).collect(),
        };
        let mut reset = 0;
        for index in indexes {
            let State { slots, ready, .. } = &mut *state;
            let Some(slot) = slots[index].as_mut() else {
                continue;
            };
            let mut changed = false;
            for limit in &mut slot.limits {
                if scope.is_none_or(|scope| limit.scope == scope) && limit.until.is_some() {
                    limit.reset();
                    changed = true;
                }
            }
            slot.limits.retain(|limit| !limit.is_idle(now));
            if scope.is_none() && slot.cooling_until.take().is_some() {
                changed = true;
                slot.generation = slot.generation.wrapping_add(1);
                if slot.disabled.is_none() {
                    ready.push_back(index, slot.generation, slot.free_units());
                }
            }
            // A quota of every scope that is used up still holds.
            state.block_every_scope(index, now);
            reset += u64::from(changed);
        }
        Ok(reset)
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.list_page(None, usize::MAX).await
    }

    async fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        let first = after.map_or(0, |after| (after.get() as usize).saturating_add(1));
        Ok(state
            .slots
            .iter()
            .enumerate()
            .skip(first)
            .filter_map(|(index, slot)| Some(state.info(index, slot.as_ref()?, now)))
            .take(limit)
            .collect())
    }

    async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        Ok(state.index_of(name).and_then(|index| {
            let slot = state.slots[index].as_ref()?;
            Some(state.info(index, slot, now))
        }))
    }

    async fn reveal(&self) -> Result<Vec<Credential>> {
        let state = self.lock();
        Ok(state
            .slots
            .iter()
            .flatten()
            .map(|slot| slot.credential.clone())
            .collect())
    }

    async fn stats(&self) -> Result<Stats> {
        let now = now_ms();
        let mut state = self.lock();
        state.reclaim(now, &mut Vec::new());
        let mut stats = Stats::default();
        for slot in state.slots.iter().flatten() {
            let kind = StateKind::of(
                slot.disabled.is_some(),
                slot.cooling_until.is_some_and(|until| until > now),
                slot.free_units() == 0,
            );
            stats.add(kind, 1, u64::from(slot.held));
            stats.uses += slot.use_count;
            let scope_blocked = slot
                .limits
                .iter()
                .any(|limit| !limit.scope.is_empty() && limit.blocked_until(now).is_some());
            stats.scope_blocked += u64::from(scope_blocked);
        }
        Ok(stats)
    }
}
