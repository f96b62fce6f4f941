//! Helpers for the fuzz targets in `fuzz_targets/`. The properties themselves are in
//! [`oracles`], which `tests/properties.rs` shares.

use std::any::Any;
use std::panic::{self, UnwindSafe};

pub mod oracles;

/// Runs `f`, catching a panic instead of aborting. libfuzzer-sys installs a panic hook that
/// aborts the process; it is set aside for the call, so a target can tolerate a *known* panic
/// (and re-raise anything else with [`panic::resume_unwind`]).
pub fn catch<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, Box<dyn Any + Send>> {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(f);
    panic::set_hook(hook);
    result
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("")
}

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
