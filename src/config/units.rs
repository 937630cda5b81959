//! Durations and sizes as people write them in config files (`30s`, `1m30s`, `10MB`).
//!
//! The parsers return a message rather than an error type because the message is all a config
//! error needs: the YAML loader attaches the file, position and key path to it.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The format of a duration, quoted in every duration error.
const DURATION_FORMAT: &str = "a number with a unit (ns, us, ms, s, m, h, d), \
                               such as \"100ms\", \"30s\" or \"1m30s\"";

/// The format of a size, quoted in every size error.
const SIZE_FORMAT: &str = "a whole number of bytes with an optional unit \
                           (B, KB, MB, GB, TB, all 1024-based, or KiB, MiB, GiB, TiB), \
                           such as \"512KB\" or \"10MB\"";

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Parses a duration like "100ms", "30s", "5m", "1h", "1m30s", "250us"; errors name the expected format.
///
/// Parts may carry a fraction (`1.5s`), down to nanoseconds, and are added up in any order.
/// A bare `0` is accepted, since zero needs no unit; any other bare number is refused, because
/// whether `30` means seconds or milliseconds is exactly the mistake this format avoids.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        |reason: &str| format!("invalid duration {text:?}: {reason}; expected {DURATION_FORMAT}");
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after_number) = rest.split_at(number_end);
        let unit_end = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_end);
        if number.is_empty() {
            return Err(invalid(&format!("{unit:?} has no number before it")));
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3_600 * NANOS_PER_SECOND,
            "d" => 86_400 * NANOS_PER_SECOND,
            "" => return Err(invalid(&format!("{number} has no unit"))),
            _ => return Err(invalid(&format!("unknown unit {unit:?}"))),
        };
        let nanos = scale_decimal(number, nanos_per_unit).map_err(|reason| invalid(&reason))?;
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| invalid("it is too long"))?;
        rest = after_unit;
    }
    let seconds =
        u64::try_from(total_nanos / NANOS_PER_SECOND).map_err(|_| invalid("it is too long"))?;
    let subsecond_nanos =
        u32::try_from(total_nanos % NANOS_PER_SECOND).map_err(|_| invalid("it is too long"))?;
    Ok(Duration::new(seconds, subsecond_nanos))
}

/// `number` (digits with at most one `.` and at most nine decimals) times `unit`, in whole
/// units of the smallest kind; a fraction of the smallest unit is dropped.
fn scale_decimal(number: &str, unit: u128) -> Result<u128, String> {
    /// Nine decimals reach a nanosecond from seconds; more would be noise.
    const MAX_DECIMALS: usize = 9;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let bad_number = || format!("{number:?} is not a number");
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(bad_number());
    }
    if fraction.len() > MAX_DECIMALS {
        return Err(format!("{number} has more than {MAX_DECIMALS} decimals"));
    }
    let too_large = || "it is too long".to_owned();
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad_number())?
    };
    let fraction_scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| bad_number())?);
    let whole_part = whole_value.checked_mul(unit).ok_or_else(too_large)?;
    let fraction_part = fraction_value.checked_mul(unit).ok_or_else(too_large)? / fraction_scale;
    whole_part.checked_add(fraction_part).ok_or_else(too_large)
}

/// Parses a size like "10MB", "512KB", "1GiB", "1024" (bytes).
///
/// `KB`, `MB`, `GB` and `TB` are 1024-based, as in nginx, since that is what people mean by
/// them in server configs; `KiB`, `MiB`, `GiB` and `TiB` say the same unambiguously. Units are
/// case-insensitive, the `B` is optional (`10M`), and a space may separate number and unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = |reason: &str| format!("invalid size {text:?}: {reason}; expected {SIZE_FORMAT}");
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid("it does not start with a number"));
    }
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ if unit.starts_with('.') => return Err(invalid("fractions are not supported")),
        _ => return Err(invalid(&format!("unknown unit {unit:?}"))),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(multiplier))
        .ok_or_else(|| invalid("it is too large"))
}

