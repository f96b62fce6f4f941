//! Location and unique visitors without the address (issue 21): a small MaxMind-format database
//! made here, many simulated visitors (their addresses given by a trusted proxy on loopback),
//! and recording upstreams per protocol that show exactly what arrives.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use maxminddb_writer::paths::IpAddrWithMask;
use tamis::analytics::parse_query;

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";

/// Networks of the test database: (network, country, first subdivision).
const PLACES: &[(&str, &str, Option<&str>)] = &[
    ("198.51.100.0/24", "FR", Some("IDF")),
    ("203.0.113.0/24", "FR", Some("BRE")),
    ("192.0.2.0/24", "DE", Some("BE")),
    ("100.64.0.0/16", "LU", None),
];

#[derive(serde::Serialize)]
struct Record {
    country: BTreeMap<&'static str, &'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subdivisions: Vec<BTreeMap<&'static str, &'static str>>,
}

/// Writes a GeoIP2-City-shaped database of `places` to `dir/geo.mmdb`.
fn mmdb(dir: &Path, places: &[(&str, &'static str, Option<&'static str>)]) -> PathBuf {
    let mut db = maxminddb_writer::Database::default();
    db.metadata.binary_format_major_version = 2;
    db.metadata.database_type = "tamis-test-City".to_owned();
    db.metadata.languages = vec!["en".to_owned()];
    for (net, country, region) in places {
        let record = Record {
            country: BTreeMap::from([("iso_code", *country)]),
            subdivisions: region
                .map(|r| vec![BTreeMap::from([("iso_code", r)])])
                .unwrap_or_default(),
        };
        let data = db.insert_value(record).unwrap();
        db.insert_node(net.parse::<IpAddrWithMask>().unwrap(), data);
    }
    let path = dir.join("geo.mmdb");
    let file = std::fs::File::create(&path).unwrap();
    db.write_to(file).unwrap();
    path
}

/// tamis behind a trusted proxy (the test client), with the database and `route` lines.
async fn start(dir: &Path, routes: &str) -> Tamis {
    let db = mmdb(dir, PLACES);
    Tamis::start(&config(&db, "[admin]\nlisten = \"127.0.0.1:0\"\n", routes)).await
}

/// A config behind a trusted proxy (the test client) with the database `db`, the sections
/// `extra` and the `routes`.
fn config(db: &Path, extra: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"0s\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
         {extra}\n[geo]\ndatabase = \"{}\"\n\n{routes}",
        db.display()
    )
}

fn analytics_route(name: &str, kind: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nkind = \"{kind}\"\nprefix = \"/{name}/\"\nupstream = \"{}\"\njurisdiction = \"eu\"\n{extra}\n",
        up.url("/")
    )
}

/// One tracking request from the visitor at `client` (as the trusted proxy says).
async fn track(
    t: &Tamis,
    method: Method,
    path: &str,
    client: &str,
    ua: &str,
    content_type: &str,
    body: &str,
) -> Answer {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "site.example")
        .header("user-agent", ua)
        .header("x-forwarded-for", client)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(t.http, req).await
}

fn umami_event() -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/umami-send.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Every textual form of an address's bytes that could betray it: dotted, each octet pair as
/// hex (how IPv6 forms embed an IPv4), and the first three octets.
fn forms_of(ipv4: &str) -> Vec<String> {
    let o: Vec<u8> = ipv4.split('.').map(|p| p.parse().unwrap()).collect();
    vec![
        ipv4.to_owned(),
        format!("{}.{}.{}.", o[0], o[1], o[2]),
        format!("{:x}{:02x}:{:x}{:02x}", o[0], o[1], o[2], o[3]),
        format!("{:02x}{:02x}:{:02x}{:02x}", o[0], o[1], o[2], o[3]),
    ]
}

fn assert_no_address(seen: &Seen, client: &str) {
    let mut all = seen.uri.clone();
    for (k, v) in &seen.headers {
        all.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
    }
    all.push_str(&String::from_utf8_lossy(&seen.body));
    for form in forms_of(client) {
        assert!(
            !all.contains(&form),
            "{form} of {client} reached the upstream:\n{all}"
        );
    }
}

