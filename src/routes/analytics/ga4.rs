//! GA4 `/g/collect`: shared parameters in the query, one event per body line; body keys override
//! query keys, so both are scrubbed with the same table.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::SystemTime;

use super::{
    host_of, parse_absolute, primary_language, same_site, same_site_referrer, AbsoluteUrl, Context,
    Outcome, ScrubError, Tally, MAX_PARAMS,
};

/// Custom-field prefixes: kept only when their full name is in `allow_event_params`.
const CUSTOM: &[&str] = &["ep.", "epn.", "up.", "upn."];

/// The parameter table (`*` entries describe families; `tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("v", Outcome::Kept, ""),
    ("tid", Outcome::Kept, "measurement id"),
    ("gtm", Outcome::Kept, ""),
    ("_p", Outcome::Kept, "page load id"),
    ("gcd", Outcome::Kept, "consent state"),
    ("npa", Outcome::Kept, ""),
    ("dma", Outcome::Kept, ""),
    ("dma_cps", Outcome::Kept, ""),
    ("are", Outcome::Kept, ""),
    ("frm", Outcome::Kept, ""),
    ("pscdl", Outcome::Kept, ""),
    ("_s", Outcome::Kept, "hit sequence"),
    ("sid", Outcome::Kept, "session start"),
    ("sct", Outcome::Kept, "session count"),
    ("seg", Outcome::Kept, "engaged session"),
    ("dt", Outcome::Kept, "page title"),
    ("en", Outcome::Kept, "event name"),
    ("_ee", Outcome::Kept, ""),
    ("_et", Outcome::Kept, "engagement time"),
    ("tfd", Outcome::Kept, ""),
    ("_c", Outcome::Kept, ""),
    ("_fv", Outcome::Kept, "first visit"),
    ("_nsi", Outcome::Kept, "new session"),
    ("_ss", Outcome::Kept, "session start"),
    ("cu", Outcome::Kept, "currency"),
    (
        "cid",
        Outcome::Pseudonymised,
        "keyed, rotating; keeps GA's digits.digits shape",
    ),
    (
        "dl",
        Outcome::Generalised,
        "no path parameters, no fragment, no query but allow_url_params",
    ),
    (
        "dr",
        Outcome::Generalised,
        "same-site: origin and path (no path parameters); external: dropped",
    ),
    ("ul", Outcome::Generalised, "primary language only"),
    ("uid", Outcome::Dropped, "user id"),
    ("_fid", Outcome::Dropped, "Firebase id"),
    ("ecid", Outcome::Dropped, "enhanced conversions id"),
    ("_fplc", Outcome::Dropped, "first-party linker cookie"),
    ("_gl", Outcome::Dropped, "cross-domain linker"),
    ("uip", Outcome::Dropped, "IP override"),
    ("_uip", Outcome::Dropped, "IP override"),
    ("sr", Outcome::Dropped, "screen resolution"),
    (
        "uaa, uab, uafvl, uamb, uam, uap, uapv, uaw",
        Outcome::Dropped,
        "client hints",
    ),
    (
        "ep.*, epn.*, up.*, upn.*",
        Outcome::Dropped,
        "unless listed in allow_event_params",
    ),
    ("*", Outcome::Dropped, "any other parameter"),
];