/// A duration in a config schema, written as [`parse_duration`] reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationValue(pub Duration);

/// A size in bytes in a config schema, written as [`parse_size`] reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeValue(pub u64);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(DURATION_FORMAT)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationValue, E> {
                parse_duration(text).map(DurationValue).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(SIZE_FORMAT)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                parse_size(text).map(SizeValue).map_err(E::custom)
            }

            /// Formats that keep numbers apart from strings hand a bare byte count over here.
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<SizeValue, E> {
                Ok(SizeValue(bytes))
            }
        }

        deserializer.deserialize_str(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as ValueError, StrDeserializer, U64Deserializer};

    #[test]
    fn durations_in_every_unit_and_combination() {
        let cases = [
            ("100ms", Duration::from_millis(100)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3_600)),
            ("2d", Duration::from_secs(172_800)),
            ("1m30s", Duration::from_secs(90)),
            ("1h2m3s4ms", Duration::new(3_723, 4_000_000)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("1.5s", Duration::from_millis(1_500)),
            (".25s", Duration::from_millis(250)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_wrong_and_what_is_expected() {
        let cases = [
            ("", "it is empty"),
            ("30", "30 has no unit"),
            ("5x", "unknown unit \"x\""),
            ("1m30", "30 has no unit"),
            ("ms", "\"ms\" has no number before it"),
            ("1.2.3s", "\"1.2.3\" is not a number"),
            (".s", "\".\" is not a number"),
            ("-1s", "\"-\" has no number before it"),
            ("1 s", "unknown unit \" s\""),
            ("0.0000000001s", "more than 9 decimals"),
            ("999999999999999999999999d", "too long"),
        ];
        for (text, reason) in cases {
            let message = parse_duration(text).expect_err(text);
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("such as \"100ms\""), "{text}: {message}");
        }
    }

    #[test]
    fn sizes_are_1024_based_with_optional_b() {
        let cases = [
            ("1024", 1_024),
            ("0", 0),
            ("12B", 12),
            ("512KB", 512 * 1_024),
            ("512kb", 512 * 1_024),
            ("10MB", 10 * 1_048_576),
            ("10M", 10 * 1_048_576),
            ("10 MiB", 10 * 1_048_576),
            ("1GiB", 1_073_741_824),
            ("1g", 1_073_741_824),
            ("2TB", 2 << 40),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for (text, reason) in [
            ("", "does not start with a number"),
            ("MB", "does not start with a number"),
            ("-1", "does not start with a number"),
            ("1.5MB", "fractions are not supported"),
            ("10XB", "unknown unit \"XB\""),
            ("99999999999TB", "too large"),
            ("99999999999999999999", "too large"),
        ] {
            let message = parse_size(text).expect_err(text);
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("1024-based"), "{text}: {message}");
        }
    }

    #[test]
    fn newtypes_deserialize_from_strings_and_report_the_parser_message() {
        let duration: StrDeserializer<'_, ValueError> = "1m30s".into_deserializer();
        assert_eq!(
            DurationValue::deserialize(duration),
            Ok(DurationValue(Duration::from_secs(90)))
        );
        let bad: StrDeserializer<'_, ValueError> = "soon".into_deserializer();
        let message = DurationValue::deserialize(bad)
            .expect_err("bad duration")
            .to_string();
        assert!(
            message.starts_with("invalid duration \"soon\""),
            "{message}"
        );

        let size: StrDeserializer<'_, ValueError> = "10MB".into_deserializer();
        assert_eq!(SizeValue::deserialize(size), Ok(SizeValue(10 << 20)));
        let bytes: U64Deserializer<ValueError> = 4_096u64.into_deserializer();
        assert_eq!(SizeValue::deserialize(bytes), Ok(SizeValue(4_096)));
    }
}