#[tokio::test]
async fn a_region_reaches_umami_only_once_enough_visitors_were_seen_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let t = start(
        dir.path(),
        &analytics_route(
            "u",
            "umami",
            &up,
            "location = \"region\"\nmin_visitors = 10\nclient_ip = \"pseudonym\"",
        ),
    )
    .await;
    let body = umami_event();
    // Nine visitors in Île-de-France: not enough for the region, nor for France.
    for n in 1..=9 {
        let client = format!("198.51.100.{n}");
        let a = track(
            &t,
            Method::POST,
            "/u/api/send",
            &client,
            UA,
            "application/json",
            &body,
        )
        .await;
        assert_eq!(a.status, 200);
        let seen = up.last();
        assert_eq!(seen.header("cf-ipcountry"), None, "visitor {n}");
        assert_eq!(seen.header("cf-region-code"), None, "visitor {n}");
        assert_no_address(&seen, &client);
    }
    // The first visitor again is still one visitor: nothing yet.
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "198.51.100.1",
        UA,
        "application/json",
        &body,
    )
    .await;
    assert_eq!(up.last().header("cf-ipcountry"), None);
    // The tenth: region and country, for them and for everyone after.
    for n in 10..=40 {
        let client = format!("198.51.100.{n}");
        track(
            &t,
            Method::POST,
            "/u/api/send",
            &client,
            UA,
            "application/json",
            &body,
        )
        .await;
        let seen = up.last();
        assert_eq!(seen.header("cf-ipcountry"), Some("FR"), "visitor {n}");
        assert_eq!(seen.header("cf-region-code"), Some("IDF"), "visitor {n}");
        assert_no_address(&seen, &client);
    }
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "198.51.100.1",
        UA,
        "application/json",
        &body,
    )
    .await;
    assert_eq!(up.last().header("cf-region-code"), Some("IDF"));
    // One visitor in Brittany: France is past the threshold, Brittany is not.
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "203.0.113.7",
        UA,
        "application/json",
        &body,
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.header("cf-ipcountry"), Some("FR"));
    assert_eq!(seen.header("cf-region-code"), None);
    assert_no_address(&seen, "203.0.113.7");
    // Germany has one visitor: nothing at all.
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "192.0.2.9",
        UA,
        "application/json",
        &body,
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.header("cf-ipcountry"), None);
    assert_eq!(seen.header("cf-region-code"), None);
    // An address the database does not know: nothing either.
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "8.8.8.8",
        UA,
        "application/json",
        &body,
    )
    .await;
    assert_eq!(up.last().header("cf-ipcountry"), None);
    // What the gate released, for the operator tuning min_visitors.
    let metrics = t.metrics().await;
    for (released, n) in [("region", 32), ("country", 1), ("none", 12)] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("tamis_analytics_location_total")
                    && l.contains(&format!("released=\"{released}\""))
                    && l.contains("route=\"u\"")
                    && l.ends_with(&format!(" {n}"))),
            "{released} {n}:\n{metrics}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_visitor_keeps_one_synthetic_address_per_period_and_gets_another_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("").status(202)).await;
    let t = start(
        dir.path(),
        &analytics_route(
            "p",
            "plausible",
            &up,
            "client_ip = \"pseudonym\"\nrotate = \"2s\"",
        ),
    )
    .await;
    let event = r#"{"n":"pageview","u":"https://site.example/","d":"site.example"}"#;
    let address = |seen: &Seen| -> std::net::Ipv6Addr {
        seen.header("x-forwarded-for")
            .expect("a synthetic address")
            .parse()
            .expect("one IPv6 address")
    };
    let doc: ipnet::Ipv6Net = "2001:db8::/32".parse().unwrap();
    // Within a period: one address per visitor, another per visitor. A pair that straddles the
    // rotation is tried again (the period is 2 s).
    let mut pair = None;
    for _ in 0..5 {
        let mut seen = Vec::new();
        for (client, ua) in [
            ("198.51.100.20", UA),
            ("198.51.100.20", UA),
            ("198.51.100.21", UA),
            (
                "198.51.100.20",
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
        ] {
            let a = track(
                &t,
                Method::POST,
                "/p/api/event",
                client,
                ua,
                "application/json",
                event,
            )
            .await;
            assert_eq!(a.status, 202);
            let s = up.last();
            assert_no_address(&s, client);
            seen.push(address(&s));
        }
        if seen[0] == seen[1] {
            pair = Some(seen);
            break;
        }
    }
    let seen = pair.expect("one address within a period");
    for a in &seen {
        assert!(doc.contains(a), "{a} is outside the documentation range");
        // 20 bits of hash after the prefix, nothing after them.
        assert_eq!(a.octets()[6] & 0x0f, 0, "{a}");
        assert!(a.octets()[7..].iter().all(|b| *b == 0), "{a}");
    }
    assert_ne!(seen[0], seen[2], "two visitors, one address");
    assert_ne!(seen[0], seen[3], "another browser is another visitor");
    // After the rotation the same visitor has an address unrelated to the last one.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    track(
        &t,
        Method::POST,
        "/p/api/event",
        "198.51.100.20",
        UA,
        "application/json",
        event,
    )
    .await;
    assert_ne!(
        address(&up.last()),
        seen[0],
        "the address survived the rotation"
    );
    t.stop().await;
}

