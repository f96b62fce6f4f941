//! The `tamis` binary: `check`, refusal of bad configs, refusal to start half-bound, and a
//! graceful stop on SIGTERM with a request in flight.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_tamis");

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tamis.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn check(config: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:0"

[[route]]
name = "jsdelivr"
kind = "static"
prefix = "/cdn/"
upstream = "https://cdn.jsdelivr.net/npm/"

[[route]]
name = "eu-cdn"
kind = "static"
prefix = "/eu/"
upstream = "https://cdn.example.eu/"
jurisdiction = "eu"
forward_headers = ["Accept-Language"]
"#;

#[test]
fn check_prints_what_leaves_for_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = check(&write(dir.path(), GOOD));
    assert!(ok, "{err}");
    assert!(out.contains("route jsdelivr (static)"), "{out}");
    assert!(
        out.contains("/cdn/ -> https://cdn.jsdelivr.net/npm/"),
        "{out}"
    );
    assert!(out.contains("non-eu"), "{out}");
    assert!(
        out.contains("User-Agent         replaced by \"tamis/"),
        "{out}"
    );
    assert!(out.contains("Cookie, Authorization"), "{out}");
    assert!(out.contains("X-Forwarded-For"), "{out}");
    assert!(out.contains("Set-Cookie"), "{out}");
    let eu = &out[out.find("route eu-cdn").unwrap()..];
    assert!(
        eu.contains("User-Agent         as sent by the browser (EU route)"),
        "{eu}"
    );
    assert!(
        eu.contains("Accept-Language    as sent by the browser (forward_headers, EU route)"),
        "{eu}"
    );
}

#[test]
fn check_prints_the_ga4_linkage_rule() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD}\n[[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\nupstream = \"https://region1.google-analytics.com/\"\n"
    );
    let (ok, out, err) = check(&write(dir.path(), &text));
    assert!(ok, "{err}");
    let ga = &out[out.find("route ga (ga4)").unwrap()..];
    let linkage = ga
        .lines()
        .find(|l| l.trim_start().starts_with("linkage:"))
        .unwrap_or_else(|| panic!("no linkage line in {ga}"));
    for needle in [
        "within one rotation period",
        "cid",
        "sid",
        "_p",
        "across periods",
        "sct",
        "_s",
        "tfd",
    ] {
        assert!(linkage.contains(needle), "{needle} not in {linkage}");
    }
    let row = |outcome: &str| {
        ga.lines()
            .find(|l| l.trim_start().starts_with(outcome))
            .unwrap_or_else(|| panic!("no {outcome} row in {ga}"))
            .to_owned()
    };
    assert!(row("pseudonymised").contains("sid ("), "{ga}");
    assert!(row("pseudonymised").contains("_p ("), "{ga}");
    assert!(row("generalised").contains("sct ("), "{ga}");
    assert!(row("dropped").contains("_s ("), "{ga}");
    assert!(!row("kept").contains("sid"), "{ga}");
}

#[test]
fn check_flags_pass_through_and_cache_settings() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "forward_headers = [\"Accept-Language\"]",
        "pass_through = true\nstale_if_error = \"7d\"\nmin_ttl = \"1h\"",
    );
    let (ok, out, err) = check(&write(dir.path(), &text));
    assert!(ok, "{err}");
    let eu = &out[out.find("route eu-cdn").unwrap()..];
    assert!(eu.contains("!! PASS-THROUGH"), "{eu}");
    assert!(eu.contains("Cookie and Authorization included"), "{eu}");
    assert!(eu.contains("min_ttl 1h"), "{eu}");
    assert!(eu.contains("stale_if_error 7days"), "{eu}");
}

