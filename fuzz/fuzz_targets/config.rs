//! Config parsing. Properties: `Config::parse` never panics; a config it accepts obeys every
//! documented rule (plain unique prefixes and names, http(s) upstream bases ending in `/`,
//! forward_headers and pass_through only on EU routes and never credentials or client
//! addresses, analytics never cached, max_zoom <= 30…) and runs: the router builds, every route
//! scrubs and builds URLs, `tamis check` and the transparency page render.
//! Input: the TOML text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tamis_fuzz::oracles::check_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Paths in the config are read at load (salt_file, tls_cert…): keep off device files.
    if ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    check_config(text);
});