#[tokio::test]
async fn many_visitors_collide_into_fewer_synthetic_addresses_only_by_chance() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("").status(202)).await;
    // 8 bits: 256 addresses for 300 visitors, so collisions must show.
    let t = start(
        dir.path(),
        &analytics_route(
            "p",
            "plausible",
            &up,
            "client_ip = \"pseudonym\"\npseudonym_bits = 8",
        ),
    )
    .await;
    let event = r#"{"n":"pageview","u":"https://site.example/","d":"site.example"}"#;
    let mut distinct = HashSet::new();
    for n in 0..300u32 {
        let client = format!("100.64.{}.{}", n / 250, n % 250 + 1);
        track(
            &t,
            Method::POST,
            "/p/api/event",
            &client,
            UA,
            "application/json",
            event,
        )
        .await;
        distinct.insert(up.last().header("x-forwarded-for").unwrap().to_owned());
    }
    // Expected 2^8 (1 - (1 - 2^-8)^300) ≈ 176 distinct; far from 300, far from a handful.
    assert!(
        (140..=210).contains(&distinct.len()),
        "{} distinct addresses",
        distinct.len()
    );
    t.stop().await;
}

#[tokio::test]
async fn matomo_gets_cip_country_and_region_with_the_operators_token_never_in_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("matomo-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let up = Upstream::http(|_| Reply::ok("").status(204)).await;
    let t = start(
        dir.path(),
        &analytics_route(
            "m",
            "matomo",
            &up,
            &format!(
                "location = \"region\"\nmin_visitors = 2\nclient_ip = \"pseudonym\"\ntoken_file = \"{}\"",
                token.display()
            ),
        ),
    )
    .await;
    // The browser's own cip and token_auth are never taken.
    let target = "/m/matomo.php?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2F&_id=4f2a9c81be03d7e6&cip=203.0.113.9&token_auth=browser&country=us";
    for n in 1..=3 {
        let client = format!("198.51.100.{n}");
        let a = track(&t, Method::GET, target, &client, UA, "text/plain", "").await;
        assert_eq!(a.status, 204);
        let seen = up.last();
        assert_no_address(&seen, &client);
        // Sent as the equivalent form POST: the token stays out of every URL.
        assert_eq!(seen.method, Method::POST);
        assert!(!seen.uri.contains("token_auth"), "{}", seen.uri);
        assert_eq!(
            seen.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form = parse_query(std::str::from_utf8(&seen.body).unwrap()).unwrap();
        let all = |k: &str| -> Vec<&str> {
            form.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(all("token_auth"), ["0123456789abcdef0123456789abcdef"]);
        assert_eq!(all("idsite"), ["3"]);
        let cip = all("cip");
        assert_eq!(cip.len(), 1);
        assert!(cip[0].starts_with("2001:db8:"), "{cip:?}");
        assert_eq!(seen.header("x-forwarded-for"), None);
        if n == 1 {
            assert!(all("country").is_empty() && all("region").is_empty());
        } else {
            assert_eq!(all("country"), ["fr"]);
            assert_eq!(all("region"), ["IDF"]);
        }
    }
    // A bulk request: each request carries the visitor, the token goes once, in the body.
    let bulk = r#"{"requests":["?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2Fa","?idsite=3&rec=1&url=https%3A%2F%2Fsite.example%2Fb"],"token_auth":"browser"}"#;
    let a = track(
        &t,
        Method::POST,
        "/m/matomo.php",
        "198.51.100.1",
        UA,
        "application/json",
        bulk,
    )
    .await;
    assert_eq!(a.status, 204);
    let seen = up.last();
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(json["token_auth"], "0123456789abcdef0123456789abcdef");
    for r in json["requests"].as_array().unwrap() {
        let q = parse_query(r.as_str().unwrap()).unwrap();
        assert!(q
            .iter()
            .any(|(k, v)| k == "cip" && v.starts_with("2001:db8:")));
        assert!(q.iter().any(|(k, v)| k == "region" && v == "IDF"));
    }
    assert_no_address(&seen, "198.51.100.1");
    t.stop().await;
}

#[tokio::test]
async fn without_location_or_pseudonym_nothing_of_the_address_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    // The database is loaded, but this route asks for nothing.
    let t = start(dir.path(), &analytics_route("u", "umami", &up, "")).await;
    for n in 1..=12 {
        let client = format!("198.51.100.{n}");
        track(
            &t,
            Method::POST,
            "/u/api/send",
            &client,
            UA,
            "application/json",
            &umami_event(),
        )
        .await;
        let seen = up.last();
        for h in ["cf-ipcountry", "cf-region-code", "x-forwarded-for"] {
            assert_eq!(seen.header(h), None, "{h}");
        }
        assert_no_address(&seen, &client);
    }
    t.stop().await;
}

#[tokio::test]
async fn a_reload_reads_the_database_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let routes = analytics_route(
        "u",
        "umami",
        &up,
        "location = \"country\"\nmin_visitors = 2",
    );
    let t = start(dir.path(), &routes).await;
    let body = umami_event();
    for n in 1..=2 {
        track(
            &t,
            Method::POST,
            "/u/api/send",
            &format!("198.51.100.{n}"),
            UA,
            "application/json",
            &body,
        )
        .await;
    }
    assert_eq!(up.last().header("cf-ipcountry"), Some("FR"));
    // The operator replaces the database (198.51.100.0/24 is now in Belgium) and reloads.
    mmdb(dir.path(), &[("198.51.100.0/24", "BE", None)]);
    let config = std::fs::read_to_string(&t.config_path).unwrap();
    assert_eq!(t.reload(&config).await.status, 200);
    for n in 1..=2 {
        track(
            &t,
            Method::POST,
            "/u/api/send",
            &format!("198.51.100.{n}"),
            UA,
            "application/json",
            &body,
        )
        .await;
    }
    assert_eq!(up.last().header("cf-ipcountry"), Some("BE"));
    t.stop().await;
}

