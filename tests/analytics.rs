//! Tracking requests in their real wire formats, through tamis to recording upstreams: what the
//! analytics tool receives, exactly; and that malformed input is refused with nothing forwarded.

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use tamis::analytics::parse_query;

const UA_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn setup(
    kind: &str,
    extra: &str,
    reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> (Upstream, Tamis) {
    let up = Upstream::http(reply).await;
    let config = format!(
        "{LISTEN}[[route]]\nname = \"stats\"\nkind = \"{kind}\"\nprefix = \"/a/\"\nupstream = \"{}\"\n{extra}\n",
        up.url("/")
    );
    (up, Tamis::start(&config).await)
}

async fn post(t: &Tamis, path: &str, content_type: &str, body: &str) -> Answer {
    let mut b = http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "site.example");
    for (k, v) in VISITOR {
        if *k != "user-agent" {
            b = b.header(*k, *v);
        }
    }
    b = b
        .header("user-agent", UA_CHROME)
        .header("content-type", content_type);
    send(
        t.http,
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Headers the analytics upstream may see: content negotiation, the body's type, a generalised
/// User-Agent, Host. Nothing else.
fn assert_headers(seen: &Seen) {
    for name in seen.header_names() {
        assert!(
            [
                "accept",
                "accept-encoding",
                "content-type",
                "content-length",
                "host",
                "user-agent"
            ]
            .contains(&name.as_str()),
            "{name} reached the analytics upstream"
        );
    }
    assert_eq!(
        seen.header("user-agent"),
        Some("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        "browser family and major version only"
    );
}

#[tokio::test]
async fn ga4_batches_are_scrubbed_in_query_and_body() {
    let (up, t) = setup("ga4", "allow_event_params = [\"ep.page_type\"]", |_| {
        Reply::ok("").status(204)
    })
    .await;
    let raw = fixture("ga4-collect-batch.http");
    let target = raw
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    let query = target.split_once('?').unwrap().1;
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    let a = post(
        &t,
        &format!("/a/g/collect?{query}"),
        "text/plain;charset=UTF-8",
        body,
    )
    .await;
    assert_eq!(a.status, 204);
    let seen = up.last();
    assert_headers(&seen);
    let (path, q) = seen.uri.split_once('?').unwrap();
    assert_eq!(path, "/g/collect");
    let q = parse_query(q).unwrap();
    assert_eq!(get(&q, "dl"), Some("https://shop.example/order/confirm"));
    assert_eq!(get(&q, "ul"), Some("fr"));
    for gone in [
        "uid", "_fid", "ecid", "dr", "sr", "uaa", "uafvl", "uap", "uapv",
    ] {
        assert_eq!(get(&q, gone), None, "{gone}");
    }
    let cid = get(&q, "cid").unwrap().to_owned();
    assert_ne!(cid, "1823456789.1732439000");
    let body = String::from_utf8(seen.body.to_vec()).unwrap();
    let lines: Vec<_> = body
        .split("\r\n")
        .map(|l| parse_query(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{body:?}");
    assert_eq!(get(&lines[0], "ep.page_type"), Some("checkout"));
    assert_eq!(get(&lines[0], "ep.customer_email"), None);
    assert_eq!(get(&lines[1], "en"), Some("purchase"));
    assert_eq!(get(&lines[1], "up.loyalty_tier"), None);
    for secret in ["alice", "user-42", "search.example", "1920x1080", "Windows"] {
        assert!(
            !seen.uri.contains(secret) && !body.contains(secret),
            "{secret} forwarded"
        );
    }
    // The same visitor in the same period keeps the same pseudonym.
    post(&t, &format!("/a/g/collect?{query}"), "text/plain", "").await;
    assert_eq!(
        get(
            &parse_query(up.last().uri.split_once('?').unwrap().1).unwrap(),
            "cid"
        ),
        Some(cid.as_str())
    );
    let m = t.metrics().await;
    assert!(
        // cid, sid and _p, twice.
        m.contains("tamis_analytics_params_total{result=\"pseudonymised\",route=\"stats\"} 6"),
        "{m}"
    );
}

#[tokio::test]
async fn matomo_get_and_bulk() {
    let (up, t) = setup("matomo", "", |_| Reply::ok("").status(204)).await;
    let raw = fixture("matomo-track-get.txt");
    let target = raw.split_whitespace().nth(1).unwrap();
    let target = target.replacen("/matomo.php", "/a/matomo.php", 1);
    let a = get_visitor(&t, &target).await;
    assert_eq!(a.status, 204);
    let seen = up.last();
    assert_headers(&seen);
    let q = parse_query(seen.uri.split_once('?').unwrap().1).unwrap();
    assert_eq!(get(&q, "url"), Some("https://shop.example/account"));
    for gone in [
        "uid", "cip", "urlref", "_idts", "_viewts", "res", "uadata", "_cvar", "h", "m", "s",
    ] {
        assert_eq!(get(&q, gone), None, "{gone}");
    }
    assert_eq!(get(&q, "_id").map(str::len), Some(16));

    let bulk = fixture("matomo-bulk.json");
    let a = post(&t, "/a/matomo.php", "application/json", &bulk).await;
    assert_eq!(a.status, 204);
    let body = String::from_utf8(up.last().body.to_vec()).unwrap();
    assert!(
        !body.contains("token_auth")
            && !body.contains("should-never")
            && !body.contains("bob")
            && !body.contains("1280x720"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
}

async fn get_visitor(t: &Tamis, target: &str) -> Answer {
    let mut headers: Vec<(&str, &str)> = VISITOR
        .iter()
        .filter(|(k, _)| *k != "user-agent")
        .copied()
        .collect();
    headers.push(("user-agent", UA_CHROME));
    t.get_with(target, &headers).await
}

#[tokio::test]
async fn plausible_events() {
    let (up, t) = setup(
        "plausible",
        "allow_event_params = [\"author\"]\nallow_url_params = [\"utm_source\"]",
        |_| Reply::ok("ok").status(202),
    )
    .await;
    let a = post(
        &t,
        "/a/api/event?uid=42",
        "text/plain",
        &fixture("plausible-event.json"),
    )
    .await;
    assert_eq!(a.status, 202);
    let seen = up.last();
    assert_headers(&seen);
    assert_eq!(seen.uri, "/api/event", "no query to the upstream");
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"n": "pageview", "v": 20, "u": "https://blog.example/post/12?utm_source=newsletter", "d": "blog.example", "p": {"author": "Jo"}, "h": 0})
    );
}

#[tokio::test]
async fn umami_events_and_answers() {
    let (up, t) = setup("umami", "allow_event_params = [\"plan\"]", |_| {
        Reply::ok(r#"{"cache":"eyJ0.x.y","sessionId":"5e1f","visitId":"9a2c"}"#)
            .header("content-type", "application/json")
            .header("set-cookie", "umami=1")
    })
    .await;
    let a = post(
        &t,
        "/a/api/send",
        "application/json",
        &fixture("umami-send.json"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.text(),
        "{}",
        "session identifiers never reach the visitor"
    );
    assert!(a.headers.get("set-cookie").is_none());
    let seen = up.last();
    assert_headers(&seen);
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(v["payload"]["url"], "/reset");
    assert_eq!(v["payload"]["referrer"], "");
    assert_eq!(v["payload"]["language"], "fr");
    assert_eq!(v["payload"]["data"], serde_json::json!({"plan": "pro"}));
    assert!(v["payload"].get("screen").is_none());
}

#[tokio::test]
async fn malformed_input_gets_a_4xx_and_nothing_is_forwarded() {
    for (kind, path, ct, body, want) in [
        (
            "plausible",
            "/a/api/event",
            "application/json",
            "{\"n\": ",
            400u16,
        ),
        (
            "plausible",
            "/a/api/event",
            "application/json",
            "[1,2,3]",
            400,
        ),
        (
            "umami",
            "/a/api/send",
            "application/json",
            "{\"type\":\"identify\",\"payload\":{\"id\":\"alice\"}}",
            400,
        ),
        (
            "matomo",
            "/a/matomo.php",
            "application/json",
            "{\"requests\": \"nope\"}",
            400,
        ),
        ("ga4", "/a/g/collect?cid=%zz", "text/plain", "", 400),
        ("ga4", "/a/g/collect", "text/plain", "en=x&y=%e9", 400),
    ] {
        let (up, t) = setup(kind, "", |_| Reply::ok("")).await;
        let a = post(&t, path, ct, body).await;
        assert_eq!(a.status, want, "{kind} {path} {body}");
        assert_eq!(up.count(), 0, "{kind}: something was forwarded");
    }
    let (up, t) = setup("ga4", "max_body = 1024", |_| Reply::ok("")).await;
    assert_eq!(
        post(&t, "/a/g/collect", "text/plain", &"x".repeat(2048))
            .await
            .status,
        413
    );
    // 10 000 parameters (40 KB: under the default body cap, over the parameter limit).
    let (flood_up, flood_t) = setup("ga4", "", |_| Reply::ok("")).await;
    let flood = vec!["a=1"; 10_000].join("&");
    assert_eq!(
        post(&flood_t, "/a/g/collect", "text/plain", &flood)
            .await
            .status,
        400
    );
    // In the query it is also over the request-head limit (limits.max_header_bytes).
    assert_eq!(
        post(&flood_t, &format!("/a/g/collect?{flood}"), "text/plain", "")
            .await
            .status,
        431
    );
    assert_eq!(flood_up.count(), 0);
    assert_eq!(
        post(&t, "/a/other.php", "text/plain", "").await.status,
        404,
        "only the tracking endpoint"
    );
    assert_eq!(
        request(t.http, Method::PUT, "/a/g/collect", &[])
            .await
            .status,
        405
    );
    assert_eq!(up.count(), 0);
    // Still healthy.
    assert_eq!(
        post(&t, "/a/g/collect?v=2", "text/plain", "en=page_view")
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn only_an_eu_route_may_receive_a_truncated_address() {
    let (up, t) = setup(
        "plausible",
        "jurisdiction = \"eu\"\nclient_ip = \"truncated\"",
        |_| Reply::ok("ok"),
    )
    .await;
    post(
        &t,
        "/a/api/event",
        "application/json",
        "{\"n\":\"pageview\",\"u\":\"https://blog.example/\",\"d\":\"blog.example\"}",
    )
    .await;
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("127.0.0.0"),
        "IPv4 truncated to /24"
    );
}

#[tokio::test]
async fn every_protocol_drops_path_parameters_from_page_urls() {
    // Servlet containers and some PHP setups put the session id in a path parameter.
    let session = "jsessionid=0A1B2C3D";
    let (ga, t) = setup("ga4", "", |_| Reply::ok("").status(204)).await;
    let dl = format!("https%3A%2F%2Fshop.example%2Fcart%3B{session}%2Fpay%3Bsid%3D42");
    let dr = format!("https%3A%2F%2Fshop.example%2Fcart%3B{session}");
    post(
        &t,
        &format!("/a/g/collect?v=2&tid=G-1&dl={dl}&dr={dr}"),
        "text/plain",
        &format!("en=page_view&dl={dl}&dr={dr}"),
    )
    .await;
    let seen = ga.last();
    let q = parse_query(seen.uri.split_once('?').unwrap().1).unwrap();
    assert_eq!(get(&q, "dl"), Some("https://shop.example/cart/pay"));
    assert_eq!(get(&q, "dr"), Some("https://shop.example/cart"));
    let line = parse_query(std::str::from_utf8(&seen.body).unwrap()).unwrap();
    assert_eq!(get(&line, "dl"), Some("https://shop.example/cart/pay"));
    assert_eq!(get(&line, "dr"), Some("https://shop.example/cart"));

    let (matomo, t) = setup("matomo", "", |_| Reply::ok("").status(204)).await;
    get_visitor(
        &t,
        &format!("/a/matomo.php?idsite=3&rec=1&url={dl}&urlref={dr}&link={dl}&download={dl}"),
    )
    .await;
    let q = parse_query(matomo.last().uri.split_once('?').unwrap().1).unwrap();
    assert_eq!(get(&q, "url"), Some("https://shop.example/cart/pay"));
    assert_eq!(get(&q, "urlref"), Some("https://shop.example/cart"));
    assert_eq!(get(&q, "link"), Some("https://shop.example/cart/pay"));
    assert_eq!(get(&q, "download"), Some("https://shop.example/cart/pay"));

    let (plausible, t) = setup("plausible", "", |_| Reply::ok("ok").status(202)).await;
    post(
        &t,
        "/a/api/event",
        "text/plain",
        &format!(
            r#"{{"n":"pageview","d":"shop.example","u":"https://shop.example/cart;{session}/pay","r":"https://shop.example/cart;{session}"}}"#
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&plausible.last().body).unwrap();
    assert_eq!(v["u"], "https://shop.example/cart/pay");
    assert_eq!(v["r"], "https://shop.example/cart");

    let (umami, t) = setup("umami", "", |_| Reply::ok("{}")).await;
    post(
        &t,
        "/a/api/send",
        "application/json",
        &format!(
            r#"{{"type":"event","payload":{{"website":"w","hostname":"shop.example","url":"/cart;{session}/pay","referrer":"https://shop.example/cart;{session}"}}}}"#
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&umami.last().body).unwrap();
    assert_eq!(v["payload"]["url"], "/cart/pay");
    assert_eq!(v["payload"]["referrer"], "https://shop.example/cart");
}

#[tokio::test]
async fn matomo_form_posts_are_judged_as_matomo_reads_get_and_post() {
    // Matomo reads `$_GET + $_POST`: a name in the query hides the body's, and the referrer is
    // judged against the page Matomo will read.
    let (up, t) = setup("matomo", "", |_| Reply::ok("").status(204)).await;
    let a = post(
        &t,
        "/a/matomo.php?idsite=3&rec=1&url=https%3A%2F%2Fshop.example%2Fa",
        "application/x-www-form-urlencoded",
        "url=https%3A%2F%2Fevil.example%2F&urlref=https%3A%2F%2Fevil.example%2Fsecret&action_name=A",
    )
    .await;
    assert_eq!(a.status, 204);
    let seen = up.last();
    let body = String::from_utf8(seen.body.to_vec()).unwrap();
    assert!(!body.contains("evil"), "{body}");
    assert_eq!(get(&parse_query(&body).unwrap(), "action_name"), Some("A"));
    let q = parse_query(seen.uri.split_once('?').unwrap().1).unwrap();
    assert_eq!(get(&q, "url"), Some("https://shop.example/a"));
}
