//! Durations in the configuration as Centrifugo writes them: a string with a unit
//! (`"500ms"`, `"300s"`, `"5m"`, `"2h"`, `"7d"`), or a bare number of seconds. Held as
//! milliseconds; written back as `"<n>ms"`.

use serde::{Deserialize, Deserializer, Serializer};

/// Parses `"<n><unit>"` (units `ms`, `s`, `m`, `h`, `d`) into milliseconds.
pub(super) fn parse_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?}: expected a number and a unit, like \"300s\""))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("duration {text:?}: unit must be ms, s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// `deserialize_with` for a duration in milliseconds.
pub(super) fn deserialize_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => s
            .checked_mul(1_000)
            .ok_or_else(|| serde::de::Error::custom("duration is too long")),
        Raw::Text(t) => parse_ms(&t).map_err(serde::de::Error::custom),
    }
}

/// `serialize_with` for a duration in milliseconds.
pub(super) fn serialize_ms<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms("300s"), Ok(300_000));
        assert_eq!(parse_ms("300"), Ok(300_000));
        assert_eq!(parse_ms("5m"), Ok(300_000));
        assert_eq!(parse_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_ms("7d"), Ok(604_800_000));
        assert!(parse_ms("").is_err());
        assert!(parse_ms("5w").is_err());
        assert!(parse_ms("-5s").is_err());
        assert!(parse_ms("99999999999999999999d").is_err());
        assert!(parse_ms("9999999999999999d").is_err());
    }

    #[test]
    fn namespace_retention_from_toml() {
        use crate::config::NamespaceOptions;
        let ns: NamespaceOptions =
            toml::from_str("history_ttl = \"5m\"\nhistory_size = 10").unwrap();
        assert_eq!((ns.history_ttl, ns.history_size), (300_000, 10));
        let ns: NamespaceOptions = toml::from_str("history_ttl = 30").unwrap();
        assert_eq!(ns.history_ttl, 30_000);
        assert!(toml::from_str::<NamespaceOptions>("history_ttl = \"5w\"").is_err());
        let back = toml::to_string(&ns).unwrap();
        assert!(back.contains("history_ttl = \"30000ms\""), "{back}");
        let again: NamespaceOptions = toml::from_str(&back).unwrap();
        assert_eq!(again.history_ttl, 30_000);
    }
}
