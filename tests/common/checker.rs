//! A checker that proves from a log of holds that no credential was ever held
//! by more leases than its capacity, and that lease ids never repeat.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

/// One hold: from just after the grant to just before the release, in a
/// global order of events.
#[derive(Debug, Clone)]
pub struct Hold {
    pub credential: String,
    pub lease_id: u64,
    pub start: u64,
    pub end: u64,
    /// The units of capacity it held (1 unless weighted).
    pub units: u32,
}

#[derive(Debug, Default)]
pub struct HoldLog {
    clock: AtomicU64,
    live: Mutex<HashMap<String, u32>>,
    open: Mutex<HashMap<u64, (String, u64, u32)>>,
    holds: Mutex<Vec<Hold>>,
    violations: Mutex<Vec<String>>,
}

impl HoldLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call right after a lease was granted.
    pub fn start(&self, credential: &str, capacity: u32, lease_id: u64) {
        self.start_units(credential, capacity, lease_id, 1);
    }

    /// Call right after a lease of `units` units was granted.
    pub fn start_units(&self, credential: &str, capacity: u32, lease_id: u64, units: u32) {
        let at = self.clock.fetch_add(1, SeqCst);
        {
            let mut live = self.live.lock().unwrap();
            let holders = live.entry(credential.to_string()).or_insert(0);
            *holders += units;
            if *holders > capacity {
                self.violations.lock().unwrap().push(format!(
                    "credential {credential} held {holders} units at once (capacity {capacity}), lease {lease_id}"
                ));
            }
        }
        let previous = self
            .open
            .lock()
            .unwrap()
            .insert(lease_id, (credential.to_string(), at, units));
        if previous.is_some() {
            self.violations
                .lock()
                .unwrap()
                .push(format!("lease id {lease_id} granted twice"));
        }
    }

    /// Call right before the lease is released or dropped.
    pub fn end(&self, lease_id: u64) {
        let at = self.clock.fetch_add(1, SeqCst);
        let Some((credential, start, units)) = self.open.lock().unwrap().remove(&lease_id) else {
            self.violations
                .lock()
                .unwrap()
                .push(format!("lease {lease_id} ended but never started"));
            return;
        };
        if let Some(holders) = self.live.lock().unwrap().get_mut(&credential) {
            *holders -= units;
        }
        self.holds.lock().unwrap().push(Hold {
            credential,
            lease_id,
            start,
            end: at,
            units,
        });
    }

    pub fn grants(&self) -> usize {
        self.holds.lock().unwrap().len() + self.open.lock().unwrap().len()
    }

    /// The most units held of `credential` at once, from the log.
    pub fn peak(&self, credential: &str) -> u32 {
        let holds = self.holds.lock().unwrap();
        let mut points: Vec<(u64, i32)> = holds
            .iter()
            .filter(|hold| hold.credential == credential)
            .flat_map(|hold| {
                [
                    (hold.start, hold.units as i32),
                    (hold.end, -(hold.units as i32)),
                ]
            })
            .collect();
        points.sort();
        let (mut now, mut peak) = (0i32, 0i32);
        for (_, step) in points {
            now += step;
            peak = peak.max(now);
        }
        peak as u32
    }

    /// Proves the log clean: every hold ended, no overlap beyond capacity,
    /// unique lease ids. Returns every violation found.
    pub fn check(&self, capacity: impl Fn(&str) -> u32) -> Result<(), Vec<String>> {
        let mut violations = self.violations.lock().unwrap().clone();
        for (lease_id, (credential, ..)) in self.open.lock().unwrap().iter() {
            violations.push(format!("lease {lease_id} on {credential} never ended"));
        }
        let holds = self.holds.lock().unwrap();
        let mut ids = HashSet::new();
        let mut by_credential: HashMap<&str, Vec<&Hold>> = HashMap::new();
        for hold in holds.iter() {
            if !ids.insert(hold.lease_id) {
                violations.push(format!("lease id {} used twice", hold.lease_id));
            }
            by_credential
                .entry(&hold.credential)
                .or_default()
                .push(hold);
        }
        for (credential, holds) in by_credential {
            let limit = capacity(credential);
            let mut points: Vec<(u64, i32, u64)> = holds
                .iter()
                .flat_map(|hold| {
                    let units = hold.units as i32;
                    [
                        (hold.start, units, hold.lease_id),
                        (hold.end, -units, hold.lease_id),
                    ]
                })
                .collect();
            points.sort();
            let mut now = 0;
            for (at, step, lease_id) in points {
                now += step;
                if now > limit as i32 {
                    violations.push(format!(
                        "credential {credential}: {now} holders at event {at} (lease {lease_id}), capacity {limit}"
                    ));
                }
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// One grant, at the store's time of it: for the quota checker.
#[derive(Debug, Clone)]
pub struct Granted {
    pub credential: String,
    /// The scope asked for; `None`: the default scope.
    pub scope: Option<String>,
    pub at_ms: i64,
}

/// Proves a quota from the grants: for every credential, no window of the
/// rate's length (`[t, t + W)`) holds more grants than it allows. With
/// `scope`, only the grants for that scope count; without, every grant.
/// Returns one line per window that held too many.
pub fn quota_violations(
    granted: &[Granted],
    scope: Option<&str>,
    rate: credpool::Rate,
) -> Vec<String> {
    let window = rate.per().as_millis() as i64;
    let mut by_credential: HashMap<&str, Vec<i64>> = HashMap::new();
    for grant in granted {
        if scope.is_none() || grant.scope.as_deref() == scope {
            by_credential
                .entry(&grant.credential)
                .or_default()
                .push(grant.at_ms);
        }
    }
    let mut violations = Vec::new();
    for (credential, mut times) in by_credential {
        times.sort_unstable();
        let mut end = 0;
        for start in 0..times.len() {
            while end < times.len() && times[end] < times[start] + window {
                end += 1;
            }
            let count = end - start;
            if count > rate.count() as usize {
                violations.push(format!(
                    "{credential}: {count} grants in [{}, {}) ms, quota {rate} (scope {scope:?})",
                    times[start],
                    times[start] + window
                ));
            }
        }
    }
    violations
}
