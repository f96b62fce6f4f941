//! The operator mistakes that would otherwise pass silently and weaken what tamis exists for
//! (issue 31): each a refusal or a warning with the reason. The table of them, with what tamis
//! says and why, is in docs/configuration.md ("Mistakes tamis catches").
//!
//! The checks here read the raw route next to what `route.rs` made of it; the pure rules they
//! apply are functions below (or tables in `policy::jurisdiction` and `mirrors::tiles`), tested
//! on their own.

use std::net::SocketAddr;

use http::{HeaderValue, Uri};

use super::raw::RawRoute;
use super::validate::{Key, Validator};
use crate::analytics::Protocol;
use crate::policy::jurisdiction::known_non_eu;
use crate::policy::Jurisdiction;

impl Validator<'_> {
    /// `jurisdiction = "eu"` on a host the table knows to be run from outside the EU is refused
    /// unless `eu_reason` says why; `eu_reason` itself only goes with `eu`, and says something.
    pub(super) fn eu_claim(
        &mut self,
        r: &RawRoute,
        key: Key,
        jurisdiction: Jurisdiction,
    ) -> Option<String> {
        let reason = match &r.eu_reason {
            Some(v) if v.get_ref().trim().is_empty() => {
                self.problem(
                    Some(v.span()),
                    key("eu_reason"),
                    "is empty: say why this upstream is under EU law (e.g. the EU-only endpoint \
                     and the contract that binds it), or remove jurisdiction = \"eu\"",
                );
                None
            }
            Some(v) if jurisdiction != Jurisdiction::Eu => {
                self.problem(
                    Some(v.span()),
                    key("eu_reason"),
                    "is for jurisdiction = \"eu\" (it says why an upstream the table of non-EU \
                     hosts lists is under EU law all the same)",
                );
                None
            }
            Some(v) => Some(v.get_ref().trim().to_owned()),
            None => None,
        };
        if jurisdiction == Jurisdiction::Eu && r.eu_reason.is_none() {
            for (field, url) in [
                ("upstream", Some(&r.upstream)),
                ("files_upstream", r.files_upstream.as_ref()),
            ] {
                let Some(url) = url else { continue };
                if let Some(e) = known_non_eu(url_host(url.get_ref())) {
                    self.problem(
                        Some(url.span()),
                        key("jurisdiction"),
                        format!(
                            "\"eu\", but {field} {} is run by {}: an EU route sends it the \
                             visitor's User-Agent (and any forward_headers, client address or \
                             location), the very transfer tamis prevents. Remove jurisdiction = \
                             \"eu\"; if this endpoint really is under EU law (an EU-only service \
                             and its contract), say so with eu_reason = \"...\", which tamis \
                             check and the transparency page print",
                            url_host(url.get_ref()),
                            e.operator
                        ),
                    );
                }
            }
        }
        reason
    }

    /// An admin listener anyone on the network can reach, with no token: refused, since its
    /// POST /cache/purge and /reload would then be open to all of them.
    pub(super) fn exposed_admin(
        &mut self,
        listen: SocketAddr,
        span: std::ops::Range<usize>,
        has_token: bool,
    ) {
        if !has_token && !listen.ip().is_loopback() {
            self.problem(
                Some(span),
                "admin.listen",
                format!(
                    "{listen} is reachable from the network, and without admin.token_file anyone \
                     there can POST /cache/purge (a refetch storm against the upstreams) and \
                     /reload: set token_file (a file holding 16+ random characters), or listen \
                     on 127.0.0.1"
                ),
            );
        }
    }

    /// The shipped placeholders (`site.example`, any reserved example domain) left in a
    /// User-Agent or Referer that goes upstream: a warning, so the shipped config still runs.
    /// On an OpenStreetMap route the tile usage policy forbids them: the contact must reach the
    /// operator and the Referer name the site.
    pub(super) fn placeholders(
        &mut self,
        r: &RawRoute,
        key: Key,
        osm: bool,
        user_agent: Option<&HeaderValue>,
        global_ua: &HeaderValue,
    ) {
        let policy = if osm {
            "OpenStreetMap's tile usage policy forbids it (the contact must reach you, the \
             Referer name your site)"
        } else {
            "the upstream is told of a site that is not yours"
        };
        let ua = user_agent.unwrap_or(global_ua).to_str().unwrap_or("");
        if let Some(p) = placeholder_in(ua).filter(|_| osm || user_agent.is_some()) {
            let (span, from) = match (&r.user_agent, user_agent) {
                (Some(v), Some(_)) => (v.span(), "its user_agent"),
                _ => (r.upstream.span(), "upstream.user_agent"),
            };
            self.warning(
                Some(span),
                key("user_agent"),
                format!(
                    "the User-Agent it sends ({from}) names {p}, the shipped placeholder, not \
                     your site or a contact: {policy}; put your site's address and an e-mail \
                     you read"
                ),
            );
        }
        if let Some(v) = &r.referer {
            if let Some(p) = placeholder_in(v.get_ref()) {
                self.warning(
                    Some(v.span()),
                    key("referer"),
                    format!("{p} is the shipped placeholder, not your site: {policy}; put your site's origin"),
                );
            }
        }
    }

    /// Names in an analytics allow-list that the protocol never sends, so the entry keeps
    /// nothing: a warning with the name it probably meant.
    pub(super) fn allow_list_names(&mut self, r: &RawRoute, key: Key, protocol: Protocol) {
        for (field, list, hint) in [
            (
                "allow_event_params",
                &r.allow_event_params,
                event_param_hint as fn(Protocol, &str) -> Option<String>,
            ),
            ("allow_url_params", &r.allow_url_params, url_param_hint),
        ] {
            let Some(list) = list else { continue };
            for name in list.get_ref() {
                if let Some(msg) = hint(protocol, name) {
                    self.warning(Some(list.span()), key(field), msg);
                }
            }
        }
    }

    /// A route prefix under which one of tamis's own public pages lies (the transparency page,
    /// the probe): tamis answers those first, so the route would silently lose them.
    pub(super) fn shadows_own_page(&mut self, prefix: &toml::Spanned<String>, key: &str) {
        let p = prefix.get_ref();
        for page in self.own_pages.clone() {
            if shadows(p, &page) {
                self.problem(
                    Some(prefix.span()),
                    key,
                    format!(
                        "{p:?} covers {page}, a page tamis answers itself ahead of every route \
                         (the transparency page or its probe): the route would never get it. \
                         Choose another prefix, or move transparency.path"
                    ),
                );
            }
        }
    }

    /// `max_zoom` deeper than the tile server's own grid: every such tile is a request the
    /// server answers 404, at the visitors' pace.
    pub(super) fn grid_zoom(&mut self, r: &RawRoute, key: Key, host: &str, max_zoom: u8) {
        if let Some((grid, source)) = crate::mirrors::tiles::grid_max_zoom(host) {
            if max_zoom > grid {
                let span = r.max_zoom.as_ref().map_or(r.upstream.span(), |z| z.span());
                self.problem(
                    Some(span),
                    key("max_zoom"),
                    format!(
                        "{max_zoom}, but {host}'s tiles stop at zoom {grid} ({source}): deeper \
                         requests would all reach it for nothing; set max_zoom = {grid} or less"
                    ),
                );
            }
        }
    }
}

