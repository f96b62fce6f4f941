//! What an analytics upstream's answer gives the browser (issue 26, part 3): hostile upstreams
//! that echo everything they received (the operator's token, the synthetic address, the
//! forwarded headers) in answer bodies, error pages, headers and redirects, plain and gzipped.
//! The browser gets tamis's own minimal answer of the same status class, and none of it.

mod common;

use std::io::Write as _;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";
const CLIENT: &str = "198.51.100.7";

/// What none of the browser's answer may hold: what tamis added (the token, the synthetic
/// address), what it removed (the visitor's address and dropped values), and echo markers.
const NEVER: &[&str] = &[
    TOKEN,
    "2001:db8",
    "2001%3Adb8",
    CLIENT,
    "203.0.113.9",
    "dropped-by-tamis",
    "6778.85",
    "x-forwarded-for",
    "token_auth",
    "<html",
];

/// A whole request as the upstream received it, as text.
fn echo(seen: &Seen) -> String {
    let mut all = format!("{} {}\n", seen.method, seen.uri);
    for (k, v) in &seen.headers {
        all.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    all.push_str(&String::from_utf8_lossy(&seen.body));
    all
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// The ways an upstream answers with the request in it.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// 200, the echo as JSON and in headers (the allowlisted ones too).
    Success,
    /// 200, gzip-encoded JSON echo.
    Gzipped,
    /// The upstream's own success status (`status`) with a JSON echo carrying Matomo's and
    /// Umami's real fields besides.
    Fields(u16),
    /// An HTML error page echoing the request.
    ErrorPage(u16),
    /// A redirect whose Location echoes the request's query.
    Redirect,
}

fn reply(how: Hostile, seen: &Seen) -> Reply {
    let all = echo(seen);
    let json = serde_json::json!({ "echo": all }).to_string();
    let header_echo: String = seen
        .uri
        .chars()
        .chain(seen.header("x-forwarded-for").unwrap_or_default().chars())
        .filter(|c| c.is_ascii_graphic())
        .collect();
    match how {
        Hostile::Success => Reply::ok(json)
            .header("content-type", "application/json")
            .header("x-debug", &format!("token_auth {header_echo}"))
            .header(
                "cache-control",
                &format!("private, x-echo=\"{header_echo}\""),
            )
            .header("set-cookie", "_pk_id=dropped-by-tamis"),
        Hostile::Gzipped => Reply::ok(gzip(&json))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip"),
        Hostile::Fields(status) => Reply::ok(
            serde_json::json!({
                "status": "success", "tracked": 2, "invalid": 0, "disabled": false,
                "sessionId": "s-1", "cache": "eyJ0", "message": all, "token_auth": TOKEN,
            })
            .to_string(),
        )
        .status(status)
        .header("content-type", "application/json"),
        Hostile::ErrorPage(status) => {
            Reply::ok(format!("<html><body><pre>{all}</pre></body></html>"))
                .status(status)
                .header("content-type", "text/html")
                .header("retry-after", "120")
        }
        Hostile::Redirect => Reply::ok("")
            .status(302)
            .header("location", &format!("/echo?{header_echo}")),
    }
}

/// One tracking request of each protocol, carrying values tamis drops.
struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// What tamis answers a success with.
    pixel_or_text: Option<&'static [u8]>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ga4",
            method: Method::GET,
            path: "/g/g/collect?v=2&tid=G-1&cid=1.2&en=page_view&uid=dropped-by-tamis&dl=https%3A%2F%2Fsite.example%2F%3Fq%3Ddropped-by-tamis",
            content_type: "text/plain",
            body: "",
            pixel_or_text: Some(tamis::analytics::answer::PIXEL),
        },
        Case {
            name: "matomo",
            method: Method::GET,
            path: "/m/matomo.php?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2F&uid=dropped-by-tamis&cip=203.0.113.9&token_auth=dropped-by-tamis",
            content_type: "text/plain",
            body: "",
            pixel_or_text: Some(tamis::analytics::answer::PIXEL),
        },
        Case {
            name: "matomo bulk",
            method: Method::POST,
            path: "/m/matomo.php",
            content_type: "application/json",
            body: r#"{"requests":["?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2Fa&uid=dropped-by-tamis","?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2Fb"],"token_auth":"dropped-by-tamis"}"#,
            pixel_or_text: None,
        },
        Case {
            name: "plausible",
            method: Method::POST,
            path: "/p/api/event",
            content_type: "text/plain",
            body: r#"{"n":"pageview","u":"https://site.example/?q=dropped-by-tamis","d":"site.example","r":"https://dropped-by-tamis.example/"}"#,
            pixel_or_text: Some(b"ok"),
        },
        Case {
            name: "umami",
            method: Method::POST,
            path: "/u/api/send",
            content_type: "application/json",
            body: r#"{"type":"event","payload":{"website":"w","hostname":"site.example","url":"/?q=dropped-by-tamis","screen":"dropped-by-tamis","id":"dropped-by-tamis"}}"#,
            pixel_or_text: None,
        },
    ]
}

/// tamis behind a trusted proxy with one EU route per protocol sending the synthetic address
/// (Matomo with the operator's token), all to `up`.
async fn start(dir: &std::path::Path, up: &Upstream) -> Tamis {
    let token = dir.join("matomo-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let route = |name: &str, kind: &str, extra: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nkind = \"{kind}\"\nprefix = \"/{name}/\"\nupstream = \"{}\"\njurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\n{extra}\n",
            up.url("/")
        )
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"0s\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}{}{}{}",
        route("g", "ga4", ""),
        route("m", "matomo", &format!("token_file = \"{}\"", token.display())),
        route("p", "plausible", ""),
        route("u", "umami", ""),
    );
    Tamis::start(&config).await
}

