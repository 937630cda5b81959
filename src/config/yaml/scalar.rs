//! How a plain (unquoted) scalar is read, following the YAML 1.2 core schema.
//!
//! YAML 1.1 also read `yes`, `on`, `0777` and `1_000` as booleans and numbers, which is how
//! `country: NO` became `false`; the 1.2 core schema that this module follows does not.

/// Whether a plain scalar means null: `~`, `null`, `Null`, `NULL` or nothing at all.
pub(super) fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// The boolean a plain scalar means, if any.
pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// What a plain scalar that may be an integer turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IntegerText {
    /// Not written as an integer at all.
    NotInteger,
    /// Written as an integer too large even for `i128`.
    OutOfRange,
    Value(i128),
}

/// Reads `42`, `-3`, `+7`, `0o17` and `0x1F` (the core schema's integer forms).
pub(super) fn parse_integer(text: &str) -> IntegerText {
    let (digits, radix, allow_sign) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16, false)
    } else if let Some(octal) = text.strip_prefix("0o") {
        (octal, 8, false)
    } else {
        (text, 10, true)
    };
    let (negative, unsigned_digits) = match digits.as_bytes().first() {
        Some(b'-') if allow_sign => (true, &digits[1..]),
        Some(b'+') if allow_sign => (false, &digits[1..]),
        _ => (false, digits),
    };
    if unsigned_digits.is_empty() || !unsigned_digits.chars().all(|c| c.is_digit(radix)) {
        return IntegerText::NotInteger;
    }
    // Parsing the sign together with the digits lets `i128::MIN` through.
    let signed = if negative {
        format!("-{unsigned_digits}")
    } else {
        unsigned_digits.to_owned()
    };
    match i128::from_str_radix(&signed, radix) {
        Ok(value) => IntegerText::Value(value),
        Err(_) => IntegerText::OutOfRange,
    }
}

/// Reads the core schema's float forms (`1.5`, `-.5`, `1e3`, `.inf`, `-.Inf`, `.nan`).
/// Integers are not floats here; callers that accept both try [`parse_integer`] too.
pub(super) fn parse_float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    match unsigned {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        ".nan" | ".NaN" | ".NAN" if unsigned.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    if !is_decimal_float(unsigned) {
        return None;
    }
    text.parse().ok()
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` without the sign, written out by hand
/// because Rust's own float parser also accepts `inf` and `NaN`.
fn is_decimal_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(position) => (&text[..position], Some(&text[position + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    let mantissa_valid = match fraction {
        Some(fraction) if whole.is_empty() => !fraction.is_empty() && all_digits(fraction),
        Some(fraction) => all_digits(whole) && all_digits(fraction),
        None => !whole.is_empty() && all_digits(whole),
    };
    let exponent_valid = match exponent {
        None => true,
        Some(exponent) => {
            let digits = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
            !digits.is_empty() && all_digits(digits)
        }
    };
    // A bare integer such as `12` is an integer, not a float.
    mantissa_valid && exponent_valid && (fraction.is_some() || exponent.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_bool_follow_the_core_schema() {
        assert!(is_null("") && is_null("~") && is_null("NULL"));
        assert!(!is_null("nil"));
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool("off"), None);
    }

    #[test]
    fn integers_in_every_core_form() {
        assert_eq!(parse_integer("42"), IntegerText::Value(42));
        assert_eq!(parse_integer("-3"), IntegerText::Value(-3));
        assert_eq!(parse_integer("+7"), IntegerText::Value(7));
        assert_eq!(parse_integer("0x1F"), IntegerText::Value(31));
        assert_eq!(parse_integer("0o17"), IntegerText::Value(15));
        assert_eq!(parse_integer("0777"), IntegerText::Value(777));
        assert_eq!(
            parse_integer("-170141183460469231731687303715884105728"),
            IntegerText::Value(i128::MIN)
        );
        assert_eq!(
            parse_integer("999999999999999999999999999999999999999999"),
            IntegerText::OutOfRange
        );
        for text in ["", "-", "1_000", "0x", "-0x1", "1.5", "abc", "12a"] {
            assert_eq!(parse_integer(text), IntegerText::NotInteger, "{text}");
        }
    }

    #[test]
    fn floats_but_not_integers_or_words() {
        assert_eq!(parse_float("1.5"), Some(1.5));
        assert_eq!(parse_float("-.5"), Some(-0.5));
        assert_eq!(parse_float("1."), Some(1.0));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("-.inf"), Some(f64::NEG_INFINITY));
        assert!(parse_float(".nan").is_some_and(f64::is_nan));
        for text in [
            "12", "inf", "NaN", "-.nan", ".", "1e", "e3", "1.5.2", "infinity",
        ] {
            assert_eq!(parse_float(text), None, "{text}");
        }
    }
}