/// Whether the table keeps `name` as it is. The kept names are short: each is packed with its
/// length into one integer, so the lookup is a binary search over integers (string comparisons
/// were most of the scrubbing time). Longer names, should the table get any, are compared
/// as strings.
fn kept(name: &str) -> bool {
    static KEPT: std::sync::OnceLock<(Vec<u64>, Vec<&'static str>)> = std::sync::OnceLock::new();
    let (short, long) = KEPT.get_or_init(|| {
        let (mut short, mut long) = (Vec::new(), Vec::new());
        for n in super::kept_index(RULES) {
            match pack(n) {
                Some(p) => short.push(p),
                None => long.push(n),
            }
        }
        short.sort_unstable();
        (short, long)
    });
    match pack(name) {
        Some(p) => short.binary_search(&p).is_ok(),
        None => long.contains(&name),
    }
}

/// Up to 7 bytes and the length in one integer (distinct names, distinct integers).
fn pack(name: &str) -> Option<u64> {
    let b = name.as_bytes();
    if b.len() > 7 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[..b.len()].copy_from_slice(b);
    buf[7] = b.len() as u8;
    Some(u64::from_le_bytes(buf))
}

// Byte searches for ASCII separators: `str` methods taking a `char` call `memcmp` on every
// match, which cost a fifth of the scrubbing time.

/// Whether `s` contains the ASCII byte `c`.
fn has(s: &str, c: u8) -> bool {
    s.as_bytes().contains(&c)
}

/// `s.split(sep)` for an ASCII `sep`.
fn split(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let rest = s.as_bytes().get(start..)?;
        let end = rest
            .iter()
            .position(|&c| c == sep)
            .map_or(s.len(), |i| start + i);
        let part = &s[start..end];
        start = end + 1;
        Some(part)
    })
}

/// `s.split_once(sep)` for an ASCII `sep`.
fn split_once(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.as_bytes().iter().position(|&c| c == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Checks that every `%` in `s` starts a valid escape (as [`super::raw_pairs`] does first, over
/// the whole set). Returns whether an escape encodes a byte >= 0x80.
fn escapes(s: &str) -> Result<bool, ScrubError> {
    let b = s.as_bytes();
    let Some(mut i) = b.iter().position(|&c| c == b'%') else {
        return Ok(false);
    };
    let mut high = false;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    high |= !matches!(h, b'0'..=b'7');
                    i += 3;
                }
                _ => return Err(ScrubError::Encoding),
            }
        } else {
            i += 1;
        }
    }
    Ok(high)
}

/// Checks one key or value as [`super::raw_pairs`] does (valid escapes, and decoded text that
/// is UTF-8) without decoding it.
fn check(s: &str) -> Result<(), ScrubError> {
    if !has(s, b'%') {
        return Ok(());
    }
    // Escapes of ASCII bytes cannot break UTF-8 (the text around them is a `str`): only
    // escapes of bytes >= 0x80 need the decoded text checked.
    if escapes(s)?
        && percent_encoding::percent_decode(s.as_bytes())
            .decode_utf8()
            .is_err()
    {
        return Err(ScrubError::Encoding);
    }
    Ok(())
}

/// Form-decodes a key or value already [`check`]ed (`+` is a space, then `%XX`); borrowed
/// when there is nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    let plus = has(s, b'+');
    if !plus && !has(s, b'%') {
        return Cow::Borrowed(s);
    }
    let spaced = if plus {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(d) => Cow::Owned(d.into_owned()),
        Err(_) => Cow::Borrowed(""),
    }
}

/// A key, checked and decoded (keys are short: one pass looks for both `%` and `+`).
fn key(raw: &str) -> Result<Cow<'_, str>, ScrubError> {
    if raw.bytes().any(|c| c == b'%' || c == b'+') {
        check(raw)?;
        Ok(decode(raw))
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// The decoded value of the first pair named `name`, if any (for `tid` and `dl`, which other
/// rules read). Malformed pairs are skipped: the scrubbing pass refuses them anyway.
fn first_value<'a>(set: &'a str, name: &str) -> Option<Cow<'a, str>> {
    for raw in split(set, b'&') {
        let (k, v) = split_once(raw, b'=').unwrap_or((raw, ""));
        if key(k).is_ok_and(|k| k == name) {
            return check(v).ok().map(|()| decode(v));
        }
    }
    None
}

/// Appends the `&` between pairs of the query string or body line that starts at `start`.
fn separate(out: &mut String, start: usize) {
    if out.len() > start {
        out.push('&');
    }
}

/// Appends `key=value`, the value form-encoded.
fn push_encoded(out: &mut String, start: usize, raw_key: &str, value: &str) {
    separate(out, start);
    out.push_str(raw_key);
    out.push('=');
    out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
}

