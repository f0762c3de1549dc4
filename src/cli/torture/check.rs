//! The checker: rebuilds every hold from the workers' logs (see
//! [`worker`](super::worker) for their format) and proves that no credential
//! was held by more leases than its capacity, and that lease ids are unique
//! and increasing.

use std::collections::HashMap;

/// How a hold ended, as far as its log tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Given back at `end`.
    Back(u128),
    /// Given back at `end`, but the store refused it as stale.
    Fenced(u128),
    /// Given back at `end`; the store could not commit the release at once
    /// and kept it, to commit it later. The credential can go to someone
    /// else only after that commit, so after `end`.
    Pending(u128),
    /// Given back at `end`, but the release failed with an error other than
    /// "stale" or "pending": a release handed to the store was dropped,
    /// which is a violation in itself.
    Failed(u128),
    /// The process died: out until the lease expired.
    Expired,
}

#[derive(Debug, Clone)]
struct Hold {
    name: String,
    capacity: u32,
    lease_id: u64,
    start: u128,
    expires: u128,
    ended: Ended,
    /// The scope asked for (`None`: the default), and the store's time of
    /// the grant in ms, when the log says.
    scope: Option<String>,
    acquired_ms: Option<i64>,
    /// The units of capacity it held (1 unless weighted).
    units: u32,
}

impl Hold {
    /// When the credential could have gone to someone else; never before
    /// the holder heard of the lease (one that reached a stalled holder
    /// after its expiry ends as it begins).
    fn end(&self) -> u128 {
        let end = match self.ended {
            Ended::Back(at) => at,
            Ended::Fenced(at) => at.min(self.expires),
            Ended::Pending(at) | Ended::Failed(at) => at,
            Ended::Expired => self.expires,
        };
        end.max(self.start)
    }

    /// The hold, for a violation's message.
    fn describe(&self) -> String {
        let how = match self.ended {
            Ended::Back(at) => format!("given back at {at} ns"),
            Ended::Fenced(at) => format!("given back at {at} ns, refused as stale"),
            Ended::Pending(at) => {
                format!("given back at {at} ns, the release committed later")
            }
            Ended::Failed(at) => format!("given back at {at} ns, the release failed"),
            Ended::Expired => "its holder died holding it; out until it expired".to_string(),
        };
        format!(
            "lease {} (granted at {} ns, expiring at {} ns, {how})",
            self.lease_id, self.start, self.expires
        )
    }
}

/// What the logs say, and what is wrong with it.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub(crate) grants: usize,
    pub(crate) grants_by_name: HashMap<String, u64>,
    pub(crate) fenced: usize,
    /// Releases the store kept to commit later.
    pub(crate) pending: usize,
    /// Releases that failed with an error other than "stale" or "pending".
    pub(crate) failed: usize,
    /// Holds whose holder died holding them.
    pub(crate) killed: usize,
    pub(crate) violations: Vec<String>,
}

fn parse_logs(texts: &[String]) -> Result<Vec<Hold>, String> {
    let mut holds: Vec<Hold> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut violations = Vec::new();
    for text in texts {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> Result<u128, String> {
                fields
                    .get(i)
                    .and_then(|field| field.parse().ok())
                    .ok_or_else(|| format!("a log line that does not parse: {line:?}"))
            };
            match fields[0] {
                "G" if fields.len() == 6 || fields.len() == 8 || fields.len() == 9 => {
                    let lease_id = number(3)? as u64;
                    if by_id.insert(lease_id, holds.len()).is_some() {
                        violations.push(format!("lease id {lease_id} was granted twice"));
                    }
                    holds.push(Hold {
                        name: fields[1].to_string(),
                        capacity: number(2)? as u32,
                        lease_id,
                        start: number(4)?,
                        expires: number(5)?,
                        ended: Ended::Expired,
                        scope: fields
                            .get(6)
                            .filter(|scope| **scope != "-")
                            .map(|scope| scope.to_string()),
                        acquired_ms: if fields.len() >= 8 {
                            Some(number(7)? as i64)
                        } else {
                            None
                        },
                        units: if fields.len() == 9 {
                            number(8)? as u32
                        } else {
                            1
                        },
                    });
                }
                // A worker that ended with releases its pool never saw commit.
                "L" if fields.len() == 2 => {
                    violations.push(format!(
                        "a worker ended with {} release(s) that never took effect",
                        number(1)?
                    ));
                }
                "E" | "F" | "P" | "X" => {
                    let lease_id = number(1)? as u64;
                    let hold = by_id
                        .get(&lease_id)
                        .map(|&index| &mut holds[index])
                        .ok_or_else(|| format!("lease {lease_id} ends but was never granted"))?;
                    hold.ended = match (fields[0], hold.ended) {
                        ("E", _) => Ended::Back(number(2)?),
                        ("F", Ended::Back(at)) => Ended::Fenced(at),
                        ("P", Ended::Back(at)) => Ended::Pending(at),
                        ("X", Ended::Back(at)) => Ended::Failed(at),
                        _ => Ended::Expired,
                    };
                }
                _ => return Err(format!("a log line that does not parse: {line:?}")),
            }
        }
    }
    if violations.is_empty() {
        Ok(holds)
    } else {
        Err(violations.join("; "))
    }
}

