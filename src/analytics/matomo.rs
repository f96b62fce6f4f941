//! Matomo `matomo.php` / `piwik.php`: GET, form POST, and bulk JSON (`{"requests": ["?…"]}`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

use super::{
    generalise_user_agent, host_of, parse_query, primary_language, same_site_referrer,
    scrub_page_url, to_query, Context, Outcome, ScrubError, Tally,
};
use crate::secret::Secret;

/// The parameter table (`tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("idsite", Outcome::Kept, "site id"),
    ("rec", Outcome::Kept, ""),
    ("r", Outcome::Kept, "cache buster"),
    ("apiv", Outcome::Kept, ""),
    ("action_name", Outcome::Kept, "page title"),
    ("e_c", Outcome::Kept, "event category"),
    ("e_a", Outcome::Kept, "event action"),
    ("e_n", Outcome::Kept, "event name"),
    ("e_v", Outcome::Kept, "event value"),
    ("search", Outcome::Kept, "site search"),
    ("search_cat", Outcome::Kept, ""),
    ("search_count", Outcome::Kept, ""),
    ("idgoal", Outcome::Kept, ""),
    ("revenue", Outcome::Kept, ""),
    ("ec_id", Outcome::Kept, "order id"),
    ("ec_items", Outcome::Kept, ""),
    ("ec_st", Outcome::Kept, ""),
    ("ec_tx", Outcome::Kept, ""),
    ("ec_sh", Outcome::Kept, ""),
    ("ec_dt", Outcome::Kept, ""),
    ("c_n", Outcome::Kept, "content name"),
    ("c_p", Outcome::Kept, "content piece"),
    ("c_t", Outcome::Kept, "content target"),
    ("c_i", Outcome::Kept, "content interaction"),
    ("ca", Outcome::Kept, ""),
    ("ping", Outcome::Kept, ""),
    ("send_image", Outcome::Kept, ""),
    ("gt_ms", Outcome::Kept, "generation time"),
    (
        "pf_net, pf_srv, pf_tfr, pf_dm1, pf_dm2, pf_onl",
        Outcome::Kept,
        "performance timings",
    ),
    ("_id", Outcome::Pseudonymised, "keyed 16-hex, rotating"),
    ("cid", Outcome::Pseudonymised, "keyed 16-hex, rotating"),
    (
        "pv_id",
        Outcome::Pseudonymised,
        "page view id: keyed hash of (_id, pv_id), rotating",
    ),
    (
        "url, link, download",
        Outcome::Generalised,
        "page, outlink and download URLs: no path parameters, no fragment, no query but allow_url_params",
    ),
    (
        "urlref, _ref",
        Outcome::Generalised,
        "same-site: origin and path, no path parameters; external: dropped",
    ),
    (
        "ua",
        Outcome::Generalised,
        "browser family and major version",
    ),
    ("lang", Outcome::Generalised, "primary language only"),
    (
        "_cvar, cvar, dimensionN",
        Outcome::Dropped,
        "unless the name is in allow_event_params",
    ),
    ("uid", Outcome::Dropped, "user id"),
    (
        "cip, token_auth, cdt, country, region, city, lat, long",
        Outcome::Dropped,
        "never accepted from a browser",
    ),
    (
        "_idts, _viewts, _ects, _refts, _idvc, _idn",
        Outcome::Dropped,
        "visit history",
    ),
    ("h, m, s", Outcome::Dropped, "visitor's local time"),
    ("res, uadata", Outcome::Dropped, "screen, client hints"),
    (
        "fla, java, dir, qt, realp, pdf, wma, ag, cookie, gears",
        Outcome::Dropped,
        "plugin flags",
    ),
    (
        "*",
        Outcome::Dropped,
        "any other parameter, and every value of a name but the one PHP reads (the last)",
    ),
];

/// What links requests, within one rotation period and across periods (`tamis check` and the
/// transparency page print it).
pub const LINKAGE: &str = "within one rotation period, one browser's requests share one _id (or \
cid) and one page view's requests one pv_id (each a keyed hash of the browser's own value with \
that period's key); across periods nothing carries over: the key is new, so both change, and the \
visit counters and timestamps (_idvc, _idn, _idts, _viewts, _refts) are dropped";

