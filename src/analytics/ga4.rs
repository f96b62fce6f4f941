//! GA4 `/g/collect`: shared parameters in the query, one event per body line; body keys override
//! query keys, so both are scrubbed with the same table, and what a rule judges by (the page a
//! referrer goes with, the visitor id a session id is derived with) is read per event. Each
//! name leaves once per set, and kept values with anything a server could split on (a control
//! character, `&`, `=`, `;`, `#`, a space) are percent-encoded.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::SystemTime;

use super::{
    host_of, parse_absolute, primary_language, same_site, same_site_referrer, AbsoluteUrl, Context,
    Outcome, ScrubError, Tally, MAX_PARAMS,
};

/// Custom-field prefixes: kept only when their full name is in `allow_event_params`.
pub const CUSTOM: &[&str] = &["ep.", "epn.", "up.", "upn."];

/// The parameter table (`*` entries describe families; `tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("v", Outcome::Kept, ""),
    ("tid", Outcome::Kept, "measurement id"),
    ("gtm", Outcome::Kept, ""),
    ("gcd", Outcome::Kept, "consent state"),
    ("npa", Outcome::Kept, ""),
    ("dma", Outcome::Kept, ""),
    ("dma_cps", Outcome::Kept, ""),
    ("are", Outcome::Kept, ""),
    ("frm", Outcome::Kept, ""),
    ("pscdl", Outcome::Kept, ""),
    ("seg", Outcome::Kept, "engaged-session flag"),
    ("dt", Outcome::Kept, "page title"),
    ("en", Outcome::Kept, "event name"),
    ("_ee", Outcome::Kept, ""),
    ("_et", Outcome::Kept, "engagement time since the last hit"),
    ("_c", Outcome::Kept, ""),
    ("_fv", Outcome::Kept, "first-visit flag"),
    ("_nsi", Outcome::Kept, "new-session flag"),
    ("_ss", Outcome::Kept, "session-start flag"),
    ("cu", Outcome::Kept, "currency"),
    (
        "cid",
        Outcome::Pseudonymised,
        "keyed, rotating; keeps GA's digits.digits shape",
    ),
    (
        "sid",
        Outcome::Pseudonymised,
        "session id: keyed hash of (cid, sid), rotating",
    ),
    (
        "_p",
        Outcome::Pseudonymised,
        "page-load id: keyed hash of (cid, _p), rotating",
    ),
    (
        "sct",
        Outcome::Generalised,
        "session count: always 1",
    ),
    (
        "dl",
        Outcome::Generalised,
        "no path parameters, no fragment, no query but allow_url_params",
    ),
    (
        "dr",
        Outcome::Generalised,
        "same-site with the page of every event it goes with: origin and path, no path parameters; external: dropped",
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
        "_s",
        Outcome::Dropped,
        "hit sequence: counts on through a page's life, across a rotation",
    ),
    (
        "tfd",
        Outcome::Dropped,
        "time since the page loaded: counts on across a rotation",
    ),
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
    (
        "*",
        Outcome::Dropped,
        "any other parameter, and a name already read in the same query or body line",
    ),
];

/// What links hits, within one rotation period and across periods (`tamis check` and the
/// transparency page print it).
pub const LINKAGE: &str = "within one rotation period, one browser's hits share one cid, one \
session's hits one sid and one page load's hits one _p (each a keyed hash of the browser's own \
value with that period's key); across periods nothing carries over: the key is new, so all three \
change, sct (a count of sessions) is always 1, and _s and tfd (which count on through a page's \
life) are dropped; flags (_fv, _ss, _nsi, seg), timings (_et) and what a hit says (page, title, \
event) go as sent";

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

/// The values other rules read (`tid`, `cid`, `dl`), decoded: each from the first pair with
/// its name, as the scrubbing pass keeps the first. Malformed pairs are skipped: the scrubbing
/// pass refuses them anyway.
fn shared_values(set: &str) -> [Option<Cow<'_, str>>; 3] {
    let mut found: [Option<Cow<'_, str>>; 3] = [None, None, None];
    for raw in split(set, b'&') {
        let (k, v) = split_once(raw, b'=').unwrap_or((raw, ""));
        let Ok(k) = key(k) else { continue };
        let Some(i) = ["tid", "cid", "dl"].iter().position(|n| *n == k) else {
            continue;
        };
        if found[i].is_none() {
            found[i] = check(v).ok().map(|()| decode(v));
        }
    }
    found
}

/// What one set's rules judge by, read as GA4 reads a batch: a body line's parameters override
/// the query's for its event.
struct Shared<'a> {
    /// The measurement id: part of every pseudonym and derived value.
    site: Cow<'a, str>,
    /// The visitor's own id, which session and page-load ids are derived with.
    cid: Cow<'a, str>,
    /// The pages (`dl`) a referrer in this set is reported with: the set's own and, for the
    /// query, every event's (each line inherits the query's referrer unless it has its own). A
    /// referrer is kept only when it is on the host of every one of them.
    pages: Vec<Option<Cow<'a, str>>>,
}

