//! The `tamis` binary: `check`, refusal of bad configs, refusal to start half-bound, a
//! graceful stop on SIGTERM (and SIGQUIT) with a request in flight, and SIGUSR1 left harmless.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
drain = "0s"

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
    // Valid, so the README's run command works; but its placeholders are flagged, since the
    // tile server's policy forbids them (issue 31, item 3).
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    for key in ["route \"osm\".user_agent", "route \"osm\".referer"] {
        assert!(
            warnings.iter().any(|w| w.contains(key)
                && w.contains("site.example")
                && w.contains("placeholder")),
            "{key}: {out}"
        );
    }
}

#[test]
fn check_prints_why_a_listed_non_eu_host_is_eu() {
    let dir = tempfile::tempdir().unwrap();
    let eu_google = format!(
        "{GOOD}\n[[route]]\nname = \"gf\"\nkind = \"static\"\nprefix = \"/gf/\"\n\
         upstream = \"https://fonts.googleapis.com/\"\njurisdiction = \"eu\"\n"
    );
    let (ok, _, err) = check(&write(dir.path(), &eu_google));
    assert!(!ok, "accepted");
    assert!(
        err.contains("route \"gf\".jurisdiction") && err.contains("Google LLC"),
        "{err}"
    );
    let config = write(
        dir.path(),
        &format!("{eu_google}eu_reason = \"EU-only endpoint, contract 2026-17\"\n"),
    );
    let (ok, out, err) = check(&config);
    assert!(ok, "{err}");
    let gf = &out[out.find("route gf").unwrap()..];
    assert!(
        gf.contains("eu reason      EU-only endpoint, contract 2026-17"),
        "{gf}"
    );
    let quiet = Command::new(BIN)
        .args(["check", "--quiet", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let quiet = String::from_utf8_lossy(&quiet.stdout);
    assert!(
        quiet.contains("[eu (\"EU-only endpoint, contract 2026-17\");"),
        "{quiet}"
    );
}

#[cfg(unix)]
#[test]
fn check_says_which_files_the_service_user_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The folder open to all, as /etc/tamis is: only the files' own modes decide.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let salt = dir.path().join("pseudonym.salt");
    std::fs::write(&salt, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = write(
        dir.path(),
        &format!(
            "{GOOD}\n[[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\n\
             upstream = \"https://region1.google-analytics.com/\"\nsalt_file = \"pseudonym.salt\"\n"
        ),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check_as = |user: &str| {
        let out = Command::new(BIN)
            .args(["check", "--quiet", "--service-user", user, "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // root (or whoever runs the tests) reads the salt; `nobody` could not.
    let out = check_as("nobody");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("route \"ga\".salt_file")
            && warnings[0].contains(&salt.display().to_string())
            && warnings[0].contains("not readable by the service's user nobody")
            && warnings[0].contains("mode 0600"),
        "{out}"
    );
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_as("nobody");
    assert!(!out.contains("warning:"), "{out}");
    // A folder it cannot enter is named.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = check_as("nobody");
    assert!(
        out.contains("nobody cannot enter") && out.contains("config: "),
        "{out}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A user that does not exist: said, not guessed.
    let out = check_as("no-such-user-31");
    assert!(out.contains("no user \"no-such-user-31\""), "{out}");
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, String, &str)] = &[
        ("unknown key", GOOD.replace("kind = \"static\"\nprefix = \"/cdn/\"", "kind = \"static\"\nprefx = \"/cdn/\""), "prefx"),
        ("unknown kind", GOOD.replacen("\"static\"", "\"magic\"", 1), "magic"),
        ("unknown jurisdiction", GOOD.replace("\"eu\"\n", "\"mars\"\n"), "mars"),
        ("bad url", GOOD.replace("https://cdn.jsdelivr.net/npm/", "https//nope"), "route \"jsdelivr\".upstream"),
        ("duplicate prefix", GOOD.replace("\"/eu/\"", "\"/cdn/\""), "route \"eu-cdn\".prefix"),
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

/// `tamis check --emit nginx|caddy` for the shipped config is, byte for byte, the shipped
/// snippet (deploy/check.sh runs those through `nginx -t`, `caddy validate` and real traffic).
#[test]
fn check_emit_writes_the_shipped_front_end_snippets_for_the_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (front, file) in [
        ("nginx", "deploy/nginx/tamis.conf"),
        ("caddy", "deploy/caddy/Caddyfile"),
    ] {
        let out = Command::new(BIN)
            .current_dir(root)
            .args(["check", "--emit", front, "--config", "config/tamis.toml"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let emitted = String::from_utf8(out.stdout).unwrap();
        let shipped = std::fs::read_to_string(root.join(file)).unwrap();
        if emitted != shipped {
            let first = emitted
                .lines()
                .zip(shipped.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(emitted.lines().count().min(shipped.lines().count()));
            panic!(
                "{file} is not what `tamis check --emit {front} --config config/tamis.toml` \
                 writes (first difference at line {}); write it again with that command",
                first + 1
            );
        }
    }
}

/// A route added to the config gets its location (so it cannot fall through to the site); the
/// analytics route keeps its tracking URLs out of nginx's log; no listener, no snippet.
#[test]
fn check_emit_follows_the_routes_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD}\n[[route]]\nname = \"stats\"\nkind = \"matomo\"\nprefix = \"/m/\"\n\
         upstream = \"https://stats.example.org/\"\n"
    );
    let path = write(dir.path(), &text);
    let emit = |front: &str, path: &Path| {
        Command::new(BIN)
            .args(["check", "--emit", front, "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = emit("nginx", &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nginx = String::from_utf8(out.stdout).unwrap();
    let locations: Vec<&str> = nginx
        .lines()
        .filter_map(|l| l.trim().strip_prefix("location "))
        .collect();
    assert_eq!(
        locations,
        [
            "^~ /cdn/ {",
            "^~ /eu/ {",
            "^~ /m/ {",
            "= /.well-known/tamis {",
            "= /.well-known/tamis/probe {"
        ],
        "{nginx}"
    );
    let m = &nginx[nginx.find("location ^~ /m/").unwrap()..];
    let m = &m[..m.find('}').unwrap()];
    assert!(
        m.contains("access_log off;") && m.contains("client_max_body_size 64k;"),
        "{m}"
    );
    assert!(nginx.contains("proxy_pass http://127.0.0.1:0;"), "{nginx}");
    let out = emit("caddy", &path);
    let caddy = String::from_utf8(out.stdout).unwrap();
    for h in ["/cdn/*", "/eu/*", "/m/*", "/.well-known/tamis"] {
        assert!(
            caddy.contains(&format!("\thandle {h} {{\n\t\timport tamis\n")),
            "{h}: {caddy}"
        );
    }

    let tls_only = write(
        dir.path(),
        &GOOD.replace("listen = \"127.0.0.1:0\"\n", "workers = 1\n"),
    );
    let out = emit("nginx", &tls_only);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
    assert_eq!(emit("apache", &path).status.code(), Some(2));
}

/// Runs the binary on the config file `path`, which listens on 127.0.0.1:`port`, its log
/// captured; returns once it accepts connections.
async fn run(path: &Path, port: u16) -> (Child, SocketAddr) {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tamis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

/// Sends SIGTERM and waits for the process to exit.
async fn terminate(child: Child) -> std::process::Output {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
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
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\nshutdown_timeout = \"{shutdown_timeout}\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (child, addr) = run(&write(dir.path(), &text), port).await;
    let in_flight = tokio::spawn(async move { get(addr, "/cdn/slow", &[]).await });
    while up.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    let output = terminate(child).await;
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
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (child, addr) = run(&write(dir.path(), &text), port).await;
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
    let out = terminate(child).await;
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
async fn the_truncated_access_log_keeps_no_ipv4_embedded_in_an_ipv6_address() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
         [log]\nclient_ip = \"truncated\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (child, addr) = run(&write(dir.path(), &text), port).await;
    for client in EMBEDDING_203_0_113_7 {
        let a = get(addr, "/cdn/x", &[("x-forwarded-for", client)]).await;
        assert_eq!(a.status, 200, "{client}");
    }
    let out = terminate(child).await;
    let log = String::from_utf8_lossy(&out.stderr);
    let clients: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tamis::access"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("client=")))
        .collect();
    assert_eq!(clients, ["203.0.113.0"; 4], "{log}");
    // Ports and timings are numbers that may hold "7107": only the other forms are sought in
    // the whole log (the client field above is the one place the address goes).
    for form in EMBEDDED_203_0_113_7_FORMS {
        if !form.bytes().all(|b| b.is_ascii_digit()) {
            assert!(!log.contains(form), "log holds {form}: {log}");
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_bad_one_leaves_it_running() {
    let up = Upstream::http(|s| Reply::ok(format!("got {}", s.uri))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |routes: String| {
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\nshutdown_timeout = \"2s\"\n{routes}")
    };
    let path = write(dir.path(), &config(route("a", "/a/", &up.url("/"), "")));
    let (mut child, addr) = run(&path, port).await;
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

    let out = terminate(child).await;
    assert!(out.status.success(), "exit: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("config reloaded"), "{log}");
    assert!(
        log.contains("config reload refused, still running the previous config"),
        "{log}"
    );
}

#[test]
fn version_names_the_git_revision() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let expected = format!("tamis {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected) && line.ends_with(')'), "{line}");
    let revision = &line[expected.len()..line.len() - 1];
    // Built from this checkout: its HEAD (when git can tell).
    if let Ok(git) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        if git.status.success() {
            assert_eq!(revision, String::from_utf8_lossy(&git.stdout).trim());
        }
    }
    assert!(!revision.is_empty());
}

#[test]
fn without_config_the_local_file_is_read_and_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/tamis.toml"), GOOD).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("config/tamis.toml: valid"), "{stdout}");
    assert!(
        stderr.contains("no --config given, reading config/tamis.toml"),
        "{stderr}"
    );
    // `-c` is `--config`.
    std::fs::write(dir.path().join("other.toml"), GOOD).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", "other.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("other.toml: valid"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_start_up_line_names_the_version_the_config_and_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write(
        dir.path(),
        &GOOD.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let (_, report, _) = check(&config);
    let hash = report
        .split("(hash ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_owned();
    let (child, _) = run(&config, port).await;
    let out = terminate(child).await;
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("tamis starting"))
        .unwrap_or_else(|| panic!("no start-up line: {log}"));
    for part in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        "revision=".to_owned(),
        format!("config={}", config.display()),
        format!("hash={hash}"),
    ] {
        assert!(line.contains(&part), "{part} not in {line}");
    }
}

#[test]
fn check_quiet_prints_one_line_per_route_and_the_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("https://cdn.example.eu/", "http://cdn.example.eu/")
        + "\n[[route]]\nname = \"plain\"\nkind = \"static\"\nprefix = \"/plain/\"\nupstream = \"http://cdn.example.com/\"\n";
    let config = write(dir.path(), &text);
    let out = Command::new(BIN)
        .args(["check", "--quiet", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].ends_with("3 routes"), "{stdout}");
    // The EU route's plain http:// is its operator's business; the non-EU one is warned about.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("warning:")).count(),
        1,
        "{stdout}"
    );
    assert!(
        lines[1].contains("route \"plain\".upstream") && lines[1].contains("https://"),
        "{stdout}"
    );
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(
        lines[2].starts_with(
            "route jsdelivr (static): /cdn/ -> https://cdn.jsdelivr.net/npm/ [non-eu;"
        ),
        "{stdout}"
    );
    // The full report carries the warning too.
    let (_, full, _) = check(&config);
    assert!(
        full.lines().nth(1).unwrap().starts_with("warning:"),
        "{full}"
    );
    // An analytics route that sends a synthetic address says so on its line.
    let text = GOOD.to_owned()
        + "\n[[route]]\nname = \"stats\"\nkind = \"plausible\"\nprefix = \"/p/\"\nupstream = \"https://plausible.example.eu/\"\njurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\n";
    let config = write(dir.path(), &text);
    let out = Command::new(BIN)
        .args(["check", "--quiet", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("route stats"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.ends_with("; address pseudonym]"), "{line}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_a_request_id_and_plain_milliseconds() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\n[log]\nformat = \"json\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (child, addr) = run(&write(dir.path(), &text), port).await;
    for _ in 0..2 {
        assert_eq!(get(addr, "/cdn/a.js?user=alice", &[]).await.status, 200);
    }
    let out = terminate(child).await;
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "tamis::access")
        .collect();
    assert_eq!(access.len(), 2, "{log}");
    for a in &access {
        assert_eq!(a["route"], "cdn");
        assert_eq!(a["status"], 200);
        assert_eq!(a["path"], "/cdn/a.js", "no query");
        assert!(a.get("client").is_none(), "{a}");
        // A number, to the microsecond.
        let ms = a["ms"].as_f64().unwrap();
        // (ms * 1000 may land just below a whole number, e.g. 12344.999999999998.)
        let us = ms * 1000.0;
        assert!(ms > 0.0 && (us - us.round()).abs() < 1e-6, "{a}");
        assert!(!a["ms"].to_string().contains("9999"), "{a}");
        assert_eq!(a["id"].as_str().unwrap().len(), 16, "{a}");
    }
    assert_ne!(access[0]["id"], access[1]["id"]);
    assert!(
        lines.iter().any(|l| l["message"] == "tamis starting"),
        "{log}"
    );
}

#[tokio::test]
async fn on_sigterm_it_drains_first_healthz_503_while_requests_are_still_served() {
    let up = Upstream::http(|_| Reply::ok("still here").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let [port, admin_port] = free_ports::<2>();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"1500ms\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (child, addr) = run(&write(dir.path(), &text), port).await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = get(admin, "/healthz", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (503, "draining\n"));
    // New connections and requests are still served meanwhile.
    let a = get(addr, "/cdn/x", &[]).await;
    assert_eq!((a.status, a.text().as_str()), (200, "still here"));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("draining"), "{log}");
}

/// Signals as nginx users send them: SIGUSR1 ("reopen the logs") must never kill tamis, and
/// SIGQUIT (nginx's graceful stop) drains and exits 0 exactly as SIGTERM does.
#[tokio::test]
async fn sigusr1_is_harmless_and_sigquit_drains_like_sigterm() {
    let up = Upstream::http(|_| Reply::ok("still here").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let [port, admin_port] = free_ports::<2>();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"3s\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let (mut child, addr) = run(&write(dir.path(), &text), port).await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let signal = |name: &str, pid: u32| {
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal("USR1", child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "SIGUSR1 killed tamis");
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(addr, "/cdn/x", &[]).await.status, 200);

    signal("QUIT", child.id());
    // Poll rather than sleep a fixed time: on a loaded machine the signal can take longer
    // than any fixed wait to be handled (this test once failed so under CI-like load).
    let mut health = get(admin, "/healthz", &[]).await;
    for _ in 0..100 {
        if health.status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        health = get(admin, "/healthz", &[]).await;
    }
    assert_eq!((health.status, health.text().as_str()), (503, "draining\n"));
    assert_eq!(get(addr, "/cdn/x", &[]).await.status, 200);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("SIGUSR1 received"), "{log}");
    assert!(log.contains("SIGQUIT received"), "{log}");
    assert!(log.contains("all connections closed"), "{log}");
}

/// The operator's secrets in the tests below, each distinctive enough that a leak is found.
const MATOMO_TOKEN: &str = "s3cr3tOperatorToken0123456789";
const ADMIN_TOKEN: &str = "s3cr3t-admin-token-0123456789";
const SALT: &str = "s3cr3t-pseudonym-salt-0123456789";

/// Writes the three secret files into `dir`; returns the config lines of an admin listener on
/// `admin` needing the admin token, and of two EU Matomo routes sending a synthetic address
/// (so every request they forward carries the Matomo token): `/m/` to `up`, `/down/` to a port
/// where nothing listens.
fn secret_config(dir: &Path, admin: u16, up: &str) -> String {
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (token, admin_token, salt) = (
        file("matomo.token", &format!("{MATOMO_TOKEN}\n")),
        file("admin.token", ADMIN_TOKEN),
        file("salt", SALT),
    );
    let matomo = |name: &str, prefix: &str, upstream: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nkind = \"matomo\"\nprefix = \"{prefix}\"\n\
             upstream = \"{upstream}\"\njurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\n\
             token_file = {token:?}\nsalt_file = {salt:?}\n\n"
        )
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = {admin_token:?}\n\n\
         [transparency]\nprobe = true\n\n{}{}",
        matomo("matomo", "/m/", up),
        matomo(
            "down",
            "/down/",
            &format!("http://127.0.0.1:{}/", free_port())
        ),
    )
}

/// Asserts that `text` holds none of the operator's secrets.
fn assert_no_secret(text: &str, what: &str) {
    for secret in [MATOMO_TOKEN, ADMIN_TOKEN, SALT] {
        assert!(!text.contains(secret), "{what} holds {secret}: {text}");
    }
}

#[tokio::test]
async fn no_log_line_or_answer_holds_an_operator_secret_even_at_debug_level() {
    let up = Upstream::http(|_| Reply::ok("").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let [port, admin_port] = free_ports::<2>();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain = \"0s\"\nshutdown_timeout = \"2s\"\n{}",
        secret_config(dir.path(), admin_port, &up.url("/"))
    );
    let path = write(dir.path(), &text);
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tamis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = Vec::new();
    let track = "/matomo.php?idsite=1&rec=1&url=https%3A%2F%2Fsite.example%2Fa&_id=0123456789abcdef&token_auth=browser";
    // Forwarded: the upstream gets the token (so it was loaded, and is there to leak).
    let a = get(
        addr,
        &format!("/m{track}"),
        &[("user-agent", "Mozilla/5.0 Firefox/133.0")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = up.last();
    assert!(
        String::from_utf8_lossy(&seen.body).contains(&format!("token_auth={MATOMO_TOKEN}")),
        "{seen:?}"
    );
    answers.push(a);
    // Bulk, malformed (logged at debug), and an upstream that cannot be reached (an error).
    let bulk = r#"{"requests":["?idsite=1&rec=1&url=https%3A%2F%2Fsite.example%2Fb&_id=0123456789abcdef"]}"#;
    let post = |path: &'static str, body: &'static str| {
        let req = http::Request::post(path)
            .header("host", "site.example")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        send(addr, req)
    };
    answers.push(post("/m/matomo.php", bulk).await);
    answers.push(post("/m/matomo.php", "{\"requests\": 3}").await);
    assert_eq!(answers.last().unwrap().status, 400);
    answers.push(get(addr, "/m/matomo.php?idsite=1&url=%zz", &[]).await);
    assert_eq!(answers.last().unwrap().status, 400);
    answers.push(get(addr, &format!("/down{track}"), &[]).await);
    assert_eq!(answers.last().unwrap().status, 502);
    answers.push(post("/.well-known/tamis/probe", "").await);
    let probe = serde_json::json!({ "path": format!("/m{track}") }).to_string();
    let req = http::Request::post("/.well-known/tamis/probe")
        .header("host", "site.example")
        .body(http_body_util::Full::new(bytes::Bytes::from(probe)))
        .unwrap();
    answers.push(send(addr, req).await);
    for page in ["/.well-known/tamis", "/.well-known/tamis?format=json"] {
        answers.push(get(addr, page, &[]).await);
    }
    for page in ["/status", "/status?format=json", "/metrics"] {
        let a = get(admin, page, &[]).await;
        assert_eq!(a.status, 200, "{page}");
        answers.push(a);
    }
    // Reloads: refused without the token and with a wrong one, done with it, refused (and
    // logged as an error) when a secret file holds something it must not.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for auth in ["Bearer s3cr3t-admin-token-0123456788", bearer.as_str()] {
        answers.push(
            request(
                admin,
                http::Method::POST,
                "/reload",
                &[("authorization", auth)],
            )
            .await,
        );
    }
    assert_eq!(answers.last().unwrap().status, 200);
    std::fs::write(
        dir.path().join("matomo.token"),
        format!("{MATOMO_TOKEN}-{SALT}"),
    )
    .unwrap();
    let a = request(
        admin,
        http::Method::POST,
        "/reload",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.text());
    answers.push(a);

    let out = terminate(child).await;
    let log = String::from_utf8_lossy(&out.stderr);
    // Debug lines were written (the malformed request's), and the errors.
    assert!(log.contains("tracking request refused"), "{log}");
    assert!(log.contains("upstream request failed"), "{log}");
    assert!(log.contains("config reload refused"), "{log}");
    assert_no_secret(&log, "the log");
    for a in &answers {
        assert_no_secret(&a.text(), &format!("an answer ({})", a.status));
    }
}

#[test]
fn check_and_its_errors_name_the_secret_files_never_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        secret_config(dir.path(), 0, "https://matomo.example/")
    );
    let path = write(dir.path(), &text);
    let (ok, out, err) = check(&path);
    assert!(ok, "{err}");
    assert!(out.contains("route matomo (matomo)"), "{out}");
    assert_no_secret(&out, "tamis check");
    assert_no_secret(&err, "tamis check's stderr");
    // Files holding what they must not: the errors name the file and the rule.
    std::fs::write(
        dir.path().join("matomo.token"),
        format!("{MATOMO_TOKEN}-{SALT}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cr3t").unwrap();
    let (ok, out, err) = check(&path);
    assert!(!ok, "{out}");
    assert!(err.contains("token_file"), "{err}");
    assert_no_secret(&format!("{out}{err}"), "tamis check's refusal");
    assert!(!err.contains("s3cr3t"), "{err}");
    // The server refuses to start with the same words.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token_file"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}