#[tokio::test]
async fn every_protocol_gets_the_synthetic_address_where_its_server_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("matomo-token");
    std::fs::write(&token, "0123456789abcdef").unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").status(200)).await;
    let pseudonym = "client_ip = \"pseudonym\"";
    let routes = [
        analytics_route("g", "ga4", &up, pseudonym),
        analytics_route("p", "plausible", &up, pseudonym),
        analytics_route("u", "umami", &up, pseudonym),
        analytics_route(
            "m",
            "matomo",
            &up,
            &format!("{pseudonym}\ntoken_file = \"{}\"", token.display()),
        ),
    ]
    .concat();
    let t = start(dir.path(), &routes).await;
    let cases = [
        (
            "/g/g/collect?v=2&tid=G-1&cid=1.2&en=page_view&dl=https%3A%2F%2Fsite.example%2F",
            "text/plain",
            String::new(),
            "x-forwarded-for",
        ),
        (
            "/p/api/event",
            "application/json",
            r#"{"n":"pageview","u":"https://site.example/","d":"site.example"}"#.to_owned(),
            "x-forwarded-for",
        ),
        (
            "/u/api/send",
            "application/json",
            umami_event(),
            "x-forwarded-for",
        ),
        (
            "/m/matomo.php?idsite=1&rec=1&url=https%3A%2F%2Fsite.example%2F",
            "text/plain",
            String::new(),
            "cip",
        ),
    ];
    for (path, content_type, body, field) in cases {
        let method = if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let a = track(&t, method, path, "203.0.113.77", UA, content_type, &body).await;
        assert_eq!(a.status, 200, "{path}");
        let seen = up.last();
        assert_no_address(&seen, "203.0.113.77");
        let address = if field == "cip" {
            let form = parse_query(std::str::from_utf8(&seen.body).unwrap()).unwrap();
            assert_eq!(seen.header("x-forwarded-for"), None);
            form.into_iter().find(|(k, _)| k == "cip").map(|(_, v)| v)
        } else {
            seen.header(field).map(str::to_owned)
        };
        let address: std::net::Ipv6Addr = address
            .unwrap_or_else(|| panic!("{path}: no {field}"))
            .parse()
            .unwrap();
        assert_eq!(address.segments()[..2], [0x2001, 0xdb8], "{path}");
    }
    t.stop().await;
}

