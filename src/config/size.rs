//! Sizes in bytes as the config writes them: a plain integer (`268435456`) or a number with a
//! unit (`"256 MiB"`, `"20 GiB"`, `"64 kB"`), as durations are written `"5s"`.
//!
//! Any key holding a size takes `Option<Spanned<RawSize>>` in `raw.rs` and is read with the
//! validator's `size` (or `size_usize`), which reports a bad value with its key and line; this
//! module only reads, so the schema below it and the validator above it both use it.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A size as written: an integer of bytes, or a text with a unit, parsed by the validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RawSize {
    /// `max_bytes = 268435456`.
    Bytes(u64),
    /// `max_bytes = "256 MiB"` (or a negative integer, kept to be refused with its key).
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"256 MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(u64::try_from(v).map_or_else(|_| RawSize::Text(v.to_string()), RawSize::Bytes))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The units a size may carry, case-insensitive: bytes, the IEC binary ones (KiB = 1024) and
/// the SI decimal ones (kB = 1000). A bare letter (`"256m"`) is refused: nginx reads it as
/// MiB, most other tools as MB, and a size must mean one thing.
const UNITS: [&str; 10] = [
    "b", "kib", "mib", "gib", "tib", "kb", "mb", "gb", "tb", "bytes",
];

/// Parses a size: digits (with an optional fraction, rounded to the byte) and an optional unit
/// among [`UNITS`], a space between them or not. Anything else is an error saying what to write.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let number_ok = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    let unit_ok = unit.is_empty() || UNITS.iter().any(|u| unit.eq_ignore_ascii_case(u));
    if !number_ok || !unit_ok {
        return Err(format!(
            "{text:?} is not a size: write a number of bytes, or a number and a unit, e.g. \
             \"256 MiB\", \"20 GiB\", \"64 KiB\" (KiB, MiB, GiB, TiB: powers of 1024; kB, MB, \
             GB, TB: powers of 1000)"
        ));
    }
    let unit = if unit.eq_ignore_ascii_case("bytes") {
        "B"
    } else {
        unit
    };
    parse_size::parse_size(format!("{number} {unit}").trim_end())
        .map_err(|e| format!("{text:?} is not a size ({e})"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_a_unit_or_none() {
        for (text, want) in [
            ("268435456", 268_435_456),
            ("256 MiB", 256 << 20),
            ("256MiB", 256 << 20),
            ("256 mib", 256 << 20),
            ("20 GiB", 20 << 30),
            ("64 KiB", 64 << 10),
            ("1 TiB", 1 << 40),
            ("1.5 KiB", 1536),
            ("64 kB", 64_000),
            ("64 KB", 64_000),
            ("2 GB", 2_000_000_000),
            ("512 B", 512),
            ("512 bytes", 512),
            (" 8 MiB ", 8 << 20),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn a_bad_size_is_refused_saying_what_to_write() {
        for bad in [
            "",
            "MiB",
            "256m",
            "256 M",
            "256 Mi",
            "lots",
            "-1",
            "1e9",
            "256 MiBs",
            "1.2.3 MiB",
            ".5 MiB",
            "5. MiB",
            "256 MiB extra",
            "0x100",
            "99999999999 TiB",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(parse_size("256m").unwrap_err().contains("\"256 MiB\""));
    }
}