#[test]
fn the_shipped_config_is_valid() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tamis.toml");
    let (ok, out, err) = check(&config);
    assert!(ok, "{err}");
    assert!(out.contains("route jsdelivr"), "{out}");
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, String, &str)] = &[
        ("unknown key", GOOD.replace("kind = \"static\"\nprefix = \"/cdn/\"", "kind = \"static\"\nprefx = \"/cdn/\""), "prefx"),
        ("unknown kind", GOOD.replacen("\"static\"", "\"magic\"", 1), "magic"),
        ("unknown jurisdiction", GOOD.replace("\"eu\"\n", "\"mars\"\n"), "mars"),
        ("bad url", GOOD.replace("https://cdn.jsdelivr.net/npm/", "https//nope"), "route[0].upstream"),
        ("duplicate prefix", GOOD.replace("\"/eu/\"", "\"/cdn/\""), "route[1].prefix"),
        ("unreadable certificate", GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing.key\"",
        ), "server.tls_cert"),
        ("unreadable CA", format!("{GOOD}\n[upstream]\nextra_ca_file = \"/nonexistent/ca.pem\"\n"), "upstream.extra_ca_file"),
        ("not a CA", format!("{GOOD}\n[upstream]\nextra_ca_file = \"tamis.toml\"\n"), "no CERTIFICATE"),
        ("bad listen", GOOD.replace("127.0.0.1:0", "localhost"), "server.listen"),
        ("forward on non-eu", GOOD.replace("jurisdiction = \"eu\"\n", ""), "forward_headers"),
        ("not toml", "[server\nlisten=".to_string(), "line 1"),
    ];
    for (what, text, needle) in cases {
        let (ok, _out, err) = check(&write(dir.path(), text));
        assert!(!ok, "{what}: accepted");
        assert!(err.contains(needle), "{what}: {err}");
    }
    let (ok, _, err) = check(&dir.path().join("absent.toml"));
    assert!(!ok);
    assert!(err.contains("absent.toml"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_bad_config_or_a_busy_port_never_leaves_a_half_started_server() {
    let dir = tempfile::tempdir().unwrap();
    // The admin port is free, the public one is taken: tamis must exit, not serve admin alone.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free_port();
    let text = format!(
        "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
        busy.local_addr().unwrap(),
        route("cdn", "/cdn/", "https://cdn.example/", "")
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(write(dir.path(), &text))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen"), "{err}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", admin)).is_ok(),
        "admin port left bound"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(write(dir.path(), "[server]\n"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Starts tamis in front of an upstream answering after `delay`, sends SIGTERM while a request
/// is in flight, and returns that request's answer (`None` if it was cut off), the process's
/// output and how long it took to exit after the signal.
async fn sigterm_during_a_request(
    delay: Duration,
    shutdown_timeout: &str,
) -> (Option<common::Answer>, std::process::Output, Duration) {
    let up = Upstream::http(move |_| {
        Reply::ok("slow answer")
            .header("cache-control", "no-store")
            .delay(delay)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"{shutdown_timeout}\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let child = Command::new(BIN)
        .arg("--config")
        .arg(write(dir.path(), &text))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tamis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = tokio::spawn(async move { get(addr, "/cdn/slow", &[]).await });
    while up.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let exited = signalled.elapsed();
    assert!(output.status.success(), "exit: {:?}", output.status);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    (in_flight.await.ok(), output, exited)
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let (answer, output, _) = sigterm_during_a_request(Duration::from_millis(800), "5s").await;
    let a = answer.expect("the request in flight was cut off");
    assert_eq!((a.status, a.text().as_str()), (200, "slow answer"));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("all connections closed"), "{log}");
}

#[tokio::test]
async fn sigterm_waits_no_longer_than_the_shutdown_timeout() {
    let (answer, output, exited) = sigterm_during_a_request(Duration::from_secs(8), "1s").await;
    assert!(
        answer.is_none(),
        "an 8 s answer outlived a 1 s shutdown timeout"
    );
    assert!(exited < Duration::from_secs(5), "exited after {exited:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("shutdown timeout reached"), "{log}");
}

#[tokio::test]
async fn the_access_log_has_no_client_address_and_no_cookie() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let child = Command::new(BIN)
        .arg("--config")
        .arg(write(dir.path(), &text))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tamis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = get(
        addr,
        "/cdn/page.js?user=alice",
        &[
            ("cookie", "session=s3cr3t"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("tamis::access"))
        .unwrap_or_else(|| panic!("no access line: {log}"));
    assert!(
        line.contains("route=\"cdn\"") || line.contains("route=cdn"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    // The client connects from 127.0.0.1, which is also tamis's own listen address (logged at
    // start): the access line must not have it; nothing in the whole log may hold the rest.
    assert!(!line.contains("127.0.0.1"), "{line}");
    for secret in ["203.0.113.7", "s3cr3t", "alice"] {
        assert!(!log.contains(secret), "log holds {secret}: {log}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_bad_one_leaves_it_running() {
    let up = Upstream::http(|s| Reply::ok(format!("got {}", s.uri))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |routes: String| {
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"2s\"\n{routes}")
    };
    let path = write(dir.path(), &config(route("a", "/a/", &up.url("/"), "")));
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tamis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    assert_eq!(get(addr, "/b/x", &[]).await.status, 404);

    // A valid new config: the new route appears (SIGHUP is asynchronous: poll).
    std::fs::write(
        &path,
        config(format!(
            "{}{}",
            route("a", "/a/", &up.url("/"), ""),
            route("b", "/b/", &up.url("/"), "")
        )),
    )
    .unwrap();
    hup();
    let start = Instant::now();
    while get(addr, "/b/x", &[]).await.status != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken one: still running, still serving both routes.
    std::fs::write(&path, "[[route]]\nname = 1\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "tamis exited");
    assert_eq!(get(addr, "/a/x", &[]).await.text(), "got /x");
    assert_eq!(get(addr, "/b/y", &[]).await.text(), "got /y");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("config reloaded"), "{log}");
    assert!(
        log.contains("config reload refused, still running the previous config"),
        "{log}"
    );
}