#[tokio::test]
async fn an_ipv6_address_carrying_an_ipv4_is_located_as_that_ipv4_and_leaves_in_no_form() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let t = start(
        dir.path(),
        &analytics_route(
            "u",
            "umami",
            &up,
            "location = \"region\"\nmin_visitors = 2\nclient_ip = \"pseudonym\"",
        ),
    )
    .await;
    // 203.0.113.7 (Brittany in the test database) behind 6to4, Teredo, NAT64 and the
    // IPv4-compatible form: four addresses of one visitor (that IPv4), in Brittany. A second
    // visitor there (203.0.113.8, between the rounds) opens the region.
    let clients = EMBEDDING_203_0_113_7
        .iter()
        .chain(EMBEDDING_203_0_113_7.iter());
    for (i, client) in clients.enumerate() {
        if i == EMBEDDING_203_0_113_7.len() {
            let a = track(
                &t,
                Method::POST,
                "/u/api/send",
                "203.0.113.8",
                UA,
                "application/json",
                &umami_event(),
            )
            .await;
            assert_eq!(a.status, 200);
            assert_eq!(up.last().header("cf-region-code"), Some("BRE"));
        }
        let a = track(
            &t,
            Method::POST,
            "/u/api/send",
            client,
            UA,
            "application/json",
            &umami_event(),
        )
        .await;
        assert_eq!(a.status, 200, "{client}");
        let mut seen = up.last();
        let region = (i >= EMBEDDING_203_0_113_7.len()).then_some("BRE");
        assert_eq!(seen.header("cf-region-code"), region, "{client}");
        // The synthetic address is checked on its own: its hash digits could spell anything.
        let xff: std::net::Ipv6Addr = seen.header("x-forwarded-for").unwrap().parse().unwrap();
        assert_eq!(xff.segments()[..2], [0x2001, 0xdb8], "{client}");
        seen.headers.remove("x-forwarded-for");
        let mut all = seen.uri.clone();
        for (k, v) in &seen.headers {
            all.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
        }
        all.push_str(&String::from_utf8_lossy(&seen.body));
        for form in EMBEDDED_203_0_113_7_FORMS.iter().chain([client]) {
            assert!(
                !all.contains(form),
                "{form} of {client} reached the upstream:\n{all}"
            );
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn addresses_rotating_inside_one_ipv6_64_are_one_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let db = ipv6_ile_de_france(dir.path());
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let routes = analytics_route(
        "u",
        "umami",
        &up,
        "location = \"region\"\nmin_visitors = 3\nclient_ip = \"pseudonym\"",
    );
    let t = Tamis::start(&config(&db, "", &routes)).await;
    // One subscriber's privacy-extension addresses: one visitor, one synthetic address, and
    // never enough on their own to open the region.
    let mut synthetic = HashSet::new();
    for i in 1..=5 {
        let client = format!("2a01:e0a:1:2:{i}::{i}");
        track(
            &t,
            Method::POST,
            "/u/api/send",
            &client,
            UA,
            "application/json",
            &umami_event(),
        )
        .await;
        let seen = up.last();
        assert_eq!(seen.header("cf-region-code"), None, "{client}");
        synthetic.insert(seen.header("x-forwarded-for").unwrap().to_owned());
        assert!(!format!("{:?}{}", seen.headers, seen.uri).contains("2a01:e0a"));
    }
    assert_eq!(synthetic.len(), 1, "{synthetic:?}");
    // Two more subscribers: three visitors, the region opens.
    for client in ["2a01:e0a:1:3::1", "2a01:e0a:1:4::1"] {
        track(
            &t,
            Method::POST,
            "/u/api/send",
            client,
            UA,
            "application/json",
            &umami_event(),
        )
        .await;
    }
    assert_eq!(up.last().header("cf-region-code"), Some("IDF"));
    t.stop().await;
}

#[tokio::test]
async fn a_probe_shows_a_synthetic_address_but_never_a_location_and_moves_no_live_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = mmdb(dir.path(), PLACES);
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let routes = analytics_route(
        "u",
        "umami",
        &up,
        "location = \"region\"\nmin_visitors = 2\nclient_ip = \"pseudonym\"",
    );
    let t = Tamis::start(&config(&db, "[transparency]\nprobe = true\n", &routes)).await;
    let body = umami_event();
    // Île-de-France is open to real requests.
    for client in ["198.51.100.1", "198.51.100.2"] {
        track(
            &t,
            Method::POST,
            "/u/api/send",
            client,
            UA,
            "application/json",
            &body,
        )
        .await;
    }
    assert_eq!(up.last().header("cf-region-code"), Some("IDF"));
    // One real visitor in Berlin (192.0.2.0/24, where the probe's own 192.0.2.1 is too).
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "192.0.2.9",
        UA,
        "application/json",
        &body,
    )
    .await;
    assert_eq!(up.last().header("cf-ipcountry"), None);
    let sent = up.count();
    for client in ["198.51.100.3", "192.0.2.10"] {
        let input = serde_json::json!({
            "method": "POST",
            "path": "/u/api/send",
            "headers": [["Host", "site.example"], ["User-Agent", UA],
                        ["Content-Type", "application/json"], ["X-Forwarded-For", client]],
            "body": body,
        });
        let req = http::Request::builder()
            .method(Method::POST)
            .uri("/.well-known/tamis/probe")
            .header("host", "site.example")
            .body(Full::new(Bytes::from(input.to_string())))
            .unwrap();
        let a = send(t.http, req).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let wire = p["upstream"]["http1"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(wire.contains("\r\nx-forwarded-for: 2001:db8:"), "{wire}");
        assert!(
            !wire.contains("cf-ipcountry") && !wire.contains("cf-region-code"),
            "{wire}"
        );
        assert!(
            !wire.contains(client) && !wire.contains("192.0.2."),
            "{wire}"
        );
    }
    assert_eq!(up.count(), sent, "a probe reached the upstream");
    // Had the probe (at 192.0.2.1) been counted live, Berlin would have two visitors now.
    track(
        &t,
        Method::POST,
        "/u/api/send",
        "192.0.2.9",
        UA,
        "application/json",
        &body,
    )
    .await;
    assert_eq!(up.last().header("cf-ipcountry"), None);
    t.stop().await;
}

