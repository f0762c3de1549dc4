//! Time as the stores keep it: milliseconds since the UNIX epoch. A leaf.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch, the unit every store keeps time in.
pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A time as milliseconds since the UNIX epoch (negative before it).
pub(crate) fn to_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Milliseconds since the UNIX epoch as a time.
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A duration in whole milliseconds, rounded up so that a short TTL or
/// cool-down is never rounded to zero.
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The latest time a `SystemTime` holds comfortably: what a cool-down of
/// `Duration::MAX` ends at.
pub(crate) fn far_future() -> SystemTime {
    from_ms(i64::MAX)
}

/// The earlier of two times when either may be missing: when a store next
/// expects a change by itself, from the next cool-down end and the next
/// lease expiry.
pub(crate) fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The later of two times when either may be missing.
pub(crate) fn latest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
