//! Times written for people.

use std::time::{Duration, UNIX_EPOCH};

/// 10000-01-01T00:00:00Z in Unix seconds: RFC 3339 has four-digit years.
pub const YEAR_10000: u64 = 253_402_300_800;

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds. Any value is shown without panicking: a time in
/// year 10000 or later (which a signed document may carry) is shown as its number of
/// seconds, marked as such.
pub fn unix_time(secs: u64) -> String {
    if secs >= YEAR_10000 {
        return format!("{secs} s after 1970 (after the year 9999)");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_formats() {
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(YEAR_10000 - 1), "9999-12-31T23:59:59Z");
        assert_eq!(
            unix_time(YEAR_10000),
            "253402300800 s after 1970 (after the year 9999)"
        );
        assert!(unix_time(u64::MAX).starts_with("18446744073709551615 s"));
    }
}