const PERF: &[&str] = &["pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2", "pf_onl"];

fn kept(name: &str) -> bool {
    PERF.contains(&name)
        || RULES
            .iter()
            .any(|(n, o, _)| *o == Outcome::Kept && *n == name)
}

/// `{"1":["name","value"], …}`: only entries that pair an allowlisted name with a scalar value
/// survive (an object or array there could carry anything under an allowed name). A repeated
/// index keeps its last entry, as PHP's `json_decode` reads it.
fn custom_variables(json: &str, allow: &[String]) -> Option<String> {
    use serde_json::Value;
    let Value::Object(map) = serde_json::from_str(json).ok()? else {
        return None;
    };
    let kept: serde_json::Map<String, Value> = map
        .into_iter()
        .filter(|(_, v)| match v.as_array().map(Vec::as_slice) {
            Some([Value::String(name), value]) => {
                allow.iter().any(|a| a == name) && !value.is_object() && !value.is_array()
            }
            _ => false,
        })
        .collect();
    (!kept.is_empty()).then(|| Value::Object(kept).to_string())
}

/// A parameter's value as PHP reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Php {
    /// `name=value`.
    Scalar(String),
    /// `name[]=…` or `name[key]=…`: an array, which no rule keeps.
    Array,
}

/// The name PHP files a decoded parameter name under, and whether brackets make its value an
/// array (`a[]`, `a[k]`); `None` when PHP ignores the parameter (no name before a bracket).
/// As `php_register_variable_ex` reads it: the name ends at a NUL, leading spaces are skipped,
/// and spaces, dots and an unclosed `[` become `_` (`e.c`, `e c` and `e[c` are all `e_c`).
fn php_name(raw: &str) -> Option<(Cow<'_, str>, bool)> {
    let name = raw.split('\0').next().unwrap_or("").trim_start_matches(' ');
    let (name, nested) = match name.find('[') {
        Some(0) => return None,
        Some(i) if name[i + 1..].contains(']') => (&name[..i], true),
        _ => (name, false),
    };
    if name.is_empty() {
        return None;
    }
    let name = if name.contains([' ', '.', '[']) {
        Cow::Owned(name.replace([' ', '.', '['], "_"))
    } else {
        Cow::Borrowed(name)
    };
    Some((name, nested))
}

/// Parameters as PHP reads a query string or form body into `$_GET`/`$_POST` (and as
/// `parse_str` reads Matomo's bulk requests): one entry per name, where the name first
/// appeared, holding the value it last had. A bracketed name makes an array of whatever came
/// before; a plain one after it makes a string again. Each pair PHP overwrites or ignores is
/// counted as dropped: what leaves is what Matomo would have read, judged as Matomo reads it.
fn php_read(pairs: Vec<(String, String)>, tally: &mut Tally) -> Vec<(String, Php)> {
    let mut out: Vec<(String, Php)> = Vec::with_capacity(pairs.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let Some((name, nested)) = php_name(&k) else {
            tally.add(Outcome::Dropped);
            continue;
        };
        let value = if nested { Php::Array } else { Php::Scalar(v) };
        match index.get(name.as_ref()) {
            Some(&i) => {
                tally.add(Outcome::Dropped);
                out[i].1 = value;
            }
            None => {
                index.insert(name.clone().into_owned(), out.len());
                out.push((name.into_owned(), value));
            }
        }
    }
    out
}

/// The scalar value PHP reads for `name` from the first of `sets` that has the name.
fn php_scalar<'a>(sets: &[&'a [(String, Php)]], name: &str) -> Option<&'a str> {
    let (_, value) = sets
        .iter()
        .find_map(|set| set.iter().find(|(n, _)| n == name))?;
    match value {
        Php::Scalar(v) => Some(v),
        Php::Array => None,
    }
}

