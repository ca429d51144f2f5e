//! Parsing of the human-friendly units used in config values: durations such as `"250ms"` or
//! `"1m30s"`, and sizes such as `"10MB"` (1 MB = 1024 KB, as NGINX counts).

use std::time::Duration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("expected a duration such as \"250ms\", \"5s\" or \"1h\", found an empty string")]
    Empty,
    #[error("expected a duration such as \"250ms\", \"5s\" or \"1h\", found \"{text}\"")]
    NotADuration { text: String },
    #[error("number too large in duration \"{text}\"")]
    TooLarge { text: String },
    #[error("duration \"{text}\" has no unit: write \"{n}s\" or \"{n}ms\"")]
    NoUnit { text: String, n: u64 },
    #[error("unknown unit \"{unit}\" in duration \"{text}\" (use ms, s, m, h or d)")]
    UnknownUnit { unit: String, text: String },
}

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("expected a size such as \"10MB\" or \"512KB\", found \"{text}\"")]
    NotASize { text: String },
    #[error("number too large in size \"{text}\"")]
    NumberTooLarge { text: String },
    #[error("unknown unit \"{unit}\" in size \"{text}\" (use B, KB, MB or GB)")]
    UnknownUnit { unit: String, text: String },
    #[error("size \"{text}\" is too large")]
    TooLarge { text: String },
}

/// Parses `"250ms"`, `"5s"`, `"1h"`, `"1m30s"`, `"0s"`. Units: `us`, `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let owned = || text.to_string();
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotADuration { text: owned() });
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge { text: owned() })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(DurationError::NoUnit { text: owned(), n }),
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    text: owned(),
                })
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way the config writes it (used by `config` output and messages).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `"10MB"`, `"512KB"`, `"1GB"`, `"100B"`, `"64KiB"` or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let owned = || text.to_string();
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(SizeError::NotASize { text: owned() });
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| SizeError::NumberTooLarge { text: owned() })?;
    let mult: u64 = match s[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_string(),
                text: owned(),
            })
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge { text: owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("5").unwrap_err().to_string(),
            "duration \"5\" has no unit: write \"5s\" or \"5ms\""
        );
        assert!(matches!(
            parse_duration("5 sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512KB").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("MB").is_err());
    }
}
