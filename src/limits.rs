//! Rate limits as credentials really have them: scopes (an endpoint, say),
//! quotas of N grants in any window W, and the budgets an API reports.
//!
//! # Why a sliding log, not GCRA
//!
//! A quota "N per W" here means: in *any* window of length W, at most N
//! grants. GCRA (or a token bucket) with a burst of N keeps one timestamp,
//! but lets N grants through at once and then one more every W/N, so a
//! window that starts with the burst holds 2N−1 grants: not the promise.
//! GCRA without a burst keeps the promise but spaces grants W/N apart, which
//! is not what "400 per 15 minutes" means to anyone. So each credential and
//! scope with a quota keeps the times of its grants within the last window
//! (at most N of them): exact, and a grant's check reads only that row. The
//! time the next grant is allowed follows from the log when it is written
//! ([`QuotaLog::free_at`]), and only time passing can move it earlier, so
//! stores keep it beside the log and a grant's search compares one number.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{InvalidInput, Result};
use crate::time::{duration_ms, from_ms, to_ms};

/// The longest scope accepted, in bytes.
pub const MAX_SCOPE_BYTES: usize = 255;

/// Checks a scope: 1 to 255 bytes of UTF-8, no control characters, not
/// only spaces.
pub(crate) fn validate_scope(scope: &str) -> Result<()> {
    let reason = if scope.trim().is_empty() {
        "must not be empty (leave the scope out for every scope)".to_string()
    } else if scope.len() > MAX_SCOPE_BYTES {
        format!(
            "is {} bytes long; the limit is {MAX_SCOPE_BYTES}",
            scope.len()
        )
    } else if scope.chars().any(char::is_control) {
        "contains a control character".to_string()
    } else {
        return Ok(());
    };
    Err(InvalidInput::new("scope", reason).into())
}

/// A quota: at most `count` grants in any window of `per`.
///
/// ```
/// use std::time::Duration;
/// use credpool::Rate;
/// let rate: Rate = "400/15m".parse()?;
/// assert_eq!(rate, Rate::new(400, Duration::from_secs(900))?);
/// assert_eq!(rate.to_string(), "400/15m");
/// assert!("0/1m".parse::<Rate>().is_err());
/// # Ok::<(), credpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    per: Duration,
}

/// The most grants one quota may count in its window (each is kept).
pub const MAX_RATE_COUNT: u32 = 100_000;

impl Rate {
    /// At most `count` grants in any window of `per` (1 ms to 366 days;
    /// `count` from 1 to [`MAX_RATE_COUNT`]).
    pub fn new(count: u32, per: Duration) -> Result<Self> {
        if count == 0 {
            return Err(InvalidInput::new(
                "rate",
                "allows no grant at all (0 per window): disable the credential instead",
            )
            .into());
        }
        if count > MAX_RATE_COUNT {
            return Err(InvalidInput::new(
                "rate",
                format!(
                    "{count} grants per window is more than the {MAX_RATE_COUNT} a quota counts"
                ),
            )
            .into());
        }
        if per < Duration::from_millis(1) {
            return Err(InvalidInput::new(
                "rate",
                "the window must be at least 1ms long (a window of 0s limits nothing)",
            )
            .into());
        }
        if per > Duration::from_secs(366 * 24 * 3600) {
            return Err(InvalidInput::new("rate", "the window must be at most 366 days").into());
        }
        Ok(Self { count, per })
    }

    /// How many grants a window allows.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How long a window is.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The window in ms, as stores keep it.
    pub(crate) fn window_ms(&self) -> i64 {
        duration_ms(self.per)
    }

    /// A rate as stores keep it; `None` when the row is not a valid rate.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_stored(count: i64, window_ms: i64) -> Option<Self> {
        let count = u32::try_from(count).ok()?;
        let per = Duration::from_millis(u64::try_from(window_ms).ok()?);
        Self::new(count, per).ok()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.per)
                .to_string()
                .replace(' ', "")
        )
    }
}

impl std::str::FromStr for Rate {
    type Err = crate::Error;

    /// `N/DURATION`: `400/15m`, `10/1s`, `5/1h30m`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| -> crate::Error {
            InvalidInput::new(
                "rate",
                format!("{text:?} {why}: write it as N/DURATION, such as 400/15m or 10/1s"),
            )
            .into()
        };
        let (count, per) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("has no `/`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a whole number"))?;
        let per = per.trim();
        let per =
            humantime::parse_duration(per).map_err(|_| bad("does not end with a duration"))?;
        Self::new(count, per)
    }
}

