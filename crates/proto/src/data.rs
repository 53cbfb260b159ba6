//! What client-supplied JSON data (publication `data`) may be, checked once when it is
//! accepted so that it is stored, fanned out and read back exactly as given and never
//! has to be parsed again.
//!
//! The syntax has already been checked by serde_json (data arrives as a `RawValue`); this
//! adds what serde_json and the SDKs need to decode it later: a bounded nesting depth
//! (serde_json refuses more than 128 levels, some SDKs fewer) and numbers that fit an
//! `f64` (`1e999` parses as a token but not as a number). One linear pass, no allocation,
//! no recursion: safe on any input, however deep.

use serde_json::value::RawValue;

/// Default deepest nesting of arrays and objects accepted in publication data.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Why data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("data nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("data has a number that does not fit a 64-bit float: {0}")]
    BadNumber(String),
}

/// Checks syntactically valid JSON text (a `RawValue`'s) for depth and numbers.
pub fn check(data: &RawValue, max_depth: usize) -> Result<(), DataError> {
    check_text(data.get(), max_depth)
}

/// `check` on text already known to be valid JSON. On invalid JSON it never panics; its
/// answer is then meaningless.
pub fn check_text(text: &str, max_depth: usize) -> Result<(), DataError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(DataError::TooDeep(max_depth));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &text[start..i];
                if !token.parse::<f64>().is_ok_and(f64::is_finite) {
                    let shown: String = token.chars().take(32).collect();
                    return Err(DataError::BadNumber(shown));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn accepts_ordinary_data() {
        for s in [
            r#"{"text":"hi [{ \" ]]]","n":-1.5e10,"list":[1,2,{"a":null}]}"#,
            "12345678901234567890123",
            "1e-999",
            "\"1e999\"",
            "[]",
        ] {
            assert_eq!(check(&raw(s), 64), Ok(()), "{s}");
        }
    }

    #[test]
    fn refuses_deep_nesting_and_overflowing_numbers() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(check(&raw(&deep), 64), Err(DataError::TooDeep(64)));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check(&raw(&ok), 64), Ok(()));
        assert!(matches!(
            check(&raw(r#"{"a":[1e999]}"#), 64),
            Err(DataError::BadNumber(_))
        ));
        assert!(matches!(
            check(&raw("-1E400"), 64),
            Err(DataError::BadNumber(_))
        ));
    }
}
