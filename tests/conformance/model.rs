//! Random sequences of operations, checked step by step against a reference model.

use std::collections::BTreeMap;
use std::time::Duration;

use credpool::{Error, Lease, LeaseToken, NewCredential, Pool, ReleaseOutcome, Store};

use super::Factory;

const NAMES: [&str; 6] = ["ann", "ben", "cat", "dan", "eve", "fay"];
const SEEDS: u64 = 60;
const STEPS: usize = 120;

#[derive(Debug, Clone)]
struct Credential {
    capacity: u32,
    holders: u32,
    disabled: bool,
    cooling: bool,
}

impl Credential {
    fn can_hand_out(&self) -> bool {
        !self.disabled && !self.cooling && self.holders < self.capacity
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
                trace.push("try_acquire".into());
                let enabled = model.values().filter(|c| !c.disabled).count();
                let result = pool.try_acquire().await;
                match result {
                    Err(Error::NoCredentials { .. }) if enabled == 0 => {}
                    Ok(None) if enabled > 0 && !model.values().any(Credential::can_hand_out) => {}
                    Ok(Some(lease)) => {
                        let name = lease.credential().name().to_string();
                        let Some(credential) = model.get_mut(&name) else {
                            return Err(format!("granted unknown credential {name}"));
                        };
                        if !credential.can_hand_out() {
                            return Err(format!("granted {name}, which is {credential:?}"));
                        }
                        if lease.id().get() <= last_id {
                            return Err(format!("lease id {} after {last_id}", lease.id()));
                        }
                        last_id = lease.id().get();
                        credential.holders += 1;
                        trace.push(format!("  -> {name} lease {}", lease.id()));
                        held.push(Held {
                            lease,
                            name,
                            lost: false,
                        });
                    }
                    other => {
                        return Err(format!(
                            "try_acquire gave {:?} with model {model:?}",
                            other.map(|lease| lease.map(|l| l.id()))
                        ))
                    }
                }
            }
            3 | 4 if !held.is_empty() => {
                let Held { lease, name, lost } = held.swap_remove(rng.usize(..held.len()));
                let token = lease.token();
                let outcome = match rng.u8(0..4) {
                    0 => ReleaseOutcome::CoolDown(Duration::from_secs(3600)),
                    1 => ReleaseOutcome::Disable("model".into()),
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
                                holders: 0,
                                disabled: false,
                                cooling: false,
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
    );
    let actual = (
        stats.total,
        stats.disabled,
        stats.cooling_down,
        stats.leased,
        stats.available,
        stats.leases,
    );
    if actual != expected {
        return Err(format!(
            "step {step}: stats (total, disabled, cooling, leased, available, leases) = {actual:?}, model says {expected:?}"
        ));
    }
    Ok(())
}