/// The host of an upstream URL or tile template as written (`https://h:443/x` → `h:443`).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// Whether the page `page` lies under the route prefix `prefix` (or is the prefix without its
/// slash). The catch-all `/` is the one prefix meant for "everything else": the pages tamis
/// answers first are documented to stay out of it.
pub(super) fn shadows(prefix: &str, page: &str) -> bool {
    prefix != "/" && (page.starts_with(prefix) || prefix.trim_end_matches('/') == page)
}

/// A reserved example domain (RFC 2606, RFC 6761: `.example`, `example.com/.net/.org`) named
/// in a User-Agent or Referer, as the shipped config's `site.example`.
pub fn placeholder_in(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
        .find(|w| {
            let host = w.as_str();
            ["example", "example.com", "example.net", "example.org"]
                .iter()
                .any(|d| host.ends_with(&format!(".{d}")) || (host == *d && *d != "example"))
        })
}

/// GA4 sends custom event parameters as `ep.NAME` (text) and `epn.NAME` (number), user
/// properties as `up.NAME`/`upn.NAME`; tamis keeps only those listed by their full name. Other
/// protocols' custom fields are named freely (Matomo's `dimensionN` or custom variable names,
/// Plausible's and Umami's props), so only a name no protocol could carry is flagged.
pub fn event_param_hint(protocol: Protocol, name: &str) -> Option<String> {
    if let Some(msg) = unusable_name(name) {
        return Some(msg);
    }
    if protocol != Protocol::Ga4 {
        return None;
    }
    let prefixes = crate::analytics::ga4::CUSTOM;
    if let Some(p) = prefixes.iter().find(|p| name.starts_with(*p)) {
        if name.len() == p.len() {
            return Some(format!(
                "{name:?} names no parameter: write the parameter after the prefix, e.g. \"{p}page_type\""
            ));
        }
        return None;
    }
    // `ep_page_type`, `EP.page_type`: the prefix written another way.
    let lower = name.to_ascii_lowercase();
    let meant = prefixes
        .iter()
        .find_map(|p| {
            let bare = p.trim_end_matches('.');
            lower
                .strip_prefix(bare)
                .and_then(|rest| rest.strip_prefix(['_', '.', '-']))
                .filter(|rest| !rest.is_empty())
                .map(|_| format!("{p}{}", &name[bare.len() + 1..]))
        })
        .unwrap_or_else(|| format!("ep.{name}"));
    Some(format!(
        "{name:?} is never sent by GA4, which sends custom event parameters as ep.NAME (text) \
         or epn.NAME (number), user properties as up.NAME or upn.NAME, so this entry keeps \
         nothing: did you mean \"{meant}\"?"
    ))
}

