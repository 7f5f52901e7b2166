//! `--min-age` as people write it (`7d`, `12h`), and ages as the report says them.

use anyhow::{bail, Context, Result};

/// `7d`, `12h`, `30m`, `45s`, `2w` or `0` -> seconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("{text:?}: expected a number and a unit, e.g. 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("{text:?}: the unit must be one of s, m, h, d, w, e.g. 7d or 12h"),
    };
    number.checked_mul(unit_secs).with_context(|| format!("{text:?} is too long"))
}

/// A duration as its largest whole unit and the next: `7d`, `2d3h`, `5m10s`.
pub(crate) fn format_duration(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let Some(i) = units.iter().position(|(_, size)| secs >= *size) else {
        return "0s".to_string();
    };
    let (unit, size) = units[i];
    let rest = secs % size;
    match units.get(i + 1) {
        Some((next, next_size)) if rest >= *next_size => format!("{}{unit}{}{next}", secs / size, rest / next_size),
        _ => format!("{}{unit}", secs / size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const DAY: u64 = 86_400;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY);
        for bad in ["", "7", "d", "7 days", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(7 * DAY), "7d");
        assert_eq!(format_duration(DAY + 3 * 3600 + 5), "1d3h");
        assert_eq!(format_duration(310), "5m10s");
    }
}