/// A rate limit that an API reported, given back with a lease
/// ([`ReleaseOutcome::Limited`](crate::ReleaseOutcome::Limited)): the time
/// its window resets, how many requests it still allows before then, and
/// the scope it concerns.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use credpool::{Limited, ReleaseOutcome};
/// let reset = SystemTime::now() + Duration::from_secs(60);
/// // "x-rate-limit-remaining: 0", "x-rate-limit-reset: …" on the search endpoint:
/// let outcome = ReleaseOutcome::Limited(Limited::until(reset).scope("search")?);
/// // Three requests left in this window, on every endpoint:
/// let outcome = ReleaseOutcome::Limited(Limited::until(reset).remaining(3));
/// # Ok::<(), credpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub(crate) until: SystemTime,
    pub(crate) remaining: u32,
    pub(crate) scope: Option<Arc<str>>,
}

impl Limited {
    /// No request is left until `reset`: cool down until then.
    pub fn until(reset: SystemTime) -> Self {
        Self {
            until: reset,
            remaining: 0,
            scope: None,
        }
    }

    /// No request is left for `pause` from now.
    pub fn after(pause: Duration) -> Self {
        Self::until(
            SystemTime::now()
                .checked_add(pause)
                .unwrap_or_else(crate::time::far_future),
        )
    }

    /// `remaining` requests are left before the reset: the credential is
    /// handed out that many more times (in its scope), then cools down.
    pub fn remaining(mut self, remaining: u32) -> Self {
        self.remaining = remaining;
        self
    }

    /// The limit concerns `scope` only; other scopes are still served.
    pub fn scope(mut self, scope: &str) -> Result<Self> {
        validate_scope(scope)?;
        self.scope = Some(scope.into());
        Ok(self)
    }

    /// The reset time in ms.
    pub(crate) fn until_ms(&self) -> i64 {
        to_ms(self.until)
    }

    /// The scope as stores key it: `""` for every scope.
    pub(crate) fn scope_key(&self) -> &str {
        self.scope.as_deref().unwrap_or("")
    }
}

/// A time that never comes: when a quota allows fewer grants in a window
/// than a weighted grant asks for at once.
pub(crate) const NEVER: i64 = i64::MAX;

/// The times of a quota's grants within its last window, oldest first
/// (a deque: a grant drops the oldest from the front, adds at the back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QuotaLog(pub(crate) VecDeque<i64>);

impl QuotaLog {
    /// Reads a log as the SQLite store keeps it: 8 bytes a grant, little-endian.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        Self(
            bytes
                .chunks_exact(8)
                .map(|chunk| {
                    let mut raw = [0; 8];
                    raw.copy_from_slice(chunk);
                    i64::from_le_bytes(raw)
                })
                .collect(),
        )
    }

    /// The log as the SQLite store keeps it.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|at| at.to_le_bytes()).collect()
    }

    /// Drops the grants older than `rate`'s window at `now`.
    pub(crate) fn prune(&mut self, rate: Rate, now: i64) {
        let start = now.saturating_sub(rate.window_ms());
        while self.0.front().is_some_and(|&at| at <= start) {
            self.0.pop_front();
        }
    }

    /// Grants made in the window that ends at `now`.
    pub(crate) fn used(&self, rate: Rate, now: i64) -> u32 {
        let start = now.saturating_sub(rate.window_ms());
        let used = self.0.len() - self.0.partition_point(|&at| at <= start);
        u32::try_from(used).unwrap_or(u32::MAX)
    }

    /// Records a grant dated `at` (usually `now`; a lease handed to another
    /// process's waiter is dated at its claim deadline), after pruning what
    /// left the window by `now`.
    pub(crate) fn record(&mut self, rate: Rate, now: i64, at: i64) {
        self.prune(rate, now);
        if self.0.back().is_none_or(|&last| last <= at) {
            self.0.push_back(at);
        } else {
            let place = self.0.partition_point(|&logged| logged <= at);
            self.0.insert(place, at);
        }
    }

    /// The earliest time the next grant is allowed; `None`: at any time.
    ///
    /// A grant at `t` is allowed while fewer than `count` logged grants lie
    /// in `(t - W, t]`: the newest `count - 1` may, so the one before them
    /// must have left the window. Times are whole milliseconds, cut down
    /// from the clock's: one more millisecond keeps two grants logged W
    /// apart at least W apart in real time too.
    #[cfg(test)]
    pub(crate) fn free_at(&self, rate: Rate) -> Option<i64> {
        self.free_at_for(rate, 1)
    }

    /// The earliest time `units` more grants at once are allowed (a
    /// weighted grant); `None`: at any time, [`NEVER`] when `units` is more
    /// than the quota allows in a window. With `len` logged, the newest
    /// `count - units` may stay in the window, so the one before them must
    /// have left it.
    pub(crate) fn free_at_for(&self, rate: Rate, units: u32) -> Option<i64> {
        let (count, units) = (rate.count() as usize, units as usize);
        if units > count {
            return Some(NEVER);
        }
        let len = self.0.len();
        (len + units > count).then(|| {
            self.0[len + units - 1 - count]
                .saturating_add(rate.window_ms())
                .saturating_add(1)
        })
    }

    /// Moves one grant logged at `from` to `to` (a lease handed to a
    /// waiter in another process counts from when that process claims it).
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn moved(&mut self, from: i64, to: i64) {
        if let Some(at) = self.0.iter().position(|&logged| logged == from) {
            self.0.remove(at);
            let at = self.0.partition_point(|&logged| logged <= to);
            self.0.insert(at, to);
        }
    }
}

