//! `metav1.MicroTime` and `metav1.Time`, parsed and written as the API server does.
//!
//! `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/micro_time.go`: `UnmarshalJSON` parses
//! with `time.Parse(RFC3339Micro, str)`, where `RFC3339Micro = "2006-01-02T15:04:05.000000Z07:00"`,
//! and `MarshalJSON` writes `t.UTC().Format(RFC3339Micro)`. Go's `time.Parse` (`src/time/format.go`)
//! needs exactly six fractional digits for `.000000` (`stdFracSecond0` takes `1 + 6` bytes and
//! `parseNanoseconds` accepts `.` or `,` before them), `Z` or `±hh:mm` for `Z07:00`, and checks
//! the ranges of every field. Its errors read `parsing time "V" as "LAYOUT": cannot parse "REST"
//! as "ELEMENT"` or `parsing time "V": month out of range`; the fake words them the same way.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};

/// Go's `RFC3339Micro` layout, as `metav1.MicroTime` uses it.
pub const RFC3339_MICRO: &str = "2006-01-02T15:04:05.000000Z07:00";

/// A MicroTime as microseconds since the Unix epoch.
pub type Micros = i64;

/// Parse `value` as Go's `time.Parse(RFC3339Micro, value)` does. The error is Go's message.
pub fn parse_micro_time(value: &str) -> Result<Micros, String> {
    let cannot = |rest: &str, elem: &str| {
        format!("parsing time {value:?} as {RFC3339_MICRO:?}: cannot parse {rest:?} as {elem:?}")
    };
    let range = |what: &str| format!("parsing time {value:?}: {what} out of range");
    let b = value.as_bytes();
    let mut i = 0usize;
    // A fixed-width number of `n` digits (Go's `getnum(s, true)` for n = 2, the 4-digit year).
    let digits = |i: usize, n: usize| -> Option<i64> {
        let s = b.get(i..i + n)?;
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let rest = |i: usize| value.get(i..).unwrap_or("");
    let literal = |i: usize, c: u8, elem: &str| -> Result<usize, String> {
        if b.get(i) == Some(&c) {
            Ok(i + 1)
        } else {
            Err(cannot(rest(i), elem))
        }
    };
    let year = digits(i, 4).ok_or_else(|| cannot(rest(i), "2006"))?;
    i = literal(i + 4, b'-', "-")?;
    let month = digits(i, 2).ok_or_else(|| cannot(rest(i), "01"))?;
    if !(1..=12).contains(&month) {
        return Err(range("month"));
    }
    i = literal(i + 2, b'-', "-")?;
    let day = digits(i, 2).ok_or_else(|| cannot(rest(i), "02"))?;
    if !(0..=31).contains(&day) {
        return Err(range("day"));
    }
    i = literal(i + 2, b'T', "T")?;
    // `15` is `stdHour`: Go's `getnum(value, false)` takes one digit when no second follows.
    let hour = match (digits(i, 2), digits(i, 1)) {
        (Some(h), _) => {
            i += 2;
            h
        }
        (None, Some(h)) => {
            i += 1;
            h
        }
        _ => return Err(cannot(rest(i), "15")),
    };
    if hour >= 24 {
        return Err(range("hour"));
    }
    i = literal(i, b':', ":")?;
    let minute = digits(i, 2).ok_or_else(|| cannot(rest(i), "04"))?;
    if minute >= 60 {
        return Err(range("minute"));
    }
    i = literal(i + 2, b':', ":")?;
    let second = digits(i, 2).ok_or_else(|| cannot(rest(i), "05"))?;
    if second >= 60 {
        return Err(range("second"));
    }
    i += 2;
    // `.000000`: a period or comma and exactly six digits. (Go's `atoi` would also take a
    // sign after the period; no client writes one, and the fake refuses it.)
    let frac = match (b.get(i), digits(i + 1, 6)) {
        (Some(b'.' | b','), Some(f)) => f,
        _ => return Err(cannot(rest(i), ".000000")),
    };
    i += 7;
    let offset_secs = match b.get(i) {
        Some(b'Z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) if b.get(i + 3) == Some(&b':') => {
            let (Some(hh), Some(mm)) = (digits(i + 1, 2), digits(i + 4, 2)) else {
                return Err(cannot(rest(i), "Z07:00"));
            };
            if hh > 24 {
                return Err(range("time zone offset hour"));
            }
            if mm > 60 {
                return Err(range("time zone offset minute"));
            }
            i += 6;
            let secs = hh * 3600 + mm * 60;
            if sign == b'-' { -secs } else { secs }
        }
        _ => return Err(cannot(rest(i), "Z07:00")),
    };
    if i != b.len() {
        return Err(format!("parsing time {value:?}: extra text: {:?}", rest(i)));
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)
        .ok_or_else(|| range("day"))?;
    let local = date
        .and_hms_opt(hour as u32, minute as u32, second as u32)
        .ok_or_else(|| range("second"))?;
    let utc_secs = local.and_utc().timestamp() - offset_secs;
    Ok(utc_secs * 1_000_000 + frac)
}

/// `t.UTC().Format(RFC3339Micro)`: always `Z` and six digits.
pub fn format_micro_time(micros: Micros) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let t = Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
    // Go formats years outside 0..=9999 differently; no lease lives there.
    let year = t.year().clamp(0, 9999);
    format!("{year:04}-{}.{frac:06}Z", t.format("%m-%dT%H:%M:%S"))
}

/// `metav1.Time` as the server writes it (`RFC3339`, whole seconds, UTC): the
/// `creationTimestamp` of an object created now.
pub fn now_rfc3339() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since the Unix epoch of a `metav1.Time` the server wrote, for the Age column.
pub fn parse_rfc3339_secs(value: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_digits_round_trip_in_utc() {
        let t = parse_micro_time("2024-02-29T23:59:59.123456+01:30").unwrap();
        assert_eq!(format_micro_time(t), "2024-02-29T22:29:59.123456Z");
        let t = parse_micro_time("2024-01-01T00:00:00,000001Z").unwrap();
        assert_eq!(format_micro_time(t), "2024-01-01T00:00:00.000001Z");
    }

    #[test]
    fn anything_else_is_go_s_error() {
        assert_eq!(
            parse_micro_time("2024-01-01T00:00:00Z").unwrap_err(),
            "parsing time \"2024-01-01T00:00:00Z\" as \"2006-01-02T15:04:05.000000Z07:00\": \
             cannot parse \"Z\" as \".000000\""
        );
        assert!(parse_micro_time("2024-01-01T00:00:00.123Z").is_err());
        assert!(parse_micro_time("2024-01-01T00:00:00.1234567Z").is_err());
        assert!(parse_micro_time("2024-01-01T00:00:00.123456").is_err());
        assert!(parse_micro_time("2024-01-01 00:00:00.123456Z").is_err());
        assert!(parse_micro_time("2024-01-01T00:00:00.123456z").is_err());
        assert_eq!(
            parse_micro_time("2024-13-01T00:00:00.000000Z").unwrap_err(),
            "parsing time \"2024-13-01T00:00:00.000000Z\": month out of range"
        );
        assert_eq!(
            parse_micro_time("2023-02-29T00:00:00.000000Z").unwrap_err(),
            "parsing time \"2023-02-29T00:00:00.000000Z\": day out of range"
        );
        assert_eq!(
            parse_micro_time("2024-01-01T00:00:00.000000Zx").unwrap_err(),
            "parsing time \"2024-01-01T00:00:00.000000Zx\": extra text: \"x\""
        );
    }
}
