//! Helpers for the fuzz targets in `fuzz_targets/`. The properties themselves are in
//! [`oracles`], which `tests/properties.rs` shares.

pub mod oracles;

/// Splits `data` at its first newline: (first line, rest).
pub fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A cheap, stable seed from the input (positions of planted values).
pub fn seed(data: &[u8]) -> usize {
    data.iter().fold(17usize, |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}

/// The analytics settings and pseudonymiser the analytics targets share, built once rather
/// than for every input.
pub fn analytics() -> &'static oracles::Analytics {
    static A: std::sync::OnceLock<oracles::Analytics> = std::sync::OnceLock::new();
    A.get_or_init(oracles::Analytics::default)
}