/// What one person can vary at will from one request to the next: the Host they send, their
/// User-Agent (browser and version), content negotiation, and the page and its parameters.
fn disguise(i: usize) -> (Vec<(&'static str, String)>, String) {
    const UAS: &[&str] = &[
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
        "curl/8.5.0",
    ];
    const LANGUAGES: &[&str] = &["fr-FR,fr;q=0.9", "en-US", "de", "br-FR", "*"];
    let host = format!("site-{i}.example");
    let headers = vec![
        ("host", host.clone()),
        ("user-agent", UAS[i % UAS.len()].to_owned()),
        (
            "accept",
            ["*/*", "application/json", "text/html"][i % 3].to_owned(),
        ),
        (
            "accept-encoding",
            ["gzip", "br", "identity", "zstd"][i % 4].to_owned(),
        ),
        ("accept-language", LANGUAGES[i % LANGUAGES.len()].to_owned()),
    ];
    let body = serde_json::json!({
        "type": "event",
        "payload": {
            "website": "6d2c5b3e-7b4a-4f1e-9a0d-2f7c8e1b5a90",
            "hostname": host,
            "language": LANGUAGES[i % LANGUAGES.len()],
            "url": format!("/page/{i}?utm_source=n{i}"),
        }
    });
    (headers, body.to_string())
}

/// One Umami event from `client` (as the trusted proxy says) in disguise `i`; the location
/// headers the upstream received.
async fn disguised(
    t: &Tamis,
    up: &Upstream,
    client: &str,
    i: usize,
) -> (Option<String>, Option<String>) {
    let (headers, body) = disguise(i);
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("/u/api/send?v={i}"))
        .header("x-forwarded-for", client)
        .header("content-type", "application/json");
    for (k, v) in &headers {
        req = req.header(*k, v);
    }
    let a = send(t.http, req.body(Full::new(Bytes::from(body))).unwrap()).await;
    assert_eq!(a.status, 200, "{client} {i}");
    let seen = up.last();
    (
        seen.header("cf-ipcountry").map(str::to_owned),
        seen.header("cf-region-code").map(str::to_owned),
    )
}

