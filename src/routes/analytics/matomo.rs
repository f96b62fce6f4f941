//! Matomo `matomo.php` / `piwik.php`: GET, form POST, and bulk JSON (`{"requests": ["?…"]}`).

use std::time::SystemTime;

use super::{
    generalise_user_agent, host_of, parse_query, primary_language, same_site_referrer,
    scrub_page_url, to_query, Context, Outcome, ScrubError, Tally,
};

/// The parameter table (`tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("idsite", Outcome::Kept, "site id"),
    ("rec", Outcome::Kept, ""),
    ("r", Outcome::Kept, "cache buster"),
    ("apiv", Outcome::Kept, ""),
    ("action_name", Outcome::Kept, "page title"),
    ("pv_id", Outcome::Kept, "page view id"),
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
        "url, link, download",
        Outcome::Generalised,
        "page, outlink and download URLs: no path parameters, no fragment, no query but allow_url_params",
    ),
    (
        "urlref, _ref",
        Outcome::Generalised,
        "same-site: origin and path (no path parameters); external: dropped",
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
    ("*", Outcome::Dropped, "any other parameter"),
];

const PERF: &[&str] = &["pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2", "pf_onl"];

fn kept(name: &str) -> bool {
    PERF.contains(&name)
        || RULES
            .iter()
            .any(|(n, o, _)| *o == Outcome::Kept && *n == name)
}

/// `{"1":["name","value"], …}`: only entries whose name is allowlisted survive.
fn custom_variables(json: &str, allow: &[String]) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_str(json).ok()? else {
        return None;
    };
    let kept: serde_json::Map<String, serde_json::Value> = map
        .into_iter()
        .filter(|(_, v)| {
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|n| n.as_str())
                .is_some_and(|n| allow.iter().any(|a| a == n))
        })
        .collect();
    (!kept.is_empty()).then(|| serde_json::Value::Object(kept).to_string())
}

/// Scrubs one tracking request's parameters.
pub fn scrub_params(
    params: Vec<(String, String)>,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Vec<(String, String)> {
    let site = params
        .iter()
        .find(|(k, _)| k == "idsite")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let site_host = params
        .iter()
        .find(|(k, _)| k == "url")
        .and_then(|(_, v)| host_of(v).map(str::to_owned));
    let allow = &ctx.settings.allow_event_params;
    let mut out = Vec::with_capacity(params.len());
    for (k, v) in params {
        let (outcome, value) = match k.as_str() {
            "_id" | "cid" => {
                let p = ctx.pseudonyms.pseudonym(ctx.route, &site, &v, now);
                (
                    Outcome::Pseudonymised,
                    Some(format!("{:016x}", u64::from(p))),
                )
            }
            "url" | "link" | "download" => (
                Outcome::Generalised,
                scrub_page_url(&v, &ctx.settings.allow_url_params),
            ),
            "urlref" | "_ref" => (
                Outcome::Generalised,
                same_site_referrer(&v, site_host.as_deref()),
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

/// Scrubs a query string (GET, or the query of a POST).
pub fn scrub_query(
    query: &str,
    ctx: &Context<'_>,
    now: SystemTime,
    tally: &mut Tally,
) -> Result<String, ScrubError> {
    Ok(to_query(&scrub_params(
        parse_query(query)?,
        ctx,
        now,
        tally,
    )))
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
    if !text.trim_start().starts_with('{') {
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
    Ok(serde_json::json!({ "requests": out })
        .to_string()
        .into_bytes())
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
        }
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_get_fixture_is_scrubbed_parameter_by_parameter() {
        let raw = include_str!("../../../tests/fixtures/matomo-track-get.txt");
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

    #[test]
    fn bulk_json_loses_token_auth_and_every_request_is_scrubbed() {
        let raw = include_str!("../../../tests/fixtures/matomo-bulk.json");
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
}
