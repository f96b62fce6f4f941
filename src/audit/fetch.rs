//! Reading the page from the operator's site: `--site` and page URLs parsed, then one GET
//! with same-host redirects, a size cap and the config's timeouts.

use std::borrow::Cow;

use super::url::{absolute, host_of, normal_host, resolve, scheme_of};
use super::AuditError;
use crate::config::Config;

/// Largest page fetched for an audit.
pub const MAX_PAGE_BYTES: usize = 10 * 1024 * 1024;

/// Redirects followed on the page's own host before giving up.
const MAX_REDIRECTS: usize = 5;

/// The site an audit is about: its host (what counts as first-party) and origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Site {
    pub(super) host: String,
    pub(super) origin: String,
}

/// `https://site.example`, `https://site.example/page`, or a bare `site.example`.
pub(super) fn parse_site(s: &str) -> Result<Site, AuditError> {
    let invalid = |why: &str| AuditError::InvalidUrl {
        url: s.to_owned(),
        why: why.to_owned(),
    };
    let with_scheme = if s.contains("://") {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("https://{s}"))
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => s,
        _ => return Err(invalid("not an http:// or https:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let host = normal_host(authority.host());
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(Site {
        host,
        origin: format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            authority.as_str().to_ascii_lowercase()
        ),
    })
}

pub(super) fn is_url(page: &str) -> bool {
    let lower = page.get(..8).unwrap_or(page).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Fetches a page on the operator's site: GET, same-host redirects only, body capped at
/// [`MAX_PAGE_BYTES`], the config's upstream timeouts. Returns the body and the final URL.
pub(super) fn fetch(config: &Config, url: &str) -> Result<(Vec<u8>, String), AuditError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuditError::Fetch {
            url: url.to_owned(),
            why: format!("cannot start the async runtime: {e}"),
        })?;
    runtime.block_on(fetch_async(config, url))
}

async fn fetch_async(config: &Config, start: &str) -> Result<(Vec<u8>, String), AuditError> {
    use http_body_util::BodyExt;

    let fail = |url: &str, why: String| AuditError::Fetch {
        url: url.to_owned(),
        why,
    };
    let client =
        crate::upstream::Upstream::new(&config.upstream).map_err(|e| fail(start, e.to_string()))?;
    let mut url = start.to_owned();
    let first_host = uri_of(&url)?.authority().map(|a| normal_host(a.host()));
    for _ in 0..=MAX_REDIRECTS {
        let uri = uri_of(&url)?;
        let mut req = http::Request::get(uri)
            .header(http::header::USER_AGENT, config.upstream.user_agent.clone())
            .header(http::header::ACCEPT, "text/html,application/xhtml+xml")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| fail(&url, e.to_string()))?;
        let resp = client
            .send(&mut req)
            .await
            .map_err(|e| fail(&url, e.to_string()))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail(&url, format!("answered {status} without a Location")))?;
            let next = absolute(location)
                .map(|u| {
                    if u.starts_with("//") {
                        format!("{}:{u}", scheme_of(&url))
                    } else {
                        u
                    }
                })
                .or_else(|| resolve(&url, location))
                .ok_or_else(|| fail(&url, format!("redirects to {location:?}")))?;
            // The audit fetches the operator's own page and nothing else.
            if host_of(&next).map(normal_host) != first_host {
                return Err(fail(
                    &url,
                    format!("redirects to another host ({next}); audit that URL directly"),
                ));
            }
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(fail(&url, format!("answered {status}")));
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| crate::upstream::error_chain(&e))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_PAGE_BYTES {
                        return Err(format!("the page is larger than {MAX_PAGE_BYTES} bytes"));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(config.upstream.timeout, read).await {
            Err(_) => {
                return Err(fail(
                    &url,
                    format!("no complete page within {:?}", config.upstream.timeout),
                ))
            }
            Ok(Err(why)) => return Err(fail(&url, why)),
            Ok(Ok(())) => return Ok((out, url)),
        }
    }
    Err(fail(start, format!("more than {MAX_REDIRECTS} redirects")))
}

fn uri_of(url: &str) -> Result<http::Uri, AuditError> {
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| AuditError::InvalidUrl {
                url: url.to_owned(),
                why: e.to_string(),
            })?;
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(AuditError::InvalidUrl {
            url: url.to_owned(),
            why: "no host".into(),
        });
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_and_pages() {
        assert_eq!(
            parse_site("https://Site.Example:8443/blog/").unwrap(),
            Site {
                host: "site.example".into(),
                origin: "https://site.example:8443".into()
            }
        );
        assert_eq!(
            parse_site("site.example").unwrap().origin,
            "https://site.example"
        );
        assert!(parse_site("ftp://site.example").is_err());
        assert!(parse_site("not a site").is_err());
        assert!(is_url("HTTPS://x.example/") && !is_url("tests/pages/a.html"));
    }
}
