//! Random sequences of operations, checked step by step against a reference model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use credpool::store::Want;
use credpool::{
    CredentialChange, Error, Lease, LeaseToken, Limited, NewCredential, Pool, Rate, ReleaseOutcome,
    Store,
};

use super::Factory;

const NAMES: [&str; 6] = ["ann", "ben", "cat", "dan", "eve", "fay"];
/// The scopes the model asks for; its cool-downs and quotas last an hour,
/// so nothing frees by itself while it runs.
const SCOPES: [&str; 2] = ["a", "b"];
const SEEDS: u64 = 60;
const STEPS: usize = 120;

#[derive(Debug, Clone, Default)]
struct Credential {
    capacity: u32,
    holders: u32,
    disabled: bool,
    cooling: bool,
    /// Scopes cooling down (a reported budget used up).
    scoped_cooling: BTreeSet<&'static str>,
    /// Quotas by scope, per hour, and the grants each counted.
    rates: BTreeMap<&'static str, u32>,
    grants: BTreeMap<&'static str, u32>,
}

impl Credential {
    fn can_hand_out(&self) -> bool {
        !self.disabled && !self.cooling && self.holders < self.capacity
    }

    /// Whether a scope's limits refuse it now.
    fn blocked_in(&self, scope: &str) -> bool {
        self.scoped_cooling.contains(scope)
            || self
                .rates
                .get(scope)
                .is_some_and(|&count| self.grants.get(scope).copied().unwrap_or(0) >= count)
    }

    /// Whether it may serve `scope` (`None`: the default) now.
    fn serves(&self, scope: Option<&str>) -> bool {
        self.can_hand_out() && scope.is_none_or(|scope| !self.blocked_in(scope))
    }
}

struct Held<S: Store> {
    lease: Lease<S>,
    name: String,
    /// The credential was removed by force: the store no longer knows the lease.
    lost: bool,
}

pub async fn run<F: Factory>(factory: &F) {
    for seed in 0..SEEDS {
        let pool = factory.pool(None).await;
        let mut trace = Vec::new();
        if let Err(message) = one_run(&pool, seed, &mut trace).await {
            panic!(
                "seed {seed}: {message}\nsteps so far:\n  {}",
                trace.join("\n  ")
            );
        }
    }
}

