//! Several replicas, one truth (issue 29): three tamis replicas in this process share a real
//! Redis server (Debian's `redis-server`, started here on a free port with persistence off),
//! a round-robin client spreads one visitor's hits over them, and a recording upstream shows
//! what leaves. Also: the store killed and restarted mid-run, a store that persists refused,
//! and admin actions relayed to every replica.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use maxminddb_writer::paths::IpAddrWithMask;
use tamis::analytics::parse_query;

/// The rotation period of every analytics route here: short, so rotation is seen in seconds
/// (tamis accepts any period of a second or more).
const PERIOD: u64 = 4;

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const CID: &str = "1823456789.1732439000";
const MATOMO_ID: &str = "0123456789abcdef";

/// A real Redis server on loopback, its data in a temporary folder.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Redis {
    /// Persistence off, as deploy/valkey/ configures it.
    fn start() -> Redis {
        Redis::with(&["--save", "", "--appendonly", "no"])
    }

    fn with(args: &[&str]) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (tests/setup.sh installs it)");
        self.child = Some(child);
        // Ready once it answers PING.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 16];
                // Any answer (NOAUTH when a password is set) means it is up.
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(serde::Serialize)]
struct Record {
    country: BTreeMap<&'static str, &'static str>,
    subdivisions: Vec<BTreeMap<&'static str, &'static str>>,
}

/// A location database placing 198.51.100.0/24 in Île-de-France.
fn mmdb(dir: &Path) -> PathBuf {
    let mut db = maxminddb_writer::Database::default();
    db.metadata.binary_format_major_version = 2;
    db.metadata.database_type = "tamis-test-City".to_owned();
    let data = db
        .insert_value(Record {
            country: BTreeMap::from([("iso_code", "FR")]),
            subdivisions: vec![BTreeMap::from([("iso_code", "IDF")])],
        })
        .unwrap();
    db.insert_node("198.51.100.0/24".parse::<IpAddrWithMask>().unwrap(), data);
    let path = dir.join("geo.mmdb");
    db.write_to(std::fs::File::create(&path).unwrap()).unwrap();
    path
}

/// One replica's config: behind a trusted proxy (the test client), GA4, Matomo (with a
/// synthetic address) and Umami (with a synthetic address and the location gate) routes to
/// `up`, and `cluster` as given.
fn config(dir: &Path, up: &Upstream, admin: u16, cluster: &str) -> String {
    let token = dir.join("matomo-token");
    std::fs::write(&token, "tokenAuthForTheTests0000000000").unwrap();
    let admin_token = dir.join("admin-token");
    std::fs::write(&admin_token, "replica-admin-token-0123456789").unwrap();
    let rotate = format!("rotate = \"{PERIOD}s\"");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"0s\"\nshutdown_timeout = \"1s\"\n\
         trusted_proxies = [\"127.0.0.1\"]\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"{}\"\n\n\
         [geo]\ndatabase = \"{}\"\n\n{cluster}\n\
         [[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/ga/\"\nupstream = \"{}\"\n{rotate}\n\n\
         [[route]]\nname = \"m\"\nkind = \"matomo\"\nprefix = \"/m/\"\nupstream = \"{}\"\n\
         jurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\ntoken_file = \"{}\"\n{rotate}\n\n\
         [[route]]\nname = \"u\"\nkind = \"umami\"\nprefix = \"/u/\"\nupstream = \"{}\"\n\
         jurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\nlocation = \"region\"\nmin_visitors = 3\n{rotate}\n\n\
         [[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\nupstream = \"{}\"\n",
        admin_token.display(),
        mmdb(dir).display(),
        up.url("/"),
        up.url("/"),
        token.display(),
        up.url("/"),
        up.url("/"),
    )
}

fn store_section(redis: &Redis) -> String {
    format!(
        "[cluster]\nstore = \"{}\"\nstore_timeout = \"100ms\"\n",
        redis.url()
    )
}