async fn track(t: &Tamis, c: &Case) -> Answer {
    let req = http::Request::builder()
        .method(c.method.clone())
        .uri(c.path)
        .header("host", "site.example")
        .header("user-agent", UA)
        .header("x-forwarded-for", CLIENT)
        .header("accept-encoding", "gzip, br")
        .header("cookie", "_pk_id=dropped-by-tamis")
        .header("content-type", c.content_type)
        .body(Full::new(Bytes::from(c.body)))
        .unwrap();
    send(t.http, req).await
}

/// Asserts the answer is tamis's own: none of [`NEVER`] anywhere in it, tamis's own type and
/// length, no encoding, no upstream header.
fn assert_own(a: &Answer, what: &str) {
    let mut all = String::from_utf8_lossy(&a.body).into_owned();
    for (k, v) in &a.headers {
        all.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
    }
    for never in NEVER {
        assert!(
            !all.contains(never),
            "{what}: {never} reached the browser:\n{all}"
        );
    }
    for gone in [
        "content-encoding",
        "set-cookie",
        "x-debug",
        "location",
        "retry-after",
    ] {
        assert!(
            a.header(gone).is_none(),
            "{what}: {gone} reached the browser"
        );
    }
    assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
    if a.status == 204 {
        assert!(
            a.body.is_empty() && a.header("content-type").is_none(),
            "{what}"
        );
    } else {
        assert_eq!(
            a.header("content-length"),
            Some(a.body.len().to_string().as_str()),
            "{what}"
        );
        let ct = a.header("content-type").unwrap_or_default();
        assert!(
            ["image/gif", "application/json", "text/plain; charset=utf-8"].contains(&ct),
            "{what}: {ct}"
        );
    }
}

/// Asserts the upstream did receive what the browser must not get back, so that an echo would
/// have carried it: the test can fail.
fn assert_echo_had_secrets(up: &Upstream, name: &str) {
    let all = echo(&up.last());
    assert!(
        all.contains("2001:db8") || all.contains("2001%3Adb8"),
        "{name}: no synthetic address sent:\n{all}"
    );
    if name.starts_with("matomo") {
        assert!(all.contains(TOKEN), "{name}: no token sent:\n{all}");
    }
}

#[tokio::test]
async fn a_success_echoing_the_request_is_replaced_by_each_protocols_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    for how in [Hostile::Success, Hostile::Gzipped] {
        let up = Upstream::http(move |s| reply(how, s)).await;
        let t = start(dir.path(), &up).await;
        for c in cases() {
            let what = format!("{} {how:?}", c.name);
            let a = track(&t, &c).await;
            assert_echo_had_secrets(&up, c.name);
            assert_eq!(a.status, 200, "{what}");
            assert_own(&a, &what);
            match c.pixel_or_text {
                Some(fixed) => assert_eq!(a.body.as_ref(), fixed, "{what}"),
                // The JSON protocols: nothing of an echo is a field they keep.
                None => assert_eq!(a.text(), "{}", "{what}"),
            }
        }
    }
}

#[tokio::test]
async fn json_answers_keep_only_the_typed_fields_trackers_read() {
    let dir = tempfile::tempdir().unwrap();
    for status in [200u16, 202] {
        let up = Upstream::http(move |s| reply(Hostile::Fields(status), s)).await;
        let t = start(dir.path(), &up).await;
        for c in cases() {
            let what = format!("{} {status}", c.name);
            let a = track(&t, &c).await;
            assert_echo_had_secrets(&up, c.name);
            assert_eq!(a.status, status, "{what}");
            assert_own(&a, &what);
            let want: &[u8] = match c.name {
                "matomo bulk" => br#"{"invalid":0,"status":"success","tracked":2}"#,
                "umami" => br#"{"disabled":false}"#,
                _ => c.pixel_or_text.unwrap(),
            };
            assert_eq!(a.body.as_ref(), want, "{what}: {}", a.text());
        }
    }
}

#[tokio::test]
async fn error_pages_and_redirects_are_replaced_by_a_minimal_answer_of_their_class() {
    let dir = tempfile::tempdir().unwrap();
    for (how, want) in [
        (Hostile::ErrorPage(400), 400u16),
        (Hostile::ErrorPage(403), 403),
        (Hostile::ErrorPage(418), 400),
        (Hostile::ErrorPage(500), 502),
        (Hostile::ErrorPage(503), 503),
        (Hostile::Redirect, 502),
    ] {
        let up = Upstream::http(move |s| reply(how, s)).await;
        let t = start(dir.path(), &up).await;
        for c in cases() {
            let what = format!("{} {how:?}", c.name);
            let a = track(&t, &c).await;
            assert_echo_had_secrets(&up, c.name);
            assert_eq!(a.status, want, "{what}");
            assert_own(&a, &what);
            assert_eq!(
                a.header("content-type"),
                Some("text/plain; charset=utf-8"),
                "{what}"
            );
            assert!(a.body.len() < 64, "{what}: {}", a.text());
        }
    }
}

#[tokio::test]
async fn a_no_content_answer_stays_empty_and_json_answers_are_asked_unencoded() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("echo 2001:db8::1").status(204)).await;
    let t = start(dir.path(), &up).await;
    for c in cases() {
        let a = track(&t, &c).await;
        assert_eq!(a.status, 204, "{}", c.name);
        assert_own(&a, c.name);
        // tamis reads Matomo's and Umami's answers for a few fields: never compressed ones.
        let encoding = up.last().header("accept-encoding").map(str::to_owned);
        let wants = if c.name.starts_with("matomo") || c.name == "umami" {
            Some("identity")
        } else {
            Some("br, gzip")
        };
        assert_eq!(encoding.as_deref(), wants, "{}", c.name);
    }
}