/// One scope's limits on one credential, as every store reads them: its
/// quota and log, and a budget reported by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    /// `""`: every scope.
    pub(crate) scope: String,
    pub(crate) rate: Option<Rate>,
    pub(crate) log: QuotaLog,
    /// A reported window's reset (or a cool-down's end), in ms.
    pub(crate) until: Option<i64>,
    /// Grants left before `until`.
    pub(crate) remaining: u32,
    /// Whether `rate` is the pool's default, not the credential's own.
    pub(crate) inherited: bool,
}

impl Limit {
    /// A scope with no limit yet.
    pub(crate) fn new(scope: &str) -> Self {
        Self {
            scope: scope.to_string(),
            rate: None,
            log: QuotaLog::default(),
            until: None,
            remaining: 0,
            inherited: false,
        }
    }

    /// Until when this limit refuses a grant, from `now`; `None`: it allows one.
    pub(crate) fn blocked_until(&self, now: i64) -> Option<i64> {
        self.blocked_for(now, 1)
    }

    /// Until when this limit refuses a grant of `units` at once, from
    /// `now`; `None`: it allows one; [`NEVER`]: the quota is smaller.
    pub(crate) fn blocked_for(&self, now: i64, units: u32) -> Option<i64> {
        let reported = self
            .until
            .filter(|&until| until > now && self.remaining < units);
        let quota = self
            .rate
            .and_then(|rate| self.log.free_at_for(rate, units))
            .filter(|&at| at > now);
        crate::time::latest(reported, quota)
    }

    /// The most units one grant may take under this limit: its quota's count.
    pub(crate) fn most_units(&self) -> Option<u32> {
        self.rate.map(|rate| rate.count())
    }

    /// Counts a grant made at `now`, dated `at` in the quota's log.
    #[cfg(test)]
    pub(crate) fn record(&mut self, now: i64, at: i64) {
        self.record_units(now, at, 1);
    }

    /// Counts a grant of `units` at once: `units` grants at `at`.
    pub(crate) fn record_units(&mut self, now: i64, at: i64, units: u32) {
        if let Some(rate) = self.rate {
            for _ in 0..units {
                self.log.record(rate, now, at);
            }
        }
        if self.until.is_some_and(|until| until > now) {
            self.remaining = self.remaining.saturating_sub(units);
        }
    }

    /// Takes in what an API reported: the latest report holds, and within
    /// one window (the same reset) the fewer requests left.
    pub(crate) fn report(&mut self, limited: &Limited, now: i64) {
        let until = limited.until_ms();
        match self.until.filter(|&current| current > now) {
            Some(current) if current == until => {
                self.remaining = self.remaining.min(limited.remaining);
            }
            _ => {
                self.until = Some(until);
                self.remaining = limited.remaining;
            }
        }
    }

    /// Sets a new quota (or none). The log stays: the grants it holds were
    /// made, and count against the new quota too.
    pub(crate) fn set_rate(&mut self, rate: Option<Rate>) {
        self.rate = rate;
        if rate.is_none() {
            self.log = QuotaLog::default();
        }
    }

    /// Sets the credential's own quota; `None`: none of its own, so the
    /// pool's `default` holds (if there is one).
    pub(crate) fn set_own_rate(&mut self, rate: Option<Rate>, default: Option<Rate>) {
        self.set_rate(rate.or(default));
        self.inherited = rate.is_none() && default.is_some();
    }

    /// The pool's default quota changed (`None`: no default): a quota of
    /// the credential's own stays as it is.
    pub(crate) fn set_default_rate(&mut self, default: Option<Rate>) {
        if self.rate.is_some() && !self.inherited {
            return;
        }
        self.set_rate(default);
        self.inherited = default.is_some();
    }

    /// Forgets a reported budget and cool-down (`credpool reset-locks`);
    /// the quota's log stays: it records what was sent.
    pub(crate) fn reset(&mut self) {
        self.until = None;
        self.remaining = 0;
    }