/// Three replicas on one store (their admin listeners on the given ports).
async fn replicas(dir: &Path, up: &Upstream, cluster: &str, admins: [u16; 3]) -> Vec<Tamis> {
    let mut out = Vec::new();
    for (i, admin) in admins.into_iter().enumerate() {
        let own = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&own).unwrap();
        out.push(Tamis::start(&config(&own, up, admin, cluster)).await);
    }
    out
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Sleeps until just after the next period begins (and at least `min` from now).
async fn next_period(min: Duration) {
    let now = unix_now();
    let earliest = now + min;
    let period = Duration::from_secs(PERIOD);
    let n = earliest.as_secs() / PERIOD + 1;
    let start = period * n as u32 + Duration::from_millis(150);
    tokio::time::sleep(start - now).await;
}

/// One visitor's hits through one replica: GA4, Matomo, Umami; what each upstream request
/// carried of the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen3 {
    cid: String,
    matomo_id: String,
    matomo_cip: String,
    umami_address: String,
}

async fn visit(t: &Tamis, up: &Upstream, client: &str) -> (Seen3, Duration) {
    let began = Instant::now();
    let send_one = |method: Method, path: String, ctype: &str, body: String| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "site.example")
            .header("user-agent", UA)
            .header("x-forwarded-for", client)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(t.http, req)
    };
    let a = send_one(
        Method::POST,
        format!(
            "/ga/g/collect?v=2&tid=G-1&cid={CID}&en=page_view&dl=https%3A%2F%2Fsite.example%2F"
        ),
        "text/plain",
        String::new(),
    )
    .await;
    assert!(a.status < 300, "ga4 {}", a.status);
    let ga = up.last();
    let a = send_one(
        Method::GET,
        format!("/m/matomo.php?idsite=3&rec=1&_id={MATOMO_ID}&url=https%3A%2F%2Fsite.example%2Fa"),
        "text/plain",
        String::new(),
    )
    .await;
    assert!(a.status < 300, "matomo {}", a.status);
    let m = up.last();
    let a = send_one(
        Method::POST,
        "/u/api/send".into(),
        "application/json",
        umami_event(),
    )
    .await;
    assert!(a.status < 300, "umami {}", a.status);
    let u = up.last();
    let took = began.elapsed();
    for seen in [&ga, &m, &u] {
        let all = format!(
            "{} {:?} {}",
            seen.uri,
            seen.headers,
            String::from_utf8_lossy(&seen.body)
        );
        let subnet = client.rsplit_once('.').unwrap().0.to_owned() + ".";
        for raw in [CID, MATOMO_ID, client, subnet.as_str()] {
            assert!(!all.contains(raw), "{raw} left: {all}");
        }
    }
    let q = |s: &Seen, name: &str| {
        // Matomo's hit goes as a form body; the others' in the query.
        let query = s.uri.split_once('?').map_or("", |(_, q)| q).to_owned();
        let body = String::from_utf8_lossy(&s.body).into_owned();
        let text = if query.is_empty() { body } else { query };
        parse_query(&text)
            .unwrap()
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.1.clone())
            .unwrap_or_default()
    };
    (
        Seen3 {
            cid: q(&ga, "cid"),
            matomo_id: q(&m, "_id"),
            matomo_cip: q(&m, "cip"),
            umami_address: u.header("x-forwarded-for").unwrap_or("").to_owned(),
        },
        took,
    )
}

fn umami_event() -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/umami-send.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// One visitor's hits through each replica in turn (round robin): what each carried.
async fn round_robin(ts: &[Tamis], up: &Upstream, client: &str) -> Vec<Seen3> {
    let mut out = Vec::new();
    for t in ts {
        out.push(visit(t, up, client).await.0);
    }
    out
}