/// Appends the `&` between pairs of the query string or body line that starts at `start`.
fn separate(out: &mut String, start: usize) {
    if out.len() > start {
        out.push('&');
    }
}

/// Whether a byte goes out as it is: form-encoding leaves it (or `encodeURIComponent` does:
/// `~!'()`), and no server splits a line or a pair on it. Anything else (a control character
/// such as a bare CR, a space, `&`, `=`, `;`, `#`...) is percent-encoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!*'()".contains(&b)
}

/// Whether a raw value can go out as it came: [`unreserved`] bytes, `+` and (checked) `%XX`
/// escapes.
fn plain(raw: &str) -> bool {
    raw.bytes().all(|b| unreserved(b) || b == b'+' || b == b'%')
}

/// Appends a decoded parameter name: as it is when [`unreserved`] (every name in the table),
/// form-encoded otherwise.
fn push_name(out: &mut String, start: usize, name: &str) {
    separate(out, start);
    if name.bytes().all(unreserved) {
        out.push_str(name);
    } else {
        out.extend(form_urlencoded::byte_serialize(name.as_bytes()));
    }
    out.push('=');
}

/// Appends `name=value`, the value form-encoded.
fn push_encoded(out: &mut String, start: usize, name: &str, value: &str) {
    push_name(out, start, name);
    out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
}

/// Appends a kept `name=value`: the value as it came when [`plain`] (most are), otherwise
/// decoded and form-encoded again.
fn push_kept(out: &mut String, start: usize, name: &str, raw_value: &str) {
    if plain(raw_value) {
        push_name(out, start, name);
        out.push_str(raw_value);
    } else {
        push_encoded(out, start, name, &decode(raw_value));
    }
}

/// The names already read in one set: a repeated parameter leaves once, the first (the one
/// [`shared_values`] reads), so no server can read a value tamis did not judge. Short names
/// are packed into integers ([`pack`]), compared without touching memory.
#[derive(Default)]
struct Seen<'a> {
    short: Vec<u64>,
    long: Vec<Cow<'a, str>>,
}

