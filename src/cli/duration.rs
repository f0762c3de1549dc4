//! One format for every duration the command line takes: a number with
//! units, as humantime reads them (`250ms`, `10s`, `15m`, `1h30m`), or a bare
//! number of seconds (`10`, `2.5`).

use std::time::Duration;

/// A duration of 0 or more: `10s`, `15m`, `1h30m`, `250ms`, or seconds (`2.5`).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration: write e.g. 10s, 15m, 1h30m or 2.5".into());
    }
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !text.contains(char::is_alphabetic)
    {
        return seconds(text);
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("{text:?} is not a duration ({error}): write e.g. 10s, 15m, 1h30m or 2.5")
    })
}

/// As [`parse`], but more than 0.
pub(crate) fn parse_positive(text: &str) -> Result<Duration, String> {
    let duration = parse(text)?;
    if duration.is_zero() {
        return Err(format!(
            "{:?}: the duration must be more than 0",
            text.trim()
        ));
    }
    Ok(duration)
}

/// A bare number of seconds: finite, not negative, and one a `Duration` holds.
fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| {
        format!("{text:?} is not a duration: write e.g. 10s, 15m, 1h30m or 2.5 (seconds)")
    })?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!(
            "{text:?} is not a duration: give a finite number of seconds, 0 or more"
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} seconds is longer than a duration can be"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_read_the_same() {
        for (text, expected) in [
            ("10", Duration::from_secs(10)),
            ("2.5", Duration::from_millis(2500)),
            ("10s", Duration::from_secs(10)),
            ("250ms", Duration::from_millis(250)),
            ("15m", Duration::from_secs(900)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 0 ", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        for bad in [
            "",
            "ten",
            "-1",
            "inf",
            "nan",
            "1e300",
            "10 parsecs",
            "1h-5m",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("duration"), "{bad}: {error}");
        }
        assert!(parse_positive("0s").unwrap_err().contains("more than 0"));
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
    }
}

/// The latest time RFC 3339 can write (9999-12-31T23:59:59Z); humantime
/// panics on a later one.
const LATEST_WRITABLE: Duration = Duration::from_secs(253_402_300_799);

/// `time` in RFC 3339 with milliseconds; a time past year 9999 (a TTL of
/// thousands of years) is written as the latest there is, never a panic.
pub(crate) fn rfc3339(time: std::time::SystemTime) -> String {
    let latest = std::time::UNIX_EPOCH + LATEST_WRITABLE;
    humantime::format_rfc3339_millis(time.min(latest)).to_string()
}

#[cfg(test)]
mod rfc3339_tests {
    use super::*;

    #[test]
    fn the_latest_times_are_written_not_panicked_on() {
        let far = std::time::SystemTime::now() + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
