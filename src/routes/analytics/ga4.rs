//! GA4 `/g/collect`: shared parameters in the query, one event per body line; body keys override
//! query keys, so both are scrubbed with the same table.

use std::time::SystemTime;

use super::{
    host_of, primary_language, same_site_referrer, scrub_page_url, Context, Outcome, ScrubError,
    Tally,
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
        "no fragment, no query but allow_url_params",
    ),
    (
        "dr",
        Outcome::Generalised,
        "same-site: origin and path; external: dropped",
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

fn kept(name: &str) -> bool {
    static KEPT: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| super::kept_index(RULES))
        .binary_search(&name)
        .is_ok()
}

/// Scrubs one set of parameters (the query, or one body line) into `out`. Kept pairs are
/// copied as they came; only the values a rule changes are decoded and re-encoded.
fn scrub_params(
    params: &[super::Pair<'_>],
    site: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
    out: &mut String,
) {
    // The page's own host tells same-site referrers from external ones.
    let site_host = params
        .iter()
        .find(|p| p.key == "dl")
        .and_then(|p| host_of(&p.value).map(str::to_owned));
    for p in params {
        let raw_key = p.raw.split('=').next().unwrap_or("");
        let (outcome, value) = match p.key.as_ref() {
            "cid" => {
                let n = ctx.pseudonyms.pseudonym(ctx.route, site, &p.value, now);
                (
                    Outcome::Pseudonymised,
                    Some(format!("{n}.{}", ctx.pseudonyms.period_start(now))),
                )
            }
            "dl" => (
                Outcome::Generalised,
                scrub_page_url(&p.value, &ctx.settings.allow_url_params),
            ),
            "dr" => (
                Outcome::Generalised,
                same_site_referrer(&p.value, site_host.as_deref()),
            ),
            "ul" => (Outcome::Generalised, primary_language(&p.value)),
            name if kept(name) => {
                tally.add(Outcome::Kept);
                super::push_raw(out, p.raw);
                continue;
            }
            name if CUSTOM.iter().any(|c| name.starts_with(c))
                && ctx.settings.allow_event_params.iter().any(|a| a == name) =>
            {
                tally.add(Outcome::Kept);
                super::push_raw(out, p.raw);
                continue;
            }
            _ => (Outcome::Dropped, None),
        };
        match value {
            Some(v) => {
                tally.add(outcome);
                super::push_pair(out, raw_key, &v);
            }
            None => tally.add(Outcome::Dropped),
        }
    }
}

/// Scrubs a `/g/collect` request: its query and each body line. Returns the new query and body.
pub fn scrub(
    query: &str,
    body: &[u8],
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<(String, Vec<u8>), ScrubError> {
    let shared = super::raw_pairs(query)?;
    let site = shared
        .iter()
        .find(|p| p.key == "tid")
        .map(|p| p.value.as_ref())
        .unwrap_or("");
    let body = std::str::from_utf8(body).map_err(|_| ScrubError::Body("not UTF-8".into()))?;
    let mut out_body = String::with_capacity(body.len());
    for line in body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.trim().is_empty() {
            continue;
        }
        let event = super::raw_pairs(line)?;
        if !out_body.is_empty() {
            out_body.push_str("\r\n");
        }
        let mut line_out = String::with_capacity(line.len());
        scrub_params(&event, site, ctx, now, tally, &mut line_out);
        out_body.push_str(&line_out);
    }
    let mut out_query = String::with_capacity(query.len());
    scrub_params(&shared, site, ctx, now, tally, &mut out_query);
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

    fn run(settings: &Settings) -> (Params, Vec<Params>, Tally) {
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings,
            pseudonyms: &p,
            route: "ga",
        };
        let (q, body) = fixture();
        let mut tally = Tally::default();
        let (q, b) = scrub(&q, body.as_bytes(), &ctx, SystemTime::now(), &mut tally).unwrap();
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
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings: &settings,
            pseudonyms: &p,
            route: "ga",
        };
        let mut t = Tally::default();
        let (q, _) = scrub(
            "dl=https%3A%2F%2Fshop.example%2Fb&dr=https%3A%2F%2Fshop.example%2Fa%3Fq%3D1",
            b"",
            &ctx,
            SystemTime::now(),
            &mut t,
        )
        .unwrap();
        assert_eq!(
            get(&parse_query(&q).unwrap(), "dr"),
            Some("https://shop.example/a")
        );
    }

    #[test]
    fn broken_input_is_refused() {
        let settings = Settings::default();
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings: &settings,
            pseudonyms: &p,
            route: "ga",
        };
        let mut t = Tally::default();
        assert_eq!(
            scrub("cid=%zz", b"", &ctx, SystemTime::now(), &mut t),
            Err(ScrubError::Encoding)
        );
        assert_eq!(
            scrub("v=2", b"en=x&y=%", &ctx, SystemTime::now(), &mut t),
            Err(ScrubError::Encoding)
        );
        assert!(scrub("v=2", &[0xff, 0xfe], &ctx, SystemTime::now(), &mut t).is_err());
    }
}