    /// Whether the row says nothing any more and may go.
    pub(crate) fn is_idle(&self, now: i64) -> bool {
        self.rate.is_none() && self.until.is_none_or(|until| until <= now)
    }

    /// What `list` shows of it at `now`.
    pub(crate) fn info(&self, now: i64) -> ScopeLimit {
        let reported = self.until.filter(|&until| until > now);
        ScopeLimit {
            scope: (!self.scope.is_empty()).then(|| self.scope.clone()),
            rate: self.rate,
            used: self.rate.map_or(0, |rate| self.log.used(rate, now)),
            remaining: match (self.rate, reported) {
                (Some(rate), _) => Some(rate.count().saturating_sub(self.log.used(rate, now)).min(
                    if reported.is_some() {
                        self.remaining
                    } else {
                        u32::MAX
                    },
                )),
                (None, Some(_)) => Some(self.remaining),
                (None, None) => None,
            },
            blocked_until: self.blocked_until(now).map(from_ms),
            reset_at: reported.map(from_ms),
            default: self.inherited,
        }
    }
}

/// What a credential's limits in one scope are now, as
/// [`Pool::list`](crate::Pool::list) shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeLimit {
    /// The scope; `None`: every scope.
    pub scope: Option<String>,
    /// The quota, if the credential has one in this scope.
    pub rate: Option<Rate>,
    /// Grants counted in the quota's window now.
    pub used: u32,
    /// Grants still allowed now (by the quota and the reported budget),
    /// when either limits them.
    pub remaining: Option<u32>,
    /// Not handed out for this scope before this time (a cool-down, an
    /// exhausted budget or quota).
    pub blocked_until: Option<SystemTime>,
    /// When a budget the API reported resets.
    pub reset_at: Option<SystemTime>,
    /// Whether the quota is the pool's default
    /// ([`Pool::set_default_rate`](crate::Pool::set_default_rate)), not the
    /// credential's own.
    pub default: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    /// A grant is allowed while fewer than N logged grants lie in the
    /// window before it, one millisecond more for the clock's cut-off.
    #[test]
    fn the_log_frees_a_grant_when_the_oldest_that_counts_leaves_the_window() {
        let per = rate("2/100ms");
        let mut log = QuotaLog::default();
        assert_eq!(log.free_at(per), None);
        log.record(per, 1_000, 1_000);
        assert_eq!(log.free_at(per), None, "one of two used");
        log.record(per, 1_040, 1_040);
        assert_eq!(log.free_at(per), Some(1_101));
        assert_eq!(log.used(per, 1_100), 1, "the first left the window");
        log.record(per, 1_101, 1_101);
        assert_eq!(log.0, [1_040, 1_101], "pruned");
        log.record(per, 1_102, 1_500);
        log.record(per, 1_103, 1_103);
        assert_eq!(log.0, [1_040, 1_101, 1_103, 1_500], "in order");
        log.0.truncate(2);
        assert_eq!(log.free_at(per), Some(1_141));
        log.moved(1_040, 1_120);
        assert_eq!(log.0, [1_101, 1_120], "kept in order");
        log.moved(7, 8);
        assert_eq!(log.0, [1_101, 1_120], "nothing logged at 7");
    }

    /// The latest report holds, even with an earlier reset; within one
    /// window the fewer requests left.
    #[test]
    fn the_latest_report_holds() {
        let now = 1_000_000;
        let at = |ms: i64| from_ms(ms);
        let mut limit = Limit::new("search");
        limit.report(&Limited::until(at(now + 900_000)).remaining(5), now);
        assert_eq!(limit.blocked_until(now), None);
        limit.report(&Limited::until(at(now + 60_000)), now);
        assert_eq!(limit.blocked_until(now), Some(now + 60_000));
        limit.report(&Limited::until(at(now + 60_000)).remaining(4), now);
        assert_eq!(limit.remaining, 0, "the same window: the fewer left");
        limit.record(now, now);
        assert_eq!(limit.remaining, 0);
        limit.reset();
        assert!(limit.is_idle(now));
    }

    /// A new quota keeps the grants made: a lower one may block at once.
    #[test]
    fn a_new_rate_keeps_the_log() {
        let mut limit = Limit::new("");
        limit.set_rate(Some(rate("3/1h")));
        for at in [10, 20, 30] {
            limit.record(at, at);
        }
        assert!(limit.blocked_until(40).is_some());
        limit.set_rate(Some(rate("4/1h")));
        assert_eq!(limit.blocked_until(40), None);
        limit.set_rate(Some(rate("1/1h")));
        assert_eq!(limit.blocked_until(40), Some(30 + 3_600_000 + 1));
        limit.set_rate(None);
        assert!(limit.is_idle(40));
    }
}