/// What the rules of one request judge by, read as Matomo reads it: the site id (part of every
/// pseudonym), the visitor's own id (which page view ids are derived with) and the page URL's
/// host (which tells same-site referrers from external ones).
struct Page {
    site: String,
    visitor: String,
    host: Option<String>,
}

impl Page {
    /// The page of a request made of `sets` (the first set that has a name wins, as in PHP's
    /// `$_GET + $_POST`).
    fn of(sets: &[&[(String, Php)]]) -> Page {
        Page {
            site: php_scalar(sets, "idsite").unwrap_or_default().to_owned(),
            visitor: php_scalar(sets, "_id")
                .or_else(|| php_scalar(sets, "cid"))
                .unwrap_or_default()
                .to_owned(),
            host: php_scalar(sets, "url").and_then(host_of).map(str::to_owned),
        }
    }
}

/// `n` as six letters and digits, the shape of the page view ids Matomo's tracker makes.
fn page_view_id(n: u32) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = u64::from(n);
    let mut out = [0u8; 6];
    for c in out.iter_mut().rev() {
        *c = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Scrubs one set of parameters as PHP read it, for the request's `page`.
fn scrub_params(
    params: Vec<(String, Php)>,
    page: &Page,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Vec<(String, String)> {
    let allow = &ctx.settings.allow_event_params;
    let mut out = Vec::with_capacity(params.len());
    for (k, v) in params {
        let Php::Scalar(v) = v else {
            tally.add(Outcome::Dropped);
            continue;
        };
        let (outcome, value) = match k.as_str() {
            "_id" | "cid" => {
                let p = ctx.pseudonyms.pseudonym(ctx.route, &page.site, &v, now);
                (
                    Outcome::Pseudonymised,
                    Some(format!("{:016x}", u64::from(p))),
                )
            }
            // Kept by the page across requests, it would link two periods' pseudonyms: derived
            // from the visitor's id with the period's key instead (LINKAGE).
            "pv_id" => {
                let n =
                    ctx.pseudonyms
                        .derived(ctx.route, &page.site, "pv_id", &page.visitor, &v, now);
                (Outcome::Pseudonymised, Some(page_view_id(n)))
            }
            "url" | "link" | "download" => (
                Outcome::Generalised,
                scrub_page_url(&v, &ctx.settings.allow_url_params),
            ),
            "urlref" | "_ref" => (
                Outcome::Generalised,
                same_site_referrer(&v, page.host.as_deref()),
            ),
            "ua" => (Outcome::Generalised, Some(generalise_user_agent(&v))),
            "lang" => (Outcome::Generalised, primary_language(&v)),
            "_cvar" | "cvar" => (Outcome::Kept, custom_variables(&v, allow)),
            name if name.starts_with("dimension")
                && name[9..].bytes().all(|b| b.is_ascii_digit())
                && name.len() > 9 =>
            {
                (Outcome::Kept, allow.iter().any(|a| a == name).then_some(v))
            }
            name if kept(name) => (Outcome::Kept, Some(v)),
            _ => (Outcome::Dropped, None),
        };
        match value {
            Some(v) => {
                tally.add(outcome);
                out.push((k, v));
            }
            None => tally.add(Outcome::Dropped),
        }
    }
    out
}

/// Scrubs a query string (GET, or the query of a POST) on its own.
pub fn scrub_query(
    query: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<String, ScrubError> {
    Ok(to_query(&scrub_request(query, ctx, now, tally)?))
}

/// One tracking request's scrubbed parameters, with what tamis computed of the visitor
/// (`cip`, `country`, `region`) when it has any parameter at all and the operator's token lets
/// Matomo accept them.
fn scrub_request(
    query: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<Vec<(String, String)>, ScrubError> {
    let mut out = scrub_alone(query, ctx, now, tally)?;
    if !out.is_empty() && token(ctx).is_some() {
        out.extend(super::visitor::matomo_params(ctx.visitor));
    }
    Ok(out)
}

/// A query's parameters scrubbed on their own, judged by the page they name.
fn scrub_alone(
    query: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<Vec<(String, String)>, ScrubError> {
    let params = php_read(parse_query(query)?, tally);
    let page = Page::of(&[&params]);
    Ok(scrub_params(params, &page, ctx, now, tally))
}

/// The operator's token, when there is something of the visitor that needs it.
fn token<'a>(ctx: &Context<'a>) -> Option<&'a Secret> {
    let v = ctx.visitor;
    let any = v.cip.is_some() || v.location.country.is_some();
    ctx.matomo_token.filter(|_| any)
}

/// The token as its value is written. A real one is letters and digits (checked at load),
/// which form encoding leaves as they are; the probe's placeholder is written as it is, so the
/// request it shows reads `token_auth=<operator token_auth>` where the token would be.
fn token_text(t: &Secret) -> String {
    if t.is_placeholder() {
        String::from_utf8_lossy(t.expose()).into_owned()
    } else {
        form_urlencoded::byte_serialize(t.expose()).collect()
    }
}

/// A form with the token added last.
fn with_token(form: String, t: &Secret) -> String {
    let sep = if form.is_empty() { "" } else { "&" };
    format!("{form}{sep}token_auth={}", token_text(t))
}

/// Scrubs a tracking request: its query, and its body if any. A form body is read as Matomo
/// reads the request, `$_GET + $_POST`: a name the query has hides the body's (dropped), and
/// the site and page every rule judges by come from that union. A bulk JSON body holds
/// requests of its own (see [`scrub_body`]).
pub fn scrub(
    query: &str,
    body: &[u8],
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<(String, Vec<u8>), ScrubError> {
    let text = std::str::from_utf8(body).map_err(|_| ScrubError::Body("not UTF-8".into()))?;
    if body.is_empty() {
        let params = scrub_request(query, ctx, now, tally)?;
        // The token never goes in a URL (access logs keep URLs): the request becomes the
        // equivalent form body, which the caller sends as a POST.
        if let (Some(t), false) = (token(ctx), params.is_empty()) {
            return Ok((String::new(), with_token(to_query(&params), t).into_bytes()));
        }
        return Ok((to_query(&params), Vec::new()));
    }
    if is_bulk(text) {
        // The bulk body's requests carry what the visitor gets; the URL's own query does not
        // (it has no request of its own).
        let q = to_query(&scrub_alone(query, ctx, now, tally)?);
        return Ok((q, scrub_body(body, ctx, now, tally)?));
    }
    let get = php_read(parse_query(query)?, tally);
    let mut post = php_read(parse_query(text.trim())?, tally);
    // PHP's array union keeps the left side's entry for a name both sides have.
    post.retain(|(name, _)| {
        let hidden = get.iter().any(|(n, _)| n == name);
        if hidden {
            tally.add(Outcome::Dropped);
        }
        !hidden
    });
    let page = Page::of(&[&get, &post]);
    let q = to_query(&scrub_params(get, &page, ctx, now, tally));
    let mut post = scrub_params(post, &page, ctx, now, tally);
    if let Some(t) = token(ctx) {
        post.extend(super::visitor::matomo_params(ctx.visitor));
        return Ok((q, with_token(to_query(&post), t).into_bytes()));
    }
    Ok((q, to_query(&post).into_bytes()))
}

/// Whether a POST body is bulk JSON rather than a form.
pub fn is_bulk(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// The bulk answer's fields the browser gets, and their types: `status` only as `success` or
/// `error`; `tracked`, `invalid` and each of `invalid_indices` only as integers no larger than
/// a bulk request's count of requests (so no value can carry more than that number).
pub const ANSWER_KEPT: &[&str] = &["status", "tracked", "invalid", "invalid_indices"];

/// The browser's answer to a bulk request: the counts Matomo returns (see [`ANSWER_KEPT`]),
/// typed and serialised again by tamis; anything else the upstream wrote (a message, an echo
/// of the request with its `token_auth` and `cip`) never passes. `None` (unreadable) or
/// anything unparseable becomes `{}`.
pub fn bulk_answer(body: Option<&[u8]>) -> Vec<u8> {
    use serde_json::Value;
    let count = |v: &Value| {
        v.as_u64()
            .filter(|&n| n <= super::MAX_PARAMS as u64)
            .map(Value::from)
    };
    let mut out = serde_json::Map::new();
    if let Some(Ok(Value::Object(o))) = body.map(serde_json::from_slice::<Value>) {
        for (k, v) in &o {
            let kept = match k.as_str() {
                "status" => v
                    .as_str()
                    .filter(|s| ["success", "error"].contains(s))
                    .map(Value::from),
                "tracked" | "invalid" => count(v),
                "invalid_indices" => v
                    .as_array()
                    .filter(|a| a.len() <= super::MAX_PARAMS)
                    .and_then(|a| a.iter().map(count).collect::<Option<Vec<_>>>())
                    .map(Value::Array),
                _ => None,
            };
            if let Some(v) = kept {
                out.insert(k.clone(), v);
            }
        }
    }
    Value::Object(out).to_string().into_bytes()
}

/// Scrubs a POST body: bulk JSON (`{"requests": [...]}`, everything else in it dropped, the
/// browser's `token_auth` first of all) or a form body.
pub fn scrub_body(
    body: &[u8],
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<Vec<u8>, ScrubError> {
    let text = std::str::from_utf8(body).map_err(|_| ScrubError::Body("not UTF-8".into()))?;
    if !is_bulk(text) {
        return Ok(scrub_query(text.trim(), ctx, now, tally)?.into_bytes());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ScrubError::Body(e.to_string()))?;
    let requests = value
        .get("requests")
        .and_then(|r| r.as_array())
        .ok_or_else(|| ScrubError::Body("bulk JSON without a \"requests\" array".into()))?;
    if requests.len() > super::MAX_PARAMS {
        return Err(ScrubError::TooManyParameters);
    }
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let q = r
            .as_str()
            .ok_or_else(|| ScrubError::Body("a bulk request is not a string".into()))?;
        out.push(serde_json::Value::String(format!(
            "?{}",
            scrub_query(q, ctx, now, tally)?
        )));
    }
    if value.as_object().is_some_and(|o| o.len() > 1) {
        tally.add(Outcome::Dropped);
    }
    let mut bulk = serde_json::json!({ "requests": out });
    if let (Some(t), Some(o)) = (token(ctx), bulk.as_object_mut()) {
        o.insert(
            "token_auth".to_owned(),
            serde_json::Value::String(token_text(t)),
        );
    }
    Ok(bulk.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::{Pseudonymizer, Settings};
    use super::*;
    use std::time::Duration;

    fn ctx_with<'a>(settings: &'a Settings, p: &'a Pseudonymizer) -> Context<'a> {
        Context {
            settings,
            pseudonyms: p,
            route: "matomo",
            visitor: &crate::analytics::visitor::Visitor::NONE,
            matomo_token: None,
        }
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_get_fixture_is_scrubbed_parameter_by_parameter() {
        let raw = include_str!("../../tests/fixtures/matomo-track-get.txt");
        let query = raw
            .split_whitespace()
            .nth(1)
            .unwrap()
            .split_once('?')
            .unwrap()
            .1;
        let settings = Settings {
            allow_event_params: vec!["Plan".into(), "dimension2".into()],
            allow_url_params: vec![],
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let mut t = Tally::default();
        let out = parse_query(
            &scrub_query(query, &ctx_with(&settings, &p), SystemTime::now(), &mut t).unwrap(),
        )
        .unwrap();
        assert_eq!(get(&out, "idsite"), Some("3"));
        assert_eq!(get(&out, "url"), Some("https://shop.example/account"));
        assert_eq!(get(&out, "action_name"), Some("Account"));
        assert_eq!(get(&out, "lang"), Some("fr"));
        let id = get(&out, "_id").unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "4f2a9c81be03d7e6");
        for gone in [
            "urlref", "uid", "cip", "_idts", "_viewts", "_refts", "_idvc", "_idn", "h", "m", "s",
            "res", "uadata", "cookie", "pdf", "java", "_cvar",
        ] {
            assert_eq!(get(&out, gone), None, "{gone}");
        }
    }

    #[test]
    fn custom_variables_and_dimensions_only_when_allowlisted() {
        let settings = Settings {
            allow_event_params: vec!["Plan".into(), "dimension2".into()],
            allow_url_params: vec![],
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let mut t = Tally::default();
        let q = "_cvar=%7B%221%22%3A%5B%22User%20email%22%2C%22a%40b.c%22%5D%2C%222%22%3A%5B%22Plan%22%2C%22pro%22%5D%7D&dimension1=secret&dimension2=blue&ua=Mozilla%2F5.0%20(Windows%20NT%2010.0)%20Chrome%2F131.0.1.2%20Safari%2F537.36";
        let out = parse_query(
            &scrub_query(q, &ctx_with(&settings, &p), SystemTime::now(), &mut t).unwrap(),
        )
        .unwrap();
        assert_eq!(get(&out, "_cvar"), Some(r#"{"2":["Plan","pro"]}"#));
        assert_eq!(get(&out, "dimension1"), None);
        assert_eq!(get(&out, "dimension2"), Some("blue"));
        assert!(
            get(&out, "ua").unwrap().contains("Chrome/131.0.0.0")
                && !get(&out, "ua").unwrap().contains("Windows")
        );
    }

    /// `query` scrubbed with `allow_event_params`, read back.
    fn scrubbed(allow: &[&str], query: &str) -> Vec<(String, String)> {
        let settings = Settings {
            allow_event_params: allow.iter().map(|s| s.to_string()).collect(),
            allow_url_params: vec![],
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let mut t = Tally::default();
        parse_query(
            &scrub_query(query, &ctx_with(&settings, &p), SystemTime::now(), &mut t).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn repeated_parameters_are_read_as_php_reads_them() {
        let shop = "https%3A%2F%2Fshop.example%2F";
        let evil = "https%3A%2F%2Fevil.example%2F";
        // PHP keeps the last `url`: the referrer is judged against that page, not the first.
        let out = scrubbed(
            &[],
            &format!("idsite=1&url={evil}&urlref={evil}secret&url={shop}a"),
        );
        assert_eq!(
            out,
            [
                ("idsite".to_owned(), "1".to_owned()),
                ("url".to_owned(), "https://shop.example/a".to_owned())
            ]
        );
        // One value per name leaves: the one PHP would read.
        let out = scrubbed(
            &["dimension2"],
            "idsite=1&idsite=2&e_c=a&dimension2=x&e_c=b&dimension2=y",
        );
        assert_eq!(
            out,
            [
                ("idsite".to_owned(), "2".to_owned()),
                ("e_c".to_owned(), "b".to_owned()),
                ("dimension2".to_owned(), "y".to_owned())
            ]
        );
        // Brackets make an array of the name, whatever came before; a plain value after them
        // makes it a string again.
        for q in [
            format!("url={shop}&url[]={evil}secret"),
            format!("url={shop}&url%5B0%5D={evil}secret"),
            format!("url={shop}&url[a][b]={evil}secret"),
        ] {
            assert_eq!(scrubbed(&[], &q), [], "{q}");
        }
        assert_eq!(
            scrubbed(&["dimension2"], "dimension2[]=secret&dimension2=blue"),
            [("dimension2".to_owned(), "blue".to_owned())]
        );
        assert_eq!(
            scrubbed(&["dimension2"], "dimension2=blue&dimension2[x]=secret"),
            []
        );
        // PHP's own spelling of a name: leading spaces go, dots and spaces become `_`, an
        // unclosed bracket too, and the name ends at a NUL.
        assert_eq!(
            scrubbed(&[], "e_c=a&e.c=b&%20e_a=c&e[n=d&e_v%00x=5"),
            [
                ("e_c".to_owned(), "b".to_owned()),
                ("e_a".to_owned(), "c".to_owned()),
                ("e_n".to_owned(), "d".to_owned()),
                ("e_v".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn page_view_ids_do_not_link_two_rotation_periods() {
        let settings = Settings::default();
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = ctx_with(&settings, &p);
        // A page left open across the rotation keeps sending pings with its page view id.
        let q = "idsite=3&_id=4f2a9c81be03d7e6&pv_id=Ab3dE9&ping=1";
        let at =
            |now| parse_query(&scrub_query(q, &ctx, now, &mut Tally::default()).unwrap()).unwrap();
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (a, later) = (at(day), at(day + Duration::from_secs(60)));
        let next = at(day + Duration::from_secs(86400));
        let pv = get(&a, "pv_id").unwrap();
        assert_eq!(
            Some(pv),
            get(&later, "pv_id"),
            "one page view within a period"
        );
        assert!(
            pv.len() == 6 && pv.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{pv}"
        );
        assert_ne!(pv, "Ab3dE9");
        assert_ne!(Some(pv), get(&next, "pv_id"));
        assert_ne!(get(&a, "_id"), get(&next, "_id"));
    }

    #[test]
    fn custom_variables_keep_only_scalar_values() {
        let cvar = r#"{"1":["Plan",{"email":"a@b.c"}],"2":["Plan","pro","a@b.c"],"3":["Plan",["a@b.c"]],"4":["Plan",7],"5":[{"Plan":1},"x"]}"#;
        let out = scrubbed(
            &["Plan"],
            &format!(
                "_cvar={}",
                form_urlencoded::byte_serialize(cvar.as_bytes()).collect::<String>()
            ),
        );
        assert_eq!(get(&out, "_cvar"), Some(r#"{"4":["Plan",7]}"#));
    }

    #[test]
    fn bulk_json_loses_token_auth_and_every_request_is_scrubbed() {
        let raw = include_str!("../../tests/fixtures/matomo-bulk.json");
        let settings = Settings::default();
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let mut t = Tally::default();
        let out = String::from_utf8(
            scrub_body(
                raw.as_bytes(),
                &ctx_with(&settings, &p),
                SystemTime::now(),
                &mut t,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(
            !out.contains("token_auth") && !out.contains("should-never"),
            "{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let reqs = v["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 2);
        let second = parse_query(reqs[1].as_str().unwrap()).unwrap();
        assert_eq!(get(&second, "uid"), None);
        assert_eq!(get(&second, "e_a"), Some("play"));
        assert_eq!(get(&second, "url"), Some("https://shop.example/v"));
        let first = parse_query(reqs[0].as_str().unwrap()).unwrap();
        assert_eq!(
            get(&first, "_id"),
            get(&second, "_id"),
            "one visitor, one pseudonym within a period"
        );
        assert_eq!(get(&first, "res"), None);
        for bad in [
            &b"{\"requests\": \"x\"}"[..],
            b"{not json",
            b"{\"requests\": [1]}",
            b"a=%zz",
        ] {
            assert!(
                scrub_body(bad, &ctx_with(&settings, &p), SystemTime::now(), &mut t).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bulk_answers_keep_only_typed_bounded_counts() {
        let a = |s: &str| String::from_utf8(bulk_answer(Some(s.as_bytes()))).unwrap();
        assert_eq!(
            a(r#"{"status":"success","tracked":2,"invalid":1,"invalid_indices":[1]}"#),
            r#"{"invalid":1,"invalid_indices":[1],"status":"success","tracked":2}"#
        );
        // A token or an address echoed in any field, or a number too large for a count.
        assert_eq!(
            a(
                r#"{"status":"token_auth=0123","tracked":"2001:db8::1","invalid":123456789012,
                 "invalid_indices":[0,"alice"],"message":"cip=2001:db8::1","token_auth":"0123"}"#
            ),
            "{}"
        );
        assert_eq!(a("<html>token_auth=0123</html>"), "{}");
        assert_eq!(String::from_utf8(bulk_answer(None)).unwrap(), "{}");
    }
}