/// `scrub_page_url`, borrowed when there is no allowlist (the common case) and nothing to take
/// out of the authority or the path: the URL up to its query or fragment.
fn page_url<'a>(url: &'a str, allow: &[String]) -> Option<Cow<'a, str>> {
    let trimmed = url.trim();
    let no_fragment = trimmed.split('#').next().unwrap_or("");
    let base = no_fragment.split_once('?').map_or(no_fragment, |(b, _)| b);
    if !allow.is_empty() || has(base, b';') {
        return super::scrub_page_url(url, allow).map(Cow::Owned);
    }
    let fast = if base.starts_with('/') {
        super::is_page_path(base).then_some(Cow::Borrowed(base))
    } else {
        parse_absolute(base).map(|u| without_userinfo(base, &u))
    };
    debug_assert_eq!(
        fast.as_deref(),
        super::scrub_page_url(url, allow).as_deref()
    );
    fast
}

/// `url` (read as `u`) without its user information: borrowed when it has none.
fn without_userinfo<'a>(url: &'a str, u: &AbsoluteUrl<'_>) -> Cow<'a, str> {
    if u.scheme.len() + "://".len() + u.host_port.len() + u.rest.len() == url.len() {
        Cow::Borrowed(url)
    } else {
        Cow::Owned(format!("{}://{}{}", u.scheme, u.host_port, u.rest))
    }
}

/// `same_site_referrer`, borrowed when there is no user information or path parameter to
/// take out.
fn referrer<'a>(referrer: &'a str, site_host: Option<&str>) -> Option<Cow<'a, str>> {
    let cut = referrer.find(['?', '#']).unwrap_or(referrer.len());
    if has(&referrer[..cut], b';') {
        return same_site_referrer(referrer, site_host).map(Cow::Owned);
    }
    let fast = site_host.and_then(|site| {
        let u = parse_absolute(referrer)?;
        if !same_site(u.host, site) {
            return None;
        }
        let u = AbsoluteUrl {
            rest: u.rest.split(['?', '#']).next().unwrap_or(""),
            ..u
        };
        Some(without_userinfo(&referrer[..cut], &u))
    });
    debug_assert_eq!(
        fast.as_deref(),
        same_site_referrer(referrer, site_host).as_deref()
    );
    fast
}

/// Scrubs one set of parameters (the query, or one body line) onto the end of `out`, after
/// checking it as strictly as [`super::raw_pairs`] (same errors). Kept pairs are copied as
/// they came; only the values a rule reads are decoded, and only those it changes re-encoded.
fn scrub_params(
    set: &str,
    site: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
    out: &mut String,
) -> Result<(), ScrubError> {
    let set = set.strip_prefix('?').unwrap_or(set);
    let start = out.len();
    // The page's own host tells same-site referrers from external ones: the first `dl`,
    // looked up when a `dr` needs it.
    let mut site_url: Option<Option<Cow<'_, str>>> = None;
    let mut count = 0;
    for raw in split(set, b'&') {
        if raw.is_empty() {
            continue;
        }
        if count == MAX_PARAMS {
            // A bad escape anywhere in the set is reported first, as `raw_pairs` does.
            escapes(set)?;
            return Err(ScrubError::TooManyParameters);
        }
        count += 1;
        let (raw_key, raw_value) = split_once(raw, b'=').unwrap_or((raw, ""));
        let key = key(raw_key)?;
        check(raw_value)?;
        let value = || decode(raw_value);
        match key.as_ref() {
            "cid" => {
                let n = ctx.pseudonyms.pseudonym(ctx.route, site, &value(), now);
                tally.add(Outcome::Pseudonymised);
                separate(out, start);
                out.push_str(raw_key);
                // Digits and a dot: nothing to encode.
                let _ = write!(out, "={n}.{}", ctx.pseudonyms.period_start(now));
            }
            "dl" => {
                let v = value();
                match page_url(&v, &ctx.settings.allow_url_params) {
                    Some(url) => {
                        tally.add(Outcome::Generalised);
                        push_encoded(out, start, raw_key, &url);
                    }
                    None => tally.add(Outcome::Dropped),
                }
                if site_url.is_none() {
                    site_url = Some(Some(v));
                }
            }
            "dr" => {
                let site_url = site_url.get_or_insert_with(|| first_value(set, "dl"));
                match referrer(&value(), site_url.as_deref().and_then(host_of)) {
                    Some(r) => {
                        tally.add(Outcome::Generalised);
                        push_encoded(out, start, raw_key, &r);
                    }
                    None => tally.add(Outcome::Dropped),
                }
            }
            "ul" => match primary_language(&value()) {
                Some(lang) => {
                    tally.add(Outcome::Generalised);
                    push_encoded(out, start, raw_key, &lang);
                }
                None => tally.add(Outcome::Dropped),
            },
            name if kept(name)
                || (CUSTOM.iter().any(|c| name.starts_with(c))
                    && ctx.settings.allow_event_params.iter().any(|a| a == name)) =>
            {
                tally.add(Outcome::Kept);
                separate(out, start);
                out.push_str(raw);
            }
            _ => tally.add(Outcome::Dropped),
        }
    }
    Ok(())
}