async fn one_run<S: Store>(
    pool: &Pool<S>,
    seed: u64,
    trace: &mut Vec<String>,
) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model: BTreeMap<String, Credential> = BTreeMap::new();
    let mut held: Vec<Held<S>> = Vec::new();
    let mut ended: Vec<LeaseToken> = Vec::new();
    let mut last_id = 0;
    for step in 0..STEPS {
        let name = NAMES[rng.usize(..NAMES.len())].to_string();
        match rng.u8(0..10) {
            0..=2 => {
                // Any credential, one that serves a scope, or one by name.
                let scope = SCOPES.get(rng.usize(..4)).copied();
                let by_name = rng.u8(..5) == 0;
                let mut want = Want::any();
                if let Some(scope) = scope {
                    want = want.in_scope(scope).unwrap();
                }
                if by_name {
                    want = want.named(&name).unwrap();
                }
                trace.push(format!("try_acquire {want}"));
                let enabled = model.values().filter(|c| !c.disabled).count();
                let result = pool.try_acquire_matching(&want).await;
                let named = by_name.then(|| model.get(&name));
                let none_serves = match named {
                    Some(Some(credential)) => !credential.serves(scope),
                    _ => !model.values().any(|c| c.serves(scope)),
                };
                match result {
                    Err(Error::UnknownCredential { .. }) if matches!(named, Some(None)) => {}
                    Err(Error::Disabled { .. }) if named.flatten().is_some_and(|c| c.disabled) => {}
                    Err(Error::NoCredentials { .. })
                        if enabled == 0 && !named.flatten().is_some_and(|c| c.disabled) => {}
                    Ok(None) if enabled > 0 && none_serves => {}
                    Ok(Some(lease)) => {
                        let name = lease.credential().name().to_string();
                        let Some(credential) = model.get_mut(&name) else {
                            return Err(format!("granted unknown credential {name}"));
                        };
                        if !credential.serves(scope) || by_name && want.name() != Some(&name) {
                            return Err(format!(
                                "granted {name} for {want}, which is {credential:?}"
                            ));
                        }
                        if lease.id().get() <= last_id {
                            return Err(format!("lease id {} after {last_id}", lease.id()));
                        }
                        last_id = lease.id().get();
                        credential.holders += 1;
                        // A quota counts the grants made while it exists.
                        if let Some(scope) =
                            scope.filter(|scope| credential.rates.contains_key(scope))
                        {
                            *credential.grants.entry(scope).or_default() += 1;
                        }
                        trace.push(format!("  -> {name} lease {}", lease.id()));
                        held.push(Held {
                            lease,
                            name,
                            lost: false,
                        });
                    }
                    other => {
                        return Err(format!(
                            "try_acquire {want} gave {:?} with model {model:?}",
                            other.map(|lease| lease.map(|l| l.id()))
                        ))
                    }
                }
            }
            3 | 4 if !held.is_empty() => {
                let Held { lease, name, lost } = held.swap_remove(rng.usize(..held.len()));
                let token = lease.token();
                let scope = SCOPES[rng.usize(..SCOPES.len())];
                let outcome = match rng.u8(0..5) {
                    0 => ReleaseOutcome::CoolDown(Duration::from_secs(3600)),
                    1 => ReleaseOutcome::Disable("model".into()),
                    2 => ReleaseOutcome::Limited(
                        Limited::after(Duration::from_secs(3600))
                            .scope(scope)
                            .unwrap(),
                    ),
                    _ => ReleaseOutcome::Success,
                };
                let drop_it = rng.u8(0..4) == 0 && outcome == ReleaseOutcome::Success;
                trace.push(format!(
                    "{} {name} lease {} ({outcome:?}, lost {lost})",
                    if drop_it { "drop" } else { "release" },
                    token.lease_id()
                ));
                if drop_it {
                    drop(lease);
                } else {
                    let result = lease.release_with(outcome.clone()).await;
                    match (&result, lost) {
                        (Ok(()), false) | (Err(Error::LeaseLost { .. }), true) => {}
                        _ => return Err(format!("release gave {result:?}, lost {lost}")),
                    }
                }
                if !lost {
                    let credential = model.get_mut(&name).ok_or("model lost a credential")?;
                    credential.holders -= 1;
                    match outcome {
                        ReleaseOutcome::CoolDown(_) => credential.cooling = true,
                        ReleaseOutcome::Disable(_) => credential.disabled = true,
                        ReleaseOutcome::Limited(_) => {
                            credential.scoped_cooling.insert(scope);
                        }
                        _ => {}
                    }
                }
                ended.push(token);
            }
            5 if !ended.is_empty() => {
                let token = ended[rng.usize(..ended.len())];
                trace.push(format!("release stale lease {}", token.lease_id()));
                let result = pool.release_token(token, ReleaseOutcome::Success).await;
                if !matches!(result, Err(Error::LeaseLost { .. })) {
                    return Err(format!("stale release gave {result:?}"));
                }
            }
            6 => {
                let capacity = rng.u32(1..=2);
                trace.push(format!("add {name} capacity {capacity}"));
                let result = pool
                    .add(NewCredential::new(name.as_str(), "s").capacity(capacity))
                    .await;
                match (&result, model.contains_key(&name)) {
                    (Ok(()), false) => {
                        model.insert(
                            name,
                            Credential {
                                capacity,
                                ..Credential::default()
                            },
                        );
                    }
                    (Err(Error::DuplicateName { .. }), true) => {}
                    _ => return Err(format!("add gave {result:?}")),
                }
            }
            7 => {
                let force = rng.bool();
                trace.push(format!("remove {name} force {force}"));
                let result = if force {
                    pool.remove_forced(&name).await
                } else {
                    pool.remove(&name).await
                };
                match (&result, model.get(&name)) {
                    (Err(Error::UnknownCredential { .. }), None) => {}
                    (Err(Error::InUse { .. }), Some(c)) if c.holders > 0 && !force => {}
                    (Ok(()), Some(c)) if c.holders == 0 || force => {
                        model.remove(&name);
                        for lease in held.iter_mut().filter(|h| h.name == name) {
                            lease.lost = true;
                        }
                    }
                    _ => return Err(format!("remove gave {result:?}")),
                }
            }
            8 => {
                let disable = rng.bool();
                trace.push(format!(
                    "{} {name}",
                    if disable { "disable" } else { "enable" }
                ));
                let result = if disable {
                    pool.disable(&name, "operator").await
                } else {
                    pool.enable(&name).await
                };
                match (&result, model.get_mut(&name)) {
                    (Err(Error::UnknownCredential { .. }), None) => {}
                    (Ok(()), Some(credential)) => credential.disabled = disable,
                    _ => return Err(format!("disable/enable gave {result:?}")),
                }
            }
            9 if rng.bool() => {
                // A quota for a scope: a new one counts from now, a changed
                // one the grants it counted so far.
                let scope = SCOPES[rng.usize(..SCOPES.len())];
                let count = rng.u32(1..=3);
                trace.push(format!("rate {name} {count}/1h in {scope}"));
                let rate: Rate = format!("{count}/1h").parse().unwrap();
                let result = pool
                    .update(&name, CredentialChange::new().rate_for(scope, Some(rate)))
                    .await;
                match (&result, model.get_mut(&name)) {
                    (Err(Error::UnknownCredential { .. }), None) => {}
                    (Ok(()), Some(credential)) => {
                        if credential.rates.insert(scope, count).is_none() {
                            credential.grants.remove(scope);
                        }
                    }
                    _ => return Err(format!("rate gave {result:?}")),
                }
            }
            _ if !held.is_empty() => {
                let index = rng.usize(..held.len());
                let entry = &mut held[index];
                trace.push(format!("renew lease {}", entry.lease.id()));
                let result = entry.lease.renew().await;
                match (&result, entry.lost) {
                    (Ok(()), false) | (Err(Error::LeaseLost { .. }), true) => {}
                    _ => return Err(format!("renew gave {result:?}")),
                }
            }
            _ => continue,
        }
        check_stats(pool, &model, step).await?;
    }
    for Held { lease, .. } in held {
        drop(lease);
    }
    Ok(())
}

async fn check_stats<S: Store>(
    pool: &Pool<S>,
    model: &BTreeMap<String, Credential>,
    step: usize,
) -> Result<(), String> {
    let stats = pool.stats().await.map_err(|e| e.to_string())?;
    let count = |f: &dyn Fn(&Credential) -> bool| model.values().filter(|c| f(c)).count() as u64;
    let expected = (
        model.len() as u64,
        count(&|c| c.disabled),
        count(&|c| !c.disabled && c.cooling),
        count(&|c| !c.disabled && !c.cooling && c.holders >= c.capacity),
        count(&Credential::can_hand_out),
        model.values().map(|c| u64::from(c.holders)).sum::<u64>(),
        count(&|c| SCOPES.iter().any(|scope| c.blocked_in(scope))),
    );
    let actual = (
        stats.total,
        stats.disabled,
        stats.cooling_down,
        stats.leased,
        stats.available,
        stats.leases,
        stats.scope_blocked,
    );
    if actual != expected {
        return Err(format!(
            "step {step}: stats (total, disabled, cooling, leased, available, leases, blocked in a scope) = {actual:?}, model says {expected:?}"
        ));
    }
    Ok(())
}
