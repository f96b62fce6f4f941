//! The dry-run probe (`POST /.well-known/tamis/probe`, `tamis probe`): for every route kind, the
//! request a probe says tamis would send is, byte for byte, the one an upstream reads when the
//! same request is sent for real; probes never reach an upstream; refusals match real ones.
//!
//! The upstream here is a raw TCP recorder, not an HTTP server: it keeps the exact bytes tamis
//! wrote (request line, headers in order and case, body), which is what the probe claims to show.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that records the raw bytes of each request (HTTP/1.1, Content-Length bodies,
/// kept-alive connections) and answers every one with a small uncacheable stylesheet (so the
/// font CSS route's rewrite succeeds; the other routes do not care).
struct RawUpstream {
    port: u16,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf: Vec<u8> = Vec::new();
                    loop {
                        // One request: the head, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let request: Vec<u8> = buf.drain(..head_end + len).collect();
                        seen.lock().unwrap().push(request);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/css\r\n\
                                      cache-control: no-store\r\ncontent-length: 3\r\n\r\na{}";
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { port, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Vec<u8> {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// Every route kind on one upstream, the probe on.
fn config(up: &RawUpstream, probe: bool) -> String {
    format!(
        r#"{LISTEN}[transparency]
probe = {probe}

[[route]]
name = "cdn"
kind = "static"
prefix = "/cdn/"
upstream = "{cdn}"

[[route]]
name = "live"
kind = "static"
prefix = "/live/"
upstream = "{live}"
cache = false

[[route]]
name = "fonts"
kind = "fonts"
prefix = "/fonts/"
upstream = "{css}"
files_prefix = "/fonts/files/"
files_upstream = "{files}"

[[route]]
name = "osm"
kind = "tiles"
prefix = "/tiles/"
upstream = "{tiles}{{z}}/{{x}}/{{y}}.png"
referer = "https://site.example/"

[[route]]
name = "ga"
kind = "ga4"
prefix = "/ga/"
upstream = "{ga}"
allow_event_params = ["ep.page_type"]

[[route]]
name = "matomo"
kind = "matomo"
prefix = "/mt/"
upstream = "{mt}"

[[route]]
name = "plausible"
kind = "plausible"
prefix = "/pl/"
upstream = "{pl}"

[[route]]
name = "matomo-eu"
kind = "matomo"
prefix = "/mte/"
upstream = "{mt}"
jurisdiction = "eu"
client_ip = "truncated"

[[route]]
name = "umami"
kind = "umami"
prefix = "/um/"
upstream = "{um}"
"#,
        cdn = up.url("/npm/"),
        live = up.url("/live/"),
        css = up.url("/css/"),
        files = up.url("/files/"),
        tiles = up.url("/t/"),
        ga = up.url("/"),
        mt = up.url("/"),
        pl = up.url("/"),
        um = up.url("/"),
    )
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// One visitor request: sent for real and as a probe.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    /// Parameters holding pseudonyms (from the protocol's rule table): their values differ by
    /// key, so they are compared by shape, everything else byte for byte.
    pseudonyms: &'static [&'static str],
    /// An EU route sending the truncated address: the probe's is always 192.0.2.0's.
    truncated_address: bool,
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// The visitor headers every case carries: the harness's full set of personal data, a real
/// browser's User-Agent, and a Host.
fn browser(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![("host", "site.example")];
    h.extend(VISITOR.iter().filter(|(k, _)| *k != "user-agent"));
    h.push(("user-agent", UA));
    h.push(("range", "bytes=0-10"));
    h.extend_from_slice(extra);
    h
}

/// The shared table: every route kind, every analytics protocol.
fn cases() -> Vec<Case> {
    let ga4 = fixture("ga4-collect-batch.http");
    let (ga4_head, ga4_body) = ga4.split_once("\r\n\r\n").unwrap();
    let ga4_target = ga4_head.split_whitespace().nth(1).unwrap();
    let matomo_get = fixture("matomo-track-get.txt");
    let matomo_target = matomo_get.split_whitespace().nth(1).unwrap();
    let case =
        |name, method, path: String, extra: &[(&'static str, &'static str)], body: &str| Case {
            name,
            method,
            path,
            headers: browser(extra),
            body: body.to_owned(),
            pseudonyms: &[],
            truncated_address: false,
        };
    vec![
        case("static, cached", "GET", "/cdn/lib@1/x.js?v=1".into(), &[], ""),
        // A HEAD miss on a caching route fetches with GET.
        case("static, HEAD", "HEAD", "/cdn/lib@1/y.js".into(), &[], ""),
        case("static, uncached", "GET", "/live/feed.json".into(), &[], ""),
        case(
            "fonts CSS",
            "GET",
            "/fonts/css2?family=Roboto:wght@400;700&display=swap".into(),
            &[],
            "",
        ),
        case(
            "font file",
            "GET",
            "/fonts/files/s/roboto/v47/a.woff2?x=1".into(),
            &[],
            "",
        ),
        case("tile", "GET", "/tiles/3/4/5.png".into(), &[], ""),
        Case {
            pseudonyms: &["cid", "sid", "_p"],
            ..case(
                "GA4 POST batch",
                "POST",
                format!("/ga{ga4_target}"),
                &[("content-type", "text/plain;charset=UTF-8")],
                ga4_body,
            )
        },
        Case {
            pseudonyms: &["cid", "sid", "_p"],
            ..case(
                "GA4 GET",
                "GET",
                "/ga/g/collect?v=2&tid=G-1&cid=123.456&sid=789&_p=42&en=page_view&dl=https%3A%2F%2Fshop.example%2Fa%3Fb%3Dc".into(),
                &[],
                "",
            )
        },
        Case {
            pseudonyms: &["_id", "cid", "pv_id"],
            ..case(
                "Matomo GET",
                "GET",
                format!("/mt{matomo_target}"),
                &[],
                "",
            )
        },
        Case {
            pseudonyms: &["_id", "cid", "pv_id"],
            ..case(
                "Matomo bulk POST",
                "POST",
                "/mt/matomo.php".into(),
                &[("content-type", "application/json")],
                &fixture("matomo-bulk.json"),
            )
        },
        Case {
            pseudonyms: &["_id", "cid", "pv_id"],
            truncated_address: true,
            ..case(
                "Matomo GET, EU route sending the truncated address",
                "GET",
                format!("/mte{matomo_target}"),
                &[],
                "",
            )
        },
        case(
            "Plausible",
            "POST",
            "/pl/api/event".into(),
            &[("content-type", "text/plain")],
            &fixture("plausible-event.json"),
        ),
        case(
            "Umami",
            "POST",
            "/um/api/send".into(),
            &[("content-type", "application/json")],
            &fixture("umami-send.json"),
        ),
    ]
}

/// The probe's JSON for a request.
async fn probe(
    t: &Tamis,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> serde_json::Value {
    let input = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": body,
    });
    let a = probe_raw(t, input.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    serde_json::from_slice(&a.body).unwrap()
}

async fn probe_raw(t: &Tamis, body: String) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/.well-known/tamis/probe")
        .header("host", "site.example")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(t.http, req).await
}

/// The same request, sent for real.
async fn real(t: &Tamis, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        t.http,
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

/// The request text with each pseudonym's value replaced by `<p>` (`name=value` in a query or
/// form line, `"name":"value"` in JSON), and those values in order.
fn mask(text: &str, names: &[&str]) -> (String, Vec<String>) {
    let mut out = text.to_owned();
    let mut values = Vec::new();
    for name in names {
        for (open, ends) in [
            (format!("{name}="), &['&', ' ', '\r', '\n', '"'][..]),
            (format!("\"{name}\":\""), &['"'][..]),
        ] {
            let mut from = 0;
            while let Some(i) = out[from..].find(&open) {
                let at = from + i;
                let before = out[..at].chars().last();
                // Only a whole parameter name (not `xcid=`).
                let whole =
                    open.starts_with('"') || matches!(before, None | Some('?' | '&' | '\n' | '"'));
                let start = at + open.len();
                let len = out[start..].find(ends).unwrap_or(out.len() - start);
                if !whole || len == 0 {
                    from = start;
                    continue;
                }
                values.push(out[start..start + len].to_owned());
                out.replace_range(start..start + len, "<p>");
                from = start + 3;
            }
        }
    }
    (out, values)
}

/// Compares a probe's request with the one sent: byte for byte but for the pseudonyms' values,
/// which must sit in the same places and look alike (letters, digits and dots, as the
/// scrubbers write them).
fn assert_same_but_pseudonyms(shown: &str, sent: &str, names: &[&str], case: &str) {
    let (shown_masked, shown_values) = mask(shown, names);
    let (sent_masked, sent_values) = mask(sent, names);
    assert_eq!(shown_masked, sent_masked, "{case}");
    assert_eq!(shown_values.len(), sent_values.len(), "{case}");
    assert!(!shown_values.is_empty(), "{case}: no pseudonym found");
    for (a, b) in shown_values.iter().zip(&sent_values) {
        let alike = |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        assert!(alike(a) && alike(b), "{case}: {a} / {b}");
    }
}

#[tokio::test]
async fn a_probe_shows_byte_for_byte_what_a_real_request_sends_for_every_route_kind() {
    let up = RawUpstream::start().await;
    let t = Tamis::start(&config(&up, true)).await;
    let cases = cases();

    // Probes first: none may reach the upstream.
    let mut probed = Vec::new();
    for c in &cases {
        let p = probe(&t, c.method, &c.path, &c.headers, &c.body).await;
        assert_eq!(p["would_send"], true, "{}: {p:#}", c.name);
        probed.push(p);
    }
    assert_eq!(up.count(), 0, "a probe reached the upstream");
    // Nor did any live counter move (the transparency page reads them from the metrics).
    let page = t.get("/.well-known/tamis?format=json").await;
    let doc: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    let routes = doc["counters"]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 9);
    for r in routes {
        let p = &r["analytics_params"];
        let zero = serde_json::json!(0);
        for v in [
            &r["requests"],
            &r["forwarded"],
            &p["kept"],
            &p["pseudonymised"],
            &p["dropped"],
        ] {
            assert_eq!(v, &zero, "a probe moved a live counter: {r:#}");
        }
    }

    for (c, p) in cases.iter().zip(&probed) {
        let before = up.count();
        let a = real(&t, c.method, &c.path, &c.headers, &c.body).await;
        assert_eq!(
            up.count(),
            before + 1,
            "{}: {} {}",
            c.name,
            a.status,
            a.text()
        );
        let mut sent = String::from_utf8(up.last()).unwrap();
        let mut shown = p["upstream"]["http1"].as_str().unwrap().to_owned();
        if c.truncated_address {
            // The probe's visitor is 192.0.2.1; the real one is this test, on loopback.
            let (probe_xff, real_xff) = (
                "x-forwarded-for: 192.0.2.0\r\n",
                "x-forwarded-for: 127.0.0.0\r\n",
            );
            assert!(shown.contains(probe_xff), "{}: {shown}", c.name);
            // The visitor's own X-Forwarded-For removed, tamis's truncated one added.
            let xff: Vec<&str> = p["header_changes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["field"] == "x-forwarded-for")
                .map(|h| h["change"].as_str().unwrap())
                .collect();
            assert_eq!(xff, ["removed", "added"], "{}", c.name);
            assert!(sent.contains(real_xff), "{}: {sent}", c.name);
            shown = shown.replace(probe_xff, "x-forwarded-for: <truncated>\r\n");
            sent = sent.replace(real_xff, "x-forwarded-for: <truncated>\r\n");
        }
        let shown = shown.as_str();
        if c.pseudonyms.is_empty() {
            assert_eq!(shown, sent, "{}", c.name);
        } else {
            // Pseudonyms differ (a throwaway key): same shape in the same places, and the rest
            // byte for byte.
            assert_ne!(shown, sent, "{}: the probe used the live key", c.name);
            assert_same_but_pseudonyms(shown, &sent, c.pseudonyms, c.name);
        }
        // The structured fields say the same as the bytes.
        let line = sent.lines().next().unwrap();
        let method = p["upstream"]["method"].as_str().unwrap();
        let target = p["upstream"]["target"].as_str().unwrap();
        assert_eq!(
            mask(&format!("{method} {target} HTTP/1.1"), c.pseudonyms).0,
            mask(line, c.pseudonyms).0,
            "{}",
            c.name
        );
        let url = p["upstream"]["url"].as_str().unwrap();
        assert!(
            url.starts_with(&up.url("/")) && url.ends_with(target.trim_start_matches('/')),
            "{}: {url}",
            c.name
        );
    }
    // The probes' headers list is the one written, in order, Host included.
    let p = &probed[0];
    let names: Vec<&str> = p["upstream"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["accept", "accept-encoding", "user-agent", "host"]);
}

#[tokio::test]
async fn a_probe_answers_as_a_real_request_would_when_tamis_sends_nothing() {
    let up = RawUpstream::start().await;
    let t = Tamis::start(&config(&up, true)).await;
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/nowhere/at/all", 404),
        ("GET", "/tiles/99/0/0.png", 400),
        ("GET", "/tiles/3/4/../../x", 400),
        ("GET", "/ga/not/an/endpoint", 404),
        ("DELETE", "/cdn/x.js", 405),
        ("GET", "/pl/api/event", 405),
    ];
    for (method, path, status) in cases {
        let p = probe(&t, method, path, &[("host", "site.example")], "").await;
        let a = real(&t, method, path, &[("host", "site.example")], "").await;
        assert_eq!(a.status, *status, "{method} {path}: {}", a.text());
        assert_eq!(p["would_send"], false, "{method} {path}: {p:#}");
        assert_eq!(p["status"], *status, "{method} {path}: {p:#}");
        assert_eq!(p["message"].as_str().unwrap(), a.text().trim_end());
        assert!(p["upstream"].is_null());
    }
    // tamis's own pages are answered by tamis, never a route.
    let p = probe(&t, "GET", "/.well-known/tamis", &[], "").await;
    assert_eq!(
        (&p["would_send"], &p["status"]),
        (&false.into(), &200.into())
    );
    assert_eq!(
        up.count(),
        0,
        "a probe or a refused request reached the upstream"
    );
}

#[tokio::test]
async fn the_probe_is_off_by_default_post_only_and_refuses_bad_input() {
    let up = RawUpstream::start().await;
    let off = Tamis::start(&config(&up, false)).await;
    let a = probe_raw(&off, r#"{"path":"/cdn/x.js"}"#.into()).await;
    assert_eq!(a.status, 404, "{}", a.text());

    let t = Tamis::start(&config(&up, true)).await;
    let a = t.get("/.well-known/tamis/probe").await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));
    for (input, says) in [
        ("not a request", "not a valid HTTP/1.1 request"),
        (r#"{"path":"https://evil.example/"}"#, "must be a path"),
        (r#"{"path":"/x","headers":[["a b","c"]]}"#, "invalid header"),
    ] {
        let a = probe_raw(&t, input.into()).await;
        assert_eq!(a.status, 400, "{input}");
        assert!(a.text().contains(says), "{input}: {}", a.text());
        assert_eq!(a.header("cache-control"), Some("no-store"));
    }
    let a = probe_raw(
        &t,
        "x".repeat(tamis::transparency::probe::MAX_INPUT_BYTES + 1),
    )
    .await;
    assert_eq!(a.status, 413);
    // Raw HTTP/1.1 is read as well as JSON.
    let a = probe_raw(
        &t,
        "GET /cdn/a.js HTTP/1.1\r\nHost: site.example\r\nCookie: s=1\r\n\r\n".into(),
    )
    .await;
    let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(p["route"]["name"], "cdn");
    let cookie = p["header_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "cookie")
        .unwrap();
    assert_eq!(cookie["change"], "removed");
    assert_eq!(
        cookie["rule"],
        tamis::policy::Removed::Credential.reason(),
        "named from the policy table"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn each_probe_pseudonymises_with_a_key_of_its_own() {
    let up = RawUpstream::start().await;
    let t = Tamis::start(&config(&up, true)).await;
    let path = "/ga/g/collect?v=2&tid=G-1&cid=123.456&en=page_view";
    let cid = |p: serde_json::Value| {
        let url = p["upstream"]["url"].as_str().unwrap().to_owned();
        url.split("cid=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned()
    };
    let first = cid(probe(&t, "GET", path, &[], "").await);
    let second = cid(probe(&t, "GET", path, &[], "").await);
    assert_ne!(first, "123.456", "the visitor's id left as it came");
    // The same visitor id gets a different pseudonym in each probe (a 2^-32 chance of a
    // collision): no probe can be matched with another, nor with live traffic.
    assert_ne!(first, second);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn probes_are_rate_limited_per_client() {
    let up = RawUpstream::start().await;
    let t = Tamis::start(&config(&up, true)).await;
    let burst = tamis::transparency::probe::PROBE_RATE.burst as usize;
    let mut statuses = Vec::new();
    for _ in 0..=burst {
        statuses.push(probe_raw(&t, r#"{"path":"/nowhere"}"#.into()).await.status);
    }
    assert!(statuses[..burst].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[burst], 429);
}

#[test]
fn the_command_prints_the_request_and_exits_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tamis.toml");
    // Nothing listens there: the command never connects anywhere.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"cdn\"\nkind = \"static\"\n\
         prefix = \"/cdn/\"\nupstream = \"https://cdn.example/npm/\"\n",
    )
    .unwrap();
    let run = |request: &str| {
        let file = dir.path().join("request");
        std::fs::write(&file, request).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_tamis"))
            .args(["probe", "--config"])
            .arg(&config)
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run("GET /cdn/lib@1/x.js HTTP/1.1\r\nHost: site.example\r\nUser-Agent: Mozilla/5.0 Firefox/133.0\r\nAccept: */*\r\nCookie: s=1\r\n\r\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The whole request, exactly: the browser's Cookie and User-Agent never appear.
    assert_eq!(
        p["upstream"]["http1"],
        format!(
            "GET /npm/lib@1/x.js HTTP/1.1\r\naccept: */*\r\naccept-encoding: identity\r\n\
             user-agent: tamis/{}\r\nhost: cdn.example\r\n\r\n",
            tamis::VERSION
        )
    );
    assert_eq!(p["upstream"]["url"], "https://cdn.example/npm/lib@1/x.js");

    let out = run(r#"{"path":"/elsewhere"}"#);
    assert_eq!(out.status.code(), Some(1));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["status"], 404);

    let out = run("{\"path\": 3}");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

/// An operator's Matomo token: letters and digits, as Matomo's are (the config checks).
const TOKEN: &str = "s3cr3tOperatorToken0123456789";
const PLACEHOLDER: &str = "<operator token_auth>";

/// An EU Matomo route that sends a synthetic visitor address (cip), which Matomo only takes
/// with the operator's token: every tracking request it forwards carries the token.
fn token_config(up: &RawUpstream, token_file: &std::path::Path) -> String {
    format!(
        "{LISTEN}[transparency]\nprobe = true\n\n[[route]]\nname = \"matomo\"\nkind = \"matomo\"\n\
         prefix = \"/mt/\"\nupstream = \"{}\"\njurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\n\
         token_file = {:?}\n",
        up.url("/"),
        token_file.display().to_string()
    )
}

/// The request the upstream received with the token replaced by the placeholder, and its
/// Content-Length counting the placeholder: what the probe must show, byte for byte.
fn with_placeholder(sent: &str) -> String {
    relength(&sent.replace(TOKEN, PLACEHOLDER))
}

/// An HTTP/1.1 request with its Content-Length set to its body's length. A synthetic address
/// is written in fewer characters when its hash has leading zero nibbles, so once pseudonyms
/// are masked, the probe's length and the real one are compared as the masked bodies' lengths.
fn relength(request: &str) -> String {
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| match l.strip_prefix("content-length: ") {
            Some(_) => format!("content-length: {}", body.len()),
            None => l.to_owned(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[tokio::test]
async fn the_probe_shows_a_placeholder_for_the_matomo_token_where_the_real_request_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("matomo.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let up = RawUpstream::start().await;
    let t = Tamis::start(&token_config(&up, &token_file)).await;
    let get = fixture("matomo-track-get.txt");
    let target = get.split_whitespace().nth(1).unwrap();
    let form = target.split_once('?').unwrap().1;
    // Name, method, path, Content-Type, body, and the token's place as the probe shows it.
    let cases = [
        (
            "GET (sent as a form POST)",
            "GET",
            format!("/mt{target}"),
            None,
            String::new(),
            "token_auth=<operator token_auth>",
        ),
        (
            "form POST",
            "POST",
            "/mt/matomo.php".into(),
            Some("application/x-www-form-urlencoded"),
            form.to_owned(),
            "token_auth=<operator token_auth>",
        ),
        (
            "bulk POST",
            "POST",
            "/mt/matomo.php".into(),
            Some("application/json"),
            fixture("matomo-bulk.json"),
            "\"token_auth\":\"<operator token_auth>\"",
        ),
    ];
    for (name, method, path, content_type, body, shown_token) in cases {
        let extra: Vec<_> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let headers = browser(&extra);
        let input = serde_json::json!({
            "method": method, "path": path, "headers": headers, "body": body,
        });
        let a = probe_raw(&t, input.to_string()).await;
        assert_eq!(a.status, 200, "{name}: {}", a.text());
        // Nowhere in the answer: not in the body, the bytes, the changes or the notes.
        let text = a.text();
        assert!(
            !text.contains(TOKEN),
            "{name}: the probe shows the token: {text}"
        );
        let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let shown = p["upstream"]["http1"].as_str().unwrap();
        assert!(shown.contains(shown_token), "{name}: {shown}");
        let body_shown = p["upstream"]["body"].as_str().unwrap();
        assert!(body_shown.contains(shown_token), "{name}: {body_shown}");
        let added: Vec<&serde_json::Value> = p["parameter_changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["field"] == "body: token_auth" && c["change"] == "added")
            .collect();
        assert_eq!(added.len(), 1, "{name}: {:#}", p["parameter_changes"]);
        assert!(
            added[0]["rule"].as_str().unwrap().contains(PLACEHOLDER),
            "{name}: {:#}",
            added[0]
        );

        // The real request carries the token in that very place: with the placeholder put
        // back (and the length it changes), the bytes are the probe's but for pseudonyms.
        let before = up.count();
        let a = real(&t, method, &path, &headers, &body).await;
        assert_eq!(up.count(), before + 1, "{name}: {} {}", a.status, a.text());
        let sent = String::from_utf8(up.last()).unwrap();
        assert!(
            sent.contains(TOKEN),
            "{name}: the upstream got no token: {sent}"
        );
        assert!(!sent.contains(PLACEHOLDER), "{name}: {sent}");
        let expected = with_placeholder(&sent);
        let pseudonyms = ["_id", "cid", "pv_id", "cip"];
        assert_eq!(
            relength(shown),
            shown,
            "{name}: the probe's length is its body's"
        );
        let (shown_masked, shown_values) = mask(shown, &pseudonyms);
        let (expected_masked, _) = mask(&expected, &pseudonyms);
        assert!(!shown_values.is_empty(), "{name}");
        assert_eq!(
            relength(&shown_masked),
            relength(&expected_masked),
            "{name}"
        );
    }
}

#[test]
fn the_probe_command_shows_a_placeholder_for_the_matomo_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("matomo.token"), TOKEN).unwrap();
    let config = dir.path().join("tamis.toml");
    // A relative token_file: read beside the config. Nothing listens upstream: the command
    // never connects anywhere.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"matomo\"\nkind = \"matomo\"\n\
         prefix = \"/mt/\"\nupstream = \"https://matomo.example/\"\njurisdiction = \"eu\"\n\
         client_ip = \"pseudonym\"\ntoken_file = \"matomo.token\"\n",
    )
    .unwrap();
    let get = fixture("matomo-track-get.txt");
    let target = get.split_whitespace().nth(1).unwrap();
    let request = dir.path().join("request");
    std::fs::write(
        &request,
        format!("GET /mt{target} HTTP/1.1\r\nHost: site.example\r\nUser-Agent: {UA}\r\n\r\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tamis"))
        .args(["probe", "--config"])
        .arg(&config)
        .arg(&request)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stdout.contains(TOKEN),
        "the command shows the token: {stdout}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    let p: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let http1 = p["upstream"]["http1"].as_str().unwrap();
    assert!(
        http1.starts_with("POST /matomo.php HTTP/1.1\r\n")
            && http1.ends_with("&token_auth=<operator token_auth>"),
        "{http1}"
    );
}