/// A page-URL parameter's name: written as it appears before `=`.
pub fn url_param_hint(_protocol: Protocol, name: &str) -> Option<String> {
    unusable_name(name)
}

/// A name with a character no parameter name carries as tamis reads it (`?utm_source`,
/// `utm_source=`, a space), with the name it probably meant.
fn unusable_name(name: &str) -> Option<String> {
    let meant: String = name
        .trim()
        .trim_start_matches(['?', '&'])
        .split(['=', '&'])
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if !name.is_empty() && meant == name {
        return None;
    }
    Some(if meant.is_empty() || meant.contains(char::is_whitespace) {
        format!("{name:?} is never a parameter's name, so this entry keeps nothing")
    } else {
        format!("{name:?} is never a parameter's name, so this entry keeps nothing: did you mean \"{meant}\"?")
    })
}

/// A `referer` as the origin it must be (`https://site.example/`): a path, a query or a
/// fragment would tell the upstream more than which site asks, so they are refused, with the
/// origin they probably meant.
pub fn referer_origin(value: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "{value:?} is not an http(s) URL (use the site's origin, e.g. \"https://site.example/\")"
        )
    };
    let u: Uri = value.parse().map_err(|_| bad())?;
    let scheme = u.scheme_str().filter(|s| matches!(*s, "http" | "https"));
    let (Some(scheme), Some(authority)) = (scheme, u.authority()) else {
        return Err(bad());
    };
    if authority.as_str().contains('@') {
        // Not quoted: what is before the @ may be a password.
        return Err(format!(
            "carries a user name or password: use the site's origin alone, \"{scheme}://{}/\"",
            authority.host()
        ));
    }
    let origin = format!("{scheme}://{authority}/");
    let path = u.path_and_query().map_or("", |p| p.as_str());
    if !matches!(path, "" | "/") || value.contains('#') {
        return Err(format!(
            "{value:?} is a page, not an origin: the Referer tamis sends names the site, never a \
             page (and OpenStreetMap's policy asks for the site): did you mean \"{origin}\"?"
        ));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_referer_is_an_origin() {
        assert_eq!(
            referer_origin("https://site.example/"),
            Ok("https://site.example/".to_owned())
        );
        assert_eq!(
            referer_origin("https://site.example:8443"),
            Ok("https://site.example:8443/".to_owned())
        );
        for (bad, meant) in [
            ("https://site.example/maps/", "https://site.example/"),
            ("https://site.example/?from=tamis", "https://site.example/"),
            ("https://site.example/#map", "https://site.example/"),
            ("http://site.example:8080/a", "http://site.example:8080/"),
        ] {
            let e = referer_origin(bad).unwrap_err();
            assert!(
                e.contains(&format!("did you mean \"{meant}\"")),
                "{bad}: {e}"
            );
        }
        for bad in ["site.example", "ftp://site.example/", "/maps", ""] {
            assert!(
                referer_origin(bad)
                    .unwrap_err()
                    .contains("not an http(s) URL"),
                "{bad}"
            );
        }
        let e = referer_origin("https://me:pw@site.example/").unwrap_err();
        assert!(e.contains("user name") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn placeholders_are_the_reserved_example_domains() {
        assert_eq!(
            placeholder_in("tamis (+https://site.example/privacy; ops@site.example)").as_deref(),
            Some("site.example")
        );
        assert_eq!(
            placeholder_in("https://www.example.com/").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            placeholder_in("https://example.org").as_deref(),
            Some("example.org")
        );
        for real in [
            "tamis (+https://shop.fr/privacy; ops@shop.fr)",
            "tamis/0.1.0",
            "https://examples.com/",
            "https://example.community/",
            "https://myexample.com/",
        ] {
            assert_eq!(placeholder_in(real), None, "{real}");
        }
    }

    #[test]
    fn ga4_custom_parameters_need_their_prefix() {
        assert_eq!(event_param_hint(Protocol::Ga4, "ep.page_type"), None);
        assert_eq!(event_param_hint(Protocol::Ga4, "epn.value"), None);
        assert_eq!(event_param_hint(Protocol::Ga4, "up.plan"), None);
        for (written, meant) in [
            ("page_type", "ep.page_type"),
            ("ep_page_type", "ep.page_type"),
            ("epn_value", "epn.value"),
            ("EP.page_type", "ep.page_type"),
        ] {
            let msg = event_param_hint(Protocol::Ga4, written).unwrap();
            assert!(
                msg.contains(&format!("did you mean \"{meant}\"?")),
                "{written}: {msg}"
            );
        }
        assert!(event_param_hint(Protocol::Ga4, "ep.").is_some());
        // Other protocols' custom fields are named freely.
        for p in [Protocol::Matomo, Protocol::Plausible, Protocol::Umami] {
            assert_eq!(event_param_hint(p, "page_type"), None);
            assert_eq!(event_param_hint(p, "dimension2"), None);
        }
        // No protocol sends a name with '=' or a leading '?'.
        let msg = url_param_hint(Protocol::Plausible, "?utm_source=").unwrap();
        assert!(msg.contains("did you mean \"utm_source\"?"), "{msg}");
        assert!(event_param_hint(Protocol::Umami, "plan=pro").is_some());
        assert!(url_param_hint(Protocol::Ga4, "").is_some());
        assert_eq!(url_param_hint(Protocol::Ga4, "utm_source"), None);
    }

    #[test]
    fn a_route_prefix_shadows_the_pages_under_it_but_the_catch_all_does_not() {
        assert!(shadows("/.well-known/", "/.well-known/tamis"));
        assert!(shadows("/.well-known/tamis/", "/.well-known/tamis"));
        assert!(shadows("/.well-known/tamis/", "/.well-known/tamis/probe"));
        assert!(!shadows("/", "/.well-known/tamis"));
        assert!(!shadows("/cdn/", "/.well-known/tamis"));
        assert!(!shadows("/.well-known/tamis-x/", "/.well-known/tamis"));
    }

    #[test]
    fn url_host_reads_the_host_as_written() {
        assert_eq!(
            url_host("https://fonts.googleapis.com/"),
            "fonts.googleapis.com"
        );
        assert_eq!(url_host("https://u@h.example:8443/x?y"), "h.example:8443");
        assert_eq!(
            url_host("https://{s}.tile.example/{z}/{x}/{y}.png"),
            "{s}.tile.example"
        );
    }
}