#[tokio::test]
async fn one_subscriber_varying_every_request_field_never_opens_a_cell_alone() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let t = start(
        dir.path(),
        &analytics_route(
            "u",
            "umami",
            &up,
            "location = \"region\"\nmin_visitors = 3\nclient_ip = \"pseudonym\"",
        ),
    )
    .await;
    // 198.51.100.50 (Île-de-France in the test database) as itself, behind 6to4 (any
    // interface id) and behind NAT64: one subscriber.
    let one = [
        "198.51.100.50".to_owned(),
        "2002:c633:6432::1".to_owned(),
        "2002:c633:6432:7::42".to_owned(),
        "64:ff9b::c633:6432".to_owned(),
    ];
    for i in 0..40 {
        let client = &one[i % one.len()];
        let released = disguised(&t, &up, client, i).await;
        assert_eq!(
            released,
            (None, None),
            "{client} in disguise {i} opened a cell"
        );
    }
    // Two other subscribers: three people, and the cell opens (the test can tell).
    disguised(&t, &up, "198.51.100.51", 0).await;
    let third = disguised(&t, &up, "198.51.100.52", 0).await;
    assert_eq!(third, (Some("FR".into()), Some("IDF".into())));
    t.stop().await;
}

#[tokio::test]
async fn one_ipv6_64_varying_its_interface_id_and_every_request_field_never_opens_a_cell_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = ipv6_ile_de_france(dir.path());
    let up = Upstream::http(|_| Reply::ok("{}").header("content-type", "application/json")).await;
    let routes = analytics_route(
        "u",
        "umami",
        &up,
        "location = \"country\"\nmin_visitors = 2\nclient_ip = \"pseudonym\"",
    );
    let t = Tamis::start(&config(&db, "", &routes)).await;
    for i in 0..30 {
        let client = format!("2a01:e0a:1:2:{:x}:{:x}::{:x}", i * 7919, i, i + 1);
        let released = disguised(&t, &up, &client, i).await;
        assert_eq!(
            released,
            (None, None),
            "{client} in disguise {i} opened a cell"
        );
    }
    // A second /64: two subscribers, and France opens.
    let second = disguised(&t, &up, "2a01:e0a:1:3::1", 0).await;
    assert_eq!(second.0.as_deref(), Some("FR"));
    t.stop().await;
}

/// A database placing all of 2a01:e0a::/32 (one ISP's IPv6 block) in France, Île-de-France.
fn ipv6_ile_de_france(dir: &std::path::Path) -> std::path::PathBuf {
    let db = dir.join("v6.mmdb");
    let mut w = maxminddb_writer::Database::default();
    w.metadata.binary_format_major_version = 2;
    w.metadata.ip_version = maxminddb_writer::metadata::IpVersion::V6;
    let fr = w
        .insert_value(Record {
            country: BTreeMap::from([("iso_code", "FR")]),
            subdivisions: vec![BTreeMap::from([("iso_code", "IDF")])],
        })
        .unwrap();
    w.insert_node("2a01:e0a::/32".parse::<IpAddrWithMask>().unwrap(), fr);
    std::fs::write(&db, w.write_to(Vec::new()).unwrap()).unwrap();
    db
}