impl<'a> Seen<'a> {
    /// Records `name`; whether it was new.
    fn first(&mut self, name: Cow<'a, str>) -> bool {
        match pack(&name) {
            Some(p) if self.short.contains(&p) => false,
            Some(p) => {
                self.short.push(p);
                true
            }
            None if self.long.contains(&name) => false,
            None => {
                self.long.push(name);
                true
            }
        }
    }
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
/// checking it as strictly as [`super::raw_pairs`] (same errors). Kept values are copied as
/// they came when they are [`plain`]; only the values a rule reads are decoded, and only those
/// it changes re-encoded. Names go out decoded, each once.
fn scrub_params(
    set: &str,
    shared: &Shared<'_>,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
    out: &mut String,
) -> Result<(), ScrubError> {
    let set = set.strip_prefix('?').unwrap_or(set);
    let start = out.len();
    let mut seen = Seen::default();
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
        // A clone of a borrowed name copies nothing; a decoded one is rare.
        if !seen.first(key.clone()) {
            tally.add(Outcome::Dropped);
            continue;
        }
        let value = || decode(raw_value);
        match key.as_ref() {
            "cid" => {
                let n = ctx
                    .pseudonyms
                    .pseudonym(ctx.route, &shared.site, &value(), now);
                tally.add(Outcome::Pseudonymised);
                push_name(out, start, "cid");
                // Digits and a dot: nothing to encode.
                let _ = write!(out, "{n}.{}", ctx.pseudonyms.period_start(now));
            }
            // Kept across hits by the browser, they would link two periods' pseudonyms: derived
            // from the visitor's id with the period's key instead (LINKAGE).
            name @ ("sid" | "_p") => {
                let n = ctx.pseudonyms.derived(
                    ctx.route,
                    &shared.site,
                    name,
                    &shared.cid,
                    &value(),
                    now,
                );
                tally.add(Outcome::Pseudonymised);
                push_name(out, start, name);
                let _ = write!(out, "{n}");
            }
            "sct" => {
                tally.add(Outcome::Generalised);
                push_name(out, start, "sct");
                out.push('1');
            }
            "dl" => match page_url(&value(), &ctx.settings.allow_url_params) {
                Some(url) => {
                    tally.add(Outcome::Generalised);
                    push_encoded(out, start, "dl", &url);
                }
                None => tally.add(Outcome::Dropped),
            },
            "dr" => {
                let mut hosts = shared.pages.iter().map(|p| p.as_deref().and_then(host_of));
                let v = value();
                let kept = referrer(&v, hosts.next().flatten()).filter(|r| {
                    let host = host_of(r);
                    hosts.all(|h| matches!((host, h), (Some(a), Some(b)) if same_site(a, b)))
                });
                match kept {
                    Some(r) => {
                        tally.add(Outcome::Generalised);
                        push_encoded(out, start, "dr", &r);
                    }
                    None => tally.add(Outcome::Dropped),
                }
            }
            "ul" => match primary_language(&value()) {
                Some(lang) => {
                    tally.add(Outcome::Generalised);
                    push_encoded(out, start, "ul", &lang);
                }
                None => tally.add(Outcome::Dropped),
            },
            name if kept(name)
                || (CUSTOM.iter().any(|c| name.starts_with(c))
                    && ctx.settings.allow_event_params.iter().any(|a| a == name)) =>
            {
                tally.add(Outcome::Kept);
                push_kept(out, start, name, raw_value);
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
    let query = query.strip_prefix('?').unwrap_or(query);
    let body = std::str::from_utf8(body).map_err(|_| ScrubError::Body("not UTF-8".into()))?;
    let lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let [site, cid, page] = shared_values(query);
    let (site, cid) = (site.unwrap_or_default(), cid.unwrap_or_default());
    // Each event's own values, or the query's.
    let events: Vec<Shared<'_>> = lines
        .iter()
        .map(|line| {
            let [l_site, l_cid, l_page] = shared_values(line);
            Shared {
                site: l_site.unwrap_or_else(|| site.clone()),
                cid: l_cid.unwrap_or_else(|| cid.clone()),
                pages: vec![l_page.or_else(|| page.clone())],
            }
        })
        .collect();
    let mut pages = vec![page];
    pages.extend(events.iter().flat_map(|e| e.pages.iter().cloned()));
    let query_shared = Shared { site, cid, pages };
    let mut out_query = String::with_capacity(query.len());
    scrub_params(query, &query_shared, ctx, now, tally, &mut out_query)?;
    let mut out_body = String::with_capacity(body.len());
    for (line, event) in lines.iter().zip(&events) {
        let end = out_body.len();
        if end > 0 {
            out_body.push_str("\r\n");
        }
        let line_start = out_body.len();
        scrub_params(line, event, ctx, now, tally, &mut out_body)?;
        // A line with nothing kept is no event: no blank line is left for it.
        if out_body.len() == line_start {
            out_body.truncate(end);
        }
    }
    Ok((out_query, out_body.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_query, Pseudonymizer, Settings};
    use super::*;
    use std::time::Duration;

    fn fixture() -> (String, String) {
        let raw = include_str!("../../tests/fixtures/ga4-collect-batch.http");
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
            visitor: &crate::analytics::visitor::Visitor::NONE,
            matomo_token: None,
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
        // Session and page-load ids are derived, not passed on; the counters say nothing.
        for (name, sent) in [("sid", "1732439000"), ("_p", "1732439101123")] {
            let v = get(&q, name).unwrap();
            assert!(v.parse::<u32>().is_ok() && v != sent, "{name}={v}");
        }
        assert_eq!(get(&q, "sct"), Some("1"));
        assert_eq!((get(&q, "_s"), get(&q, "tfd")), (None, None));
        assert!(
            tally.get(Outcome::Dropped) >= 17 && tally.get(Outcome::Pseudonymised) == 3,
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
    fn ga4_session_ids_do_not_link_two_rotation_periods() {
        let settings = Settings::default();
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings: &settings,
            pseudonyms: &p,
            route: "ga",
            visitor: &crate::analytics::visitor::Visitor::NONE,
            matomo_token: None,
        };
        // A page left open across midnight (the rotation) keeps sending hits.
        let hit = "v=2&tid=G-1&cid=1823456789.1732439000&sid=1732439000&sct=47&_p=1732439101123\
                   &_s=12&tfd=3600000&seg=1&_et=40&en=user_engagement";
        let at = |now: SystemTime, hit: &str| {
            let (q, _) = scrub(hit, b"", &ctx, now, &mut Tally::default()).unwrap();
            parse_query(&q).unwrap()
        };
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (a, later) = (at(day, hit), at(day + Duration::from_secs(60), hit));
        let next = at(day + Duration::from_secs(86400), hit);
        // Within a period: one visitor, one session, one page load, as GA4 needs to stitch them.
        for k in ["cid", "sid", "_p"] {
            assert!(get(&a, k).is_some(), "{k}");
            assert_eq!(get(&a, k), get(&later, k), "{k}");
        }
        // The visitor's own values never leave: not the session start, not the page load id.
        assert_ne!(get(&a, "sid"), Some("1732439000"));
        assert_ne!(get(&a, "_p"), Some("1732439101123"));
        // Another session of the same visitor is another session.
        let other = at(day, &hit.replace("sid=1732439000", "sid=1732442600"));
        assert_ne!(get(&a, "sid"), get(&other, "sid"));
        // Counters that run across sessions or across a page's life say nothing.
        assert_eq!(get(&a, "sct"), Some("1"));
        assert_eq!(get(&a, "_s"), None);
        assert_eq!(get(&a, "tfd"), None);
        // Across the rotation, the two hits share only what every such hit carries.
        for (k, v) in &a {
            if get(&next, k) == Some(v.as_str()) {
                assert!(
                    ["v", "tid", "sct", "seg", "_et", "en"].contains(&k.as_str()),
                    "{k}={v} links two periods"
                );
            }
        }
    }

    #[test]
    fn ga4_kept_values_cannot_carry_line_breaks_or_separators() {
        let settings = Settings {
            allow_event_params: vec!["ep.plan".into(), "ep.a+b".into()],
            allow_url_params: vec![],
        };
        // A bare CR inside a line, and separators and controls a server could split on; a name
        // that decodes to a `+`.
        let body = b"en=page_view&dt=Hi\ruid=42&ep.plan=a;b c=d#e\x0bf&ep.a%2Bb=1\r\nen=x\r\x00y";
        let (q, out) = scrub_with(&settings, "v=2&dt=a=b", body, &mut Tally::default()).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        for part in lines.iter().chain([&q.as_str()]) {
            assert!(
                part.bytes()
                    .all(|b| b.is_ascii_graphic() && !b";#".contains(&b)),
                "{part:?}"
            );
            for pair in part.split('&') {
                assert_eq!(pair.matches('=').count(), 1, "{pair:?} in {part:?}");
            }
        }
        // Read back, each value is what was sent.
        let first = parse_query(lines[0]).unwrap();
        assert_eq!(get(&first, "dt"), Some("Hi\ruid=42"));
        assert_eq!(get(&first, "ep.plan"), Some("a;b c=d#e\u{b}f"));
        assert_eq!(get(&first, "ep.a+b"), Some("1"));
        assert_eq!(get(&parse_query(lines[1]).unwrap(), "en"), Some("x\r\0y"));
        assert_eq!(get(&parse_query(&q).unwrap(), "dt"), Some("a=b"));
    }

    #[test]
    fn ga4_a_repeated_parameter_leaves_once() {
        let settings = Settings::default();
        let (q, body) = scrub_with(
            &settings,
            "v=2&dl=https%3A%2F%2Fshop.example%2Fa&en=x&d%6C=https%3A%2F%2Fevil.example%2F&en=y\
             &dr=https%3A%2F%2Fshop.example%2Fr&dt=t&dt=u",
            b"en=a&en=b&dl=https%3A%2F%2Fshop.example%2Fb&dl=https%3A%2F%2Fevil.example%2F",
            &mut Tally::default(),
        )
        .unwrap();
        let q = parse_query(&q).unwrap();
        for name in ["dl", "en", "dt", "dr"] {
            assert_eq!(
                q.iter().filter(|(k, _)| k == name).count(),
                1,
                "{name}: {q:?}"
            );
        }
        // The first one, whose host the referrer was judged against.
        assert_eq!(get(&q, "dl"), Some("https://shop.example/a"));
        assert_eq!(get(&q, "dr"), Some("https://shop.example/r"));
        let line = parse_query(std::str::from_utf8(&body).unwrap()).unwrap();
        assert_eq!(
            line,
            [
                ("en".into(), "a".into()),
                ("dl".into(), "https://shop.example/b".into())
            ]
        );
    }

    #[test]
    fn ga4_referrers_are_judged_against_the_page_each_event_reports() {
        let settings = Settings::default();
        let shop = "https%3A%2F%2Fshop.example%2F";
        let evil = "https%3A%2F%2Fevil.example%2F";
        // The query's referrer is on the query's page, but an event's own page is elsewhere:
        // that event would carry an external referrer.
        let (q, _) = scrub_with(
            &settings,
            &format!("v=2&dl={evil}&dr={evil}secret"),
            format!("en=page_view&dl={shop}").as_bytes(),
            &mut Tally::default(),
        )
        .unwrap();
        assert_eq!(get(&parse_query(&q).unwrap(), "dr"), None, "{q}");
        // An event without a page of its own reports the query's: its referrer is judged there.
        let (_, body) = scrub_with(
            &settings,
            &format!("v=2&dl={shop}"),
            format!("en=page_view&dr={shop}from").as_bytes(),
            &mut Tally::default(),
        )
        .unwrap();
        let line = parse_query(std::str::from_utf8(&body).unwrap()).unwrap();
        assert_eq!(get(&line, "dr"), Some("https://shop.example/from"));
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