/// Scrubs a `/g/collect` request: its query and each body line. Returns the new query and body.
pub fn scrub(
    query: &str,
    body: &[u8],
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<(String, Vec<u8>), ScrubError> {
    let site = first_value(query.strip_prefix('?').unwrap_or(query), "tid").unwrap_or_default();
    let mut out_query = String::with_capacity(query.len());
    scrub_params(query, &site, ctx, now, tally, &mut out_query)?;
    let body = std::str::from_utf8(body).map_err(|_| ScrubError::Body("not UTF-8".into()))?;
    let mut out_body = String::with_capacity(body.len());
    for line in body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.trim().is_empty() {
            continue;
        }
        if !out_body.is_empty() {
            out_body.push_str("\r\n");
        }
        scrub_params(line, &site, ctx, now, tally, &mut out_body)?;
    }
    Ok((out_query, out_body.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_query, Pseudonymizer, Settings};
    use super::*;
    use std::time::Duration;

    fn fixture() -> (String, String) {
        let raw = include_str!("../../../tests/fixtures/ga4-collect-batch.http");
        let first = raw.lines().next().unwrap();
        let target = first.split_whitespace().nth(1).unwrap();
        let query = target.split_once('?').unwrap().1.to_owned();
        let body = raw
            .split_once("\r\n\r\n")
            .or_else(|| raw.split_once("\n\n"))
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (query, body)
    }

    type Params = Vec<(String, String)>;

    /// Scrubs one request with `settings` and a fresh pseudonym key.
    fn scrub_with(
        settings: &Settings,
        query: &str,
        body: &[u8],
        tally: &mut Tally,
    ) -> Result<(String, Vec<u8>), ScrubError> {
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings,
            pseudonyms: &p,
            route: "ga",
        };
        scrub(query, body, &ctx, SystemTime::now(), tally)
    }

    fn run(settings: &Settings) -> (Params, Vec<Params>, Tally) {
        let (q, body) = fixture();
        let mut tally = Tally::default();
        let (q, b) = scrub_with(settings, &q, body.as_bytes(), &mut tally).unwrap();
        let lines = String::from_utf8(b).unwrap();
        assert!(!lines.contains("\n\n"));
        let lines = lines
            .split("\r\n")
            .map(|l| parse_query(l).unwrap())
            .collect();
        (parse_query(&q).unwrap(), lines, tally)
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_fixture_is_scrubbed_parameter_by_parameter() {
        let settings = Settings {
            allow_event_params: vec!["ep.page_type".into()],
            allow_url_params: vec![],
        };
        let (q, lines, tally) = run(&settings);
        assert_eq!(get(&q, "tid"), Some("G-ABCD123456"));
        assert_eq!(get(&q, "dl"), Some("https://shop.example/order/confirm"));
        assert_eq!(get(&q, "dr"), None, "external referrer dropped");
        assert_eq!(get(&q, "ul"), Some("fr"));
        assert_eq!(get(&q, "dt"), Some("Order confirmed"));
        let cid = get(&q, "cid").unwrap();
        let (a, b) = cid.split_once('.').unwrap();
        assert!(
            a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()),
            "{cid}"
        );
        assert_ne!(cid, "1823456789.1732439000");
        for gone in [
            "uid", "_fid", "ecid", "sr", "uaa", "uab", "uafvl", "uamb", "uam", "uap", "uapv", "uaw",
        ] {
            assert_eq!(get(&q, gone), None, "{gone}");
        }
        assert_eq!(lines.len(), 2);
        assert_eq!(get(&lines[0], "en"), Some("page_view"));
        assert_eq!(
            get(&lines[0], "ep.page_type"),
            Some("checkout"),
            "allowlisted"
        );
        assert_eq!(get(&lines[0], "ep.customer_email"), None);
        assert_eq!(get(&lines[1], "ep.transaction_id"), None);
        assert_eq!(get(&lines[1], "epn.value"), None);
        assert_eq!(get(&lines[1], "up.loyalty_tier"), None);
        assert!(
            tally.get(Outcome::Dropped) >= 15 && tally.get(Outcome::Pseudonymised) == 1,
            "{tally:?}"
        );
    }

    #[test]
    fn utm_parameters_only_when_allowed_and_same_site_referrers_as_path() {
        let settings = Settings {
            allow_event_params: vec![],
            allow_url_params: vec!["utm_source".into()],
        };
        let (q, _, _) = run(&settings);
        assert_eq!(
            get(&q, "dl"),
            Some("https://shop.example/order/confirm?utm_source=news")
        );
        let (q, _) = scrub_with(
            &settings,
            "dl=https%3A%2F%2Fshop.example%2Fb&dr=https%3A%2F%2Fshop.example%2Fa%3Fq%3D1",
            b"",
            &mut Tally::default(),
        )
        .unwrap();
        assert_eq!(
            get(&parse_query(&q).unwrap(), "dr"),
            Some("https://shop.example/a")
        );
    }

    #[test]
    fn page_urls_and_referrers_lose_user_information_and_surrounding_text() {
        // Both the borrowed fast paths (no allowlist) and the allowlist path.
        for allow in [vec![], vec!["utm_source".to_owned()]] {
            let settings = Settings {
                allow_event_params: vec![],
                allow_url_params: allow,
            };
            let (q, body) = scrub_with(
                &settings,
                "dl=https%3A%2F%2Falice%3Apw%40shop.example%2Fp&dr=https%3A%2F%2Falice%40shop.example%2Fa%3Fq",
                b"dl=https%3A%2F%2Fshop.example%2Fp\r\ndr=alice%40mail.example+https%3A%2F%2Fshop.example%2Fa",
                &mut Tally::default(),
            )
            .unwrap();
            let q = parse_query(&q).unwrap();
            assert_eq!(get(&q, "dl"), Some("https://shop.example/p"));
            assert_eq!(get(&q, "dr"), Some("https://shop.example/a"));
            // The body's referrer has text before the URL: dropped.
            let body = String::from_utf8(body).unwrap();
            assert!(!body.contains("dr=") && !body.contains("alice"), "{body}");
        }
    }

    #[test]
    fn broken_input_is_refused() {
        let settings = Settings::default();
        let mut t = Tally::default();
        assert_eq!(
            scrub_with(&settings, "cid=%zz", b"", &mut t),
            Err(ScrubError::Encoding)
        );
        assert_eq!(
            scrub_with(&settings, "v=2", b"en=x&y=%", &mut t),
            Err(ScrubError::Encoding)
        );
        assert!(scrub_with(&settings, "v=2", &[0xff, 0xfe], &mut t).is_err());
    }
}