fn recording() -> impl Fn(&common::Seen) -> Reply + Send + Sync + 'static {
    |_| Reply::ok("").status(204)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_visitor_is_one_visitor_on_every_replica_and_the_gate_counts_them_all() {
    let redis = Redis::start();
    let up = Upstream::http(recording()).await;
    let dir = tempfile::tempdir().unwrap();
    let ts = replicas(dir.path(), &up, &store_section(&redis), free_ports::<3>()).await;
    // A fourth replica without the store: the control, with a key of its own.
    let alone_dir = dir.path().join("alone");
    std::fs::create_dir_all(&alone_dir).unwrap();
    let alone = Tamis::start(&config(&alone_dir, &up, free_port(), "")).await;

    next_period(Duration::ZERO).await;
    let first = round_robin(&ts, &up, "198.51.100.7").await;
    assert!(!first[0].cid.is_empty() && !first[0].matomo_id.is_empty());
    assert!(first[0].matomo_cip.starts_with("2001:db8:"), "{first:?}");
    assert!(first[0].umami_address.starts_with("2001:db8:"), "{first:?}");
    assert!(first.iter().all(|s| *s == first[0]), "{first:?}");
    let control = visit(&alone, &up, "198.51.100.7").await.0;
    assert_ne!(
        control.cid, first[0].cid,
        "the control has a key of its own"
    );

    // The next period: new pseudonyms, the same on all three.
    next_period(Duration::ZERO).await;
    let second = round_robin(&ts, &up, "198.51.100.7").await;
    assert!(second.iter().all(|s| *s == second[0]), "{second:?}");
    assert_ne!(second[0].cid, first[0].cid);
    assert_ne!(second[0].matomo_id, first[0].matomo_id);
    assert_ne!(second[0].umami_address, first[0].umami_address);

    // The gate: min_visitors = 3 distinct visitors, each on another replica.
    next_period(Duration::ZERO).await;
    let located = |seen: &common::Seen| {
        (
            seen.header("cf-ipcountry").map(str::to_owned),
            seen.header("cf-region-code").map(str::to_owned),
        )
    };
    for (i, t) in ts.iter().enumerate().take(2) {
        visit(t, &up, &format!("198.51.100.{}", 10 + i)).await;
        assert_eq!(located(&up.last()), (None, None), "visitor {i}");
        // The same visitor on another replica is still one visitor.
        visit(&ts[(i + 1) % 3], &up, &format!("198.51.100.{}", 10 + i)).await;
        assert_eq!(located(&up.last()), (None, None), "visitor {i} again");
    }
    visit(&ts[2], &up, "198.51.100.12").await;
    assert_eq!(
        located(&up.last()),
        (Some("FR".into()), Some("IDF".into())),
        "the third distinct visitor opens the cell"
    );
    // The first visitor, on the first replica: released there too.
    visit(&ts[0], &up, "198.51.100.10").await;
    assert_eq!(located(&up.last()).0.as_deref(), Some("FR"));
    // The control counts alone: one visitor is not enough there.
    visit(&alone, &up, "198.51.100.10").await;
    assert_eq!(located(&up.last()), (None, None));

    let status = get(ts[0].admin.unwrap(), "/status?format=json", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(v["store"]["up"], true, "{v}");
    assert_eq!(
        v["store"]["keys"][0]["source"], "shared through the store",
        "{v}"
    );
    let text = status.text();
    assert!(!text.contains("password"), "{text}");
    // The transparency page says how the key is shared.
    let page = ts[0].get("/.well-known/tamis?format=json").await.text();
    assert!(
        page.contains("shared by the replicas through a key store"),
        "{page}"
    );
    for t in ts {
        t.stop().await;
    }
    alone.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_going_away_costs_no_request_and_replicas_agree_again_at_the_next_period() {
    let mut redis = Redis::start();
    let up = Upstream::http(recording()).await;
    let dir = tempfile::tempdir().unwrap();
    let ts = replicas(dir.path(), &up, &store_section(&redis), free_ports::<3>()).await;
    next_period(Duration::ZERO).await;
    let before = round_robin(&ts, &up, "198.51.100.7").await;
    assert!(before.iter().all(|s| *s == before[0]), "{before:?}");

    redis.kill();
    // The rest of this period: the key in memory, the same on all three.
    let during = round_robin(&ts, &up, "198.51.100.7").await;
    assert_eq!(during, before);
    // Across a rotation with the store down: every request answered, none waiting on the
    // store beyond its 100 ms timeout (the bound is generous: a debug build on a busy machine),
    // no identifier leaving raw (visit asserts it), each replica on a key of its own.
    next_period(Duration::ZERO).await;
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for t in &ts {
            let (_, took) = visit(t, &up, &format!("198.51.100.{}", 20 + round)).await;
            slowest = slowest.max(took);
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "{slowest:?} for three hits"
    );
    let metrics = ts[0].metrics().await;
    assert!(metrics.contains("tamis_store_up 0"), "{metrics}");
    let fallbacks = metrics
        .lines()
        .find(|l| l.starts_with("tamis_store_fallbacks_total{what=\"key\"}"))
        .unwrap();
    assert!(!fallbacks.ends_with(" 0"), "{fallbacks}");
    let status = get(ts[0].admin.unwrap(), "/status?format=json", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(v["store"]["up"], false, "{v}");

    // Back, empty: the replicas agree again from the next period on.
    redis.restart();
    next_period(Duration::from_secs(2)).await;
    let after = round_robin(&ts, &up, "198.51.100.7").await;
    assert!(after.iter().all(|s| *s == after[0]), "{after:?}");
    assert_ne!(after[0].cid, before[0].cid);
    for t in ts {
        t.stop().await;
    }
}

fn tamis_check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tamis"))
        .args([
            "--config",
            &config.display().to_string(),
            "check",
            "--quiet",
        ])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_persists_is_refused_by_check_and_at_start() {
    let up = Upstream::http(recording()).await;
    let dir = tempfile::tempdir().unwrap();
    let persisting = Redis::with(&["--save", "", "--appendonly", "yes"]);
    let snapshotting = Redis::with(&["--save", "3600 1", "--appendonly", "no"]);
    let off = Redis::start();
    let file = dir.path().join("tamis.toml");
    for (redis, refused, says) in [
        (&persisting, true, "appendonly yes"),
        (&snapshotting, true, "save \\\"3600 1\\\""),
        (&off, false, "persistence off"),
    ] {
        let text = config(dir.path(), &up, free_port(), &store_section(redis));
        std::fs::write(&file, &text).unwrap();
        let out = tamis_check(&file);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if refused {
            assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
            assert!(
                stderr.contains("persists") && stderr.contains(says.replace('\\', "").as_str()),
                "{stderr}"
            );
            let started =
                tamis::server::Server::bind(tamis::config::Config::load(&file).unwrap()).await;
            let e = started.err().expect("refused at start").to_string();
            assert!(e.contains("persists"), "{e}");
            // Accepted knowingly: a warning.
            std::fs::write(
                &file,
                text.replace(
                    "store_timeout",
                    "store_persistence = \"warn\"\nstore_timeout",
                ),
            )
            .unwrap();
            let out = tamis_check(&file);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{stdout}");
            assert!(
                stdout.contains("warning: store") && stdout.contains("persists"),
                "{stdout}"
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
            assert!(stdout.contains(says), "{stdout}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_password_never_shows_in_check_status_or_errors() {
    let up = Upstream::http(recording()).await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        "right-store-password-1",
    ]);
    let file = dir.path().join("tamis.toml");
    for password in ["right-store-password-1", "wrong-store-password-2"] {
        let pw = dir.path().join("store.password");
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        let cluster = format!(
            "{}store_password_file = \"{}\"\n",
            store_section(&redis),
            pw.display()
        );
        std::fs::write(&file, config(dir.path(), &up, free_port(), &cluster)).unwrap();
        let out = tamis_check(&file);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{all}");
        let expected = if password.starts_with("right") {
            "persistence off"
        } else {
            "not reachable"
        };
        assert!(all.contains(expected), "{all}");
        let t = Tamis::start(&std::fs::read_to_string(&file).unwrap()).await;
        let status = get(t.admin.unwrap(), "/status?format=json", &[])
            .await
            .text();
        let metrics = t.metrics().await;
        for shown in [&all, &status, &metrics] {
            assert!(!shown.contains("store-password"), "{shown}");
        }
        t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_reload_on_one_replica_reach_every_replica_and_one_down_is_named() {
    let up = Upstream::http(|_| Reply::ok("body").header("cache-control", "max-age=600")).await;
    let dir = tempfile::tempdir().unwrap();
    let admins = free_ports::<3>();
    let peers = format!(
        "[cluster]\npeers = [{}]\n",
        admins
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Salted keys: peers without a store are warned about, not refused.
    let ts = replicas(dir.path(), &up, &peers, admins).await;
    let token = ("authorization", "Bearer replica-admin-token-0123456789");
    let fill = || async {
        for t in &ts {
            assert_eq!(t.get("/cdn/lib.js").await.status, 200);
        }
    };
    fill().await;
    assert_eq!(up.count(), 3, "each replica fetched once");
    fill().await;
    assert_eq!(up.count(), 3, "then served from each cache");

    let a = request(
        ts[0].admin.unwrap(),
        Method::POST,
        "/cache/purge?route=cdn",
        &[token],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let replicas = v["replicas"].as_object().unwrap();
    assert_eq!(replicas.len(), 3, "{v}");
    for p in admins {
        assert_eq!(
            replicas[&format!("127.0.0.1:{p}")]["answer"]["purged"],
            1,
            "{v}"
        );
    }
    fill().await;
    assert_eq!(up.count(), 6, "every cache was purged");

    // Without the token, nothing is relayed (nor done).
    let a = request(
        ts[1].admin.unwrap(),
        Method::POST,
        "/cache/purge?route=cdn",
        &[],
    )
    .await;
    assert_eq!(a.status, 401);

    // A new config on every replica, one reload: all three run it.
    for i in 0..3 {
        let path = dir.path().join(format!("r{i}"));
        let text = config(&path, &up, admins[i], &peers);
        std::fs::write(&ts[i].config_path, text + "\n# changed\n").unwrap();
    }
    let a = request(ts[1].admin.unwrap(), Method::POST, "/reload", &[token]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let hashes: HashSet<String> = v["replicas"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| {
            assert_eq!(r["answer"]["reloaded"], true, "{v}");
            r["answer"]["hash"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(hashes.len(), 3, "each replica's own file: {v}");

    let status = get(ts[0].admin.unwrap(), "/status?format=json", &[]).await;
    let s: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let reached: Vec<_> = s["replicas"].as_array().unwrap().iter().collect();
    assert_eq!(reached.len(), 3, "{s}");
    assert!(reached.iter().all(|p| p["reached"] == true), "{s}");
    assert_eq!(
        reached.iter().filter(|p| p["this"] == true).count(),
        1,
        "{s}"
    );

    // One replica down: named, the others done.
    let mut ts = ts;
    let down = ts.pop().unwrap();
    down.stop().await;
    let a = request(
        ts[0].admin.unwrap(),
        Method::POST,
        "/cache/purge?route=cdn",
        &[token],
    )
    .await;
    assert_eq!(a.status, 502, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let gone = format!("127.0.0.1:{}", admins[2]);
    assert_eq!(v["failed"], serde_json::json!([gone.clone()]), "{v}");
    assert!(v["replicas"][&gone]["error"].is_string(), "{v}");
    assert_eq!(
        v["replicas"][&format!("127.0.0.1:{}", admins[1])]["answer"]["purged"],
        1,
        "{v}"
    );
    let status = get(ts[0].admin.unwrap(), "/status?format=json", &[]).await;
    let s: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let down: Vec<_> = s["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["reached"] == false)
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(down, [gone], "{s}");
    for t in ts {
        t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_routes_pseudonym_key_unless_its_recipient_changes_and_says_so() {
    let up = Upstream::http(recording()).await;
    let other = Upstream::http(recording()).await;
    let route = |up: &Upstream, extra: &str| {
        format!(
            "{LISTEN}[[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/ga/\"\nupstream = \"{}\"\n{extra}\n",
            up.url("/")
        )
    };
    let t = Tamis::start(&route(&up, "")).await;
    let hit = format!("/ga/g/collect?v=2&tid=G-1&cid={CID}&en=page_view");
    let cid = |seen: common::Seen| {
        let q = seen.uri.split_once('?').unwrap().1.to_owned();
        parse_query(&q)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "cid")
            .unwrap()
            .1
    };
    assert!(t.get(&hit).await.status < 300);
    let before = cid(up.last());
    // A new allow-list: the route changed, its key did not.
    let a = t
        .reload(&route(&up, "allow_event_params = [\"ep.plan\"]"))
        .await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["pseudonym_keys"]["ga"], "kept", "{v}");
    assert!(t.get(&hit).await.status < 300);
    assert_eq!(cid(up.last()), before, "the visitor keeps their pseudonym");
    // A new recipient: a new key, said so.
    let a = t.reload(&route(&other, "")).await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let said = v["pseudonym_keys"]["ga"].as_str().unwrap();
    assert!(said.starts_with("reset: upstream host changed"), "{v}");
    assert!(t.get(&hit).await.status < 300);
    assert_ne!(cid(other.last()), before);
    t.stop().await;
}