/// Checks the workers' logs: no credential held by more leases than its
/// capacity at any moment, lease ids unique, and increasing in grant order
/// for each credential of capacity 1; with `quota`, no window of its length
/// holding more grants of a credential for its scope than it allows (by the
/// store's times of the grants).
pub(crate) fn check(texts: &[String], quota: Option<(&str, credpool::Rate)>) -> Checked {
    let holds = match parse_logs(texts) {
        Ok(holds) => holds,
        Err(violation) => {
            return Checked {
                violations: vec![violation],
                ..Checked::default()
            }
        }
    };
    let mut checked = Checked {
        grants: holds.len(),
        fenced: holds
            .iter()
            .filter(|hold| matches!(hold.ended, Ended::Fenced(_)))
            .count(),
        pending: holds
            .iter()
            .filter(|hold| matches!(hold.ended, Ended::Pending(_)))
            .count(),
        failed: holds
            .iter()
            .filter(|hold| matches!(hold.ended, Ended::Failed(_)))
            .count(),
        killed: holds
            .iter()
            .filter(|hold| hold.ended == Ended::Expired)
            .count(),
        grants_by_name: HashMap::new(),
        violations: Vec::new(),
    };
    for hold in holds
        .iter()
        .filter(|hold| matches!(hold.ended, Ended::Failed(_)))
    {
        checked.violations.push(format!(
            "{}: {} was dropped by the store: a release must commit or be refused",
            hold.name,
            hold.describe()
        ));
    }
    let mut by_name: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for hold in &holds {
        by_name.entry(hold.name.as_str()).or_default().push(hold);
        *checked.grants_by_name.entry(hold.name.clone()).or_default() += 1;
    }
    for (name, mut holds) in by_name {
        holds.sort_by_key(|hold| hold.start);
        // Ends sort before starts at the same instant.
        let mut events: Vec<(u128, i32, usize)> = holds
            .iter()
            .enumerate()
            .flat_map(|(index, hold)| [(hold.start, 1, index), (hold.end(), -1, index)])
            .collect();
        events.sort();
        let capacity = holds.iter().map(|hold| hold.capacity).max().unwrap_or(1);
        let mut out: Vec<usize> = Vec::new();
        for (at, change, index) in events {
            if change < 0 {
                out.retain(|&other| other != index);
                continue;
            }
            // A hold that ends as it begins (its lease reached it expired)
            // overlaps nothing, and is never out.
            if holds[index].end() == holds[index].start {
                continue;
            }
            let held: u32 = out.iter().map(|&other| holds[other].units).sum();
            if held + holds[index].units > capacity {
                let others: Vec<String> =
                    out.iter().map(|&other| holds[other].describe()).collect();
                checked.violations.push(format!(
                    "{name} held by {} leases of {} units at once (capacity {capacity}) when lease {} was granted at {at} ns; also out: {}",
                    out.len() + 1,
                    held + holds[index].units,
                    holds[index].lease_id,
                    others.join("; ")
                ));
            }
            out.push(index);
        }
        if capacity == 1 {
            for pair in holds.windows(2) {
                if pair[1].lease_id <= pair[0].lease_id {
                    checked.violations.push(format!(
                        "{name}: lease {} was granted after lease {} but has a smaller id",
                        pair[1].lease_id, pair[0].lease_id
                    ));
                }
            }
        }
        if let Some((scope, rate)) = quota {
            check_quota(name, &holds, scope, rate, &mut checked.violations);
        }
    }
    checked
}

/// No window `[t, t + W)` holds more than `rate.count()` of these grants
/// (one credential's) for `scope`.
fn check_quota(
    name: &str,
    holds: &[&Hold],
    scope: &str,
    rate: credpool::Rate,
    violations: &mut Vec<String>,
) {
    let window = rate.per().as_millis() as i64;
    // A weighted grant counts as many grants as it took units.
    let mut times: Vec<i64> = holds
        .iter()
        .filter(|hold| hold.scope.as_deref() == Some(scope))
        .flat_map(|hold| {
            hold.acquired_ms
                .into_iter()
                .flat_map(|at| std::iter::repeat_n(at, hold.units as usize))
        })
        .collect();
    times.sort_unstable();
    let mut end = 0;
    for start in 0..times.len() {
        while end < times.len() && times[end] < times[start] + window {
            end += 1;
        }
        if end - start > rate.count() as usize {
            violations.push(format!(
                "{name}: {} grants for scope {scope:?} in the {window} ms from {} ms: the quota is {rate}",
                end - start,
                times[start]
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        vec![lines.join("\n")]
    }

    fn check_all(texts: &[String]) -> Checked {
        check(texts, None)
    }

    /// Grants for the quota's scope by the store's times: three within
    /// 100 ms break a quota of 2 per 100 ms; grants in another scope do not
    /// count.
    #[test]
    fn a_quota_exceeded_is_caught() {
        let rate: credpool::Rate = "2/100ms".parse().unwrap();
        let lines = [
            "G a 2 1 100 9000 torture 1000",
            "E 1 200 released",
            "G a 2 2 300 9000 - 1010",
            "E 2 400 released",
            "G a 2 3 500 9000 torture 1050",
            "E 3 600 released",
            "G a 2 4 700 9000 torture 1100",
            "E 4 800 released",
        ];
        let kept = check(&log(&lines), Some(("torture", rate)));
        assert_eq!(kept.violations, Vec::<String>::new());
        let mut broken = lines.to_vec();
        broken[6] = "G a 2 4 700 9000 torture 1099";
        let caught = check(&log(&broken), Some(("torture", rate)));
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert!(
            caught.violations[0].contains("3 grants"),
            "{:?}",
            caught.violations
        );
    }

    #[test]
    fn clean_logs_pass() {
        let checked = check_all(&log(&[
            "G a 1 1 100 9000",
            "E 1 200 released",
            "G a 1 2 300 9000",
            "E 2 400 released",
            "G b 2 3 100 9000",
            "G b 2 4 150 9000",
        ]));
        assert_eq!(checked.violations, Vec::<String>::new());
        assert_eq!(checked.grants, 4);
        assert_eq!(checked.killed, 2);
    }

    #[test]
    fn an_overlap_is_caught() {
        let checked = check_all(&log(&[
            "G a 1 1 100 9000",
            "G a 1 2 150 9000",
            "E 2 170 released",
            "E 1 200 released",
        ]));
        assert_eq!(checked.violations.len(), 1, "{:?}", checked.violations);
        assert!(checked.violations[0].contains("a held by 2"));
    }

    /// Weighted holds count their units against the capacity, and as many
    /// grants against a quota.
    #[test]
    fn weighted_holds_count_their_units() {
        let clean = check_all(&log(&[
            "G a 3 1 100 9000 - 1000 2",
            "G a 3 2 150 9000 - 1001 1",
            "E 2 170 released",
            "E 1 200 released",
        ]));
        assert!(clean.violations.is_empty(), "{:?}", clean.violations);
        let over = check_all(&log(&[
            "G a 3 1 100 9000 - 1000 2",
            "G a 3 2 150 9000 - 1001 2",
            "E 2 170 released",
            "E 1 200 released",
        ]));
        assert_eq!(over.violations.len(), 1, "{:?}", over.violations);
        assert!(
            over.violations[0].contains("4 units"),
            "{:?}",
            over.violations
        );
        let rate: credpool::Rate = "3/1s".parse().unwrap();
        let quota = check(
            &log(&[
                "G a 5 1 100 9000 torture 1000 2",
                "E 1 110 released",
                "G a 5 2 300 9000 torture 1010 2",
                "E 2 310 released",
            ]),
            Some(("torture", rate)),
        );
        assert_eq!(quota.violations.len(), 1, "{:?}", quota.violations);
    }

    #[test]
    fn a_killed_holder_holds_until_its_lease_expires() {
        // Lease 1's process died: the next grant must wait for the expiry at 500.
        let early = check_all(&log(&["G a 1 1 100 500", "G a 1 2 400 9000"]));
        assert_eq!(early.violations.len(), 1, "{:?}", early.violations);
        let late = check_all(&log(&["G a 1 1 100 500", "G a 1 2 600 9000"]));
        assert!(late.violations.is_empty(), "{:?}", late.violations);
    }

    #[test]
    fn duplicate_and_decreasing_ids_are_caught() {
        let twice = check_all(&log(&[
            "G a 1 7 100 9000",
            "E 7 200 released",
            "G b 1 7 300 9000",
        ]));
        assert!(
            twice.violations[0].contains("granted twice"),
            "{:?}",
            twice.violations
        );
        let decreasing = check_all(&log(&[
            "G a 1 9 100 9000",
            "E 9 200 released",
            "G a 1 8 300 9000",
        ]));
        assert!(
            decreasing.violations[0].contains("smaller id"),
            "{:?}",
            decreasing.violations
        );
    }

    #[test]
    fn a_pending_release_ends_when_its_holder_gave_it_back() {
        // Lease 1's release was kept and committed after 200: the store
        // rightly granted lease 2 at 300, long before lease 1's expiry.
        let checked = check_all(&log(&[
            "G a 1 1 100 9000",
            "E 1 200 released",
            "P 1",
            "G a 1 2 300 9000",
        ]));
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.pending, 1);
        // Its holder used it until 200: a grant before that is an overlap.
        let overlap = check_all(&log(&[
            "G a 1 1 100 9000",
            "G a 1 2 150 9000",
            "E 1 200 released",
            "P 1",
        ]));
        assert_eq!(overlap.violations.len(), 1, "{:?}", overlap.violations);
        assert!(
            overlap.violations[0].contains("lease 1 (granted at 100 ns"),
            "the violation names the other hold: {:?}",
            overlap.violations
        );
    }

    /// A release the store dropped, and releases a worker never saw take
    /// effect, are violations: releases are never lost.
    #[test]
    fn a_release_that_did_not_take_effect_is_a_violation() {
        let failed = check_all(&log(&["G a 1 1 100 9000", "E 1 200 released", "X 1"]));
        assert_eq!(failed.failed, 1);
        assert_eq!(failed.violations.len(), 1, "{:?}", failed.violations);
        assert!(failed.violations[0].contains("dropped by the store"));
        let lost = check_all(&log(&["G a 1 1 100 9000", "E 1 200 released", "L 1"]));
        assert_eq!(lost.violations.len(), 1, "{:?}", lost.violations);
        assert!(lost.violations[0].contains("never took effect"));
    }

    /// A lease that reached its holder after it had expired ends there and
    /// then: it does not stay out for ever and make every later grant of
    /// its credential a violation.
    #[test]
    fn a_lease_expired_on_arrival_ends_as_it_begins() {
        let checked = check_all(&log(&[
            "G a 1 1 600 500",
            "E 1 700 released",
            "F 1",
            "G a 1 2 900 9000",
            "E 2 950 released",
        ]));
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
    }

    #[test]
    fn a_fenced_release_ends_at_the_expiry() {
        let checked = check_all(&log(&[
            "G a 1 1 100 500",
            "E 1 700 released",
            "F 1",
            "G a 1 2 600 9000",
        ]));
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.fenced, 1);
    }
}
