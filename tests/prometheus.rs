//! A real Prometheus scrapes tamis: Debian's `prometheus` binary runs on loopback with the
//! shipped scrape config and rules (`deploy/prometheus/`), the target rewritten to this test's
//! admin listener and the intervals cut to 1 s. The exact counts of the traffic driven here must
//! come back through Prometheus's HTTP API, the shipped rules must load and evaluate, a recording
//! rule must compute the hit ratio, and a refused reload must fire `TamisConfigReloadFailed`.
//!
//! Needs `prometheus` on PATH (or $TAMIS_PROMETHEUS): `apt-get install prometheus`. Set
//! TAMIS_SKIP_PROMETHEUS=1 to skip it on a machine without it.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long each stage may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$TAMIS_PROMETHEUS`, or `prometheus` on PATH.
fn prometheus_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TAMIS_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// deploy/prometheus/prometheus.yml with the target, the intervals and the rule file rewritten
/// for this test. Each rewritten line must be there exactly once.
fn scrape_config(admin: SocketAddr) -> String {
    let path = repo().join("deploy/prometheus/prometheus.yml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    let rules = repo().join("deploy/prometheus/tamis.rules.yml");
    let rewrites = [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("- tamis.rules.yml", format!("- {}", rules.display())),
        ("- 127.0.0.1:8081", format!("- {admin}")),
    ];
    let mut hits = [0usize; 4];
    let out: Vec<String> = shipped
        .lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            match rewrites.iter().position(|(from, _)| line.trim() == *from) {
                Some(i) => {
                    hits[i] += 1;
                    format!("{indent}{}", rewrites[i].1)
                }
                None => line.to_owned(),
            }
        })
        .collect();
    for (i, (from, _)) in rewrites.iter().enumerate() {
        assert_eq!(
            hits[i],
            1,
            "{} should have the line `{from}` once (found {}): update tests/prometheus.rs with it",
            path.display(),
            hits[i]
        );
    }
    out.join("\n") + "\n"
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // A free port: bound, read, released (Prometheus binds it a moment later).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Panics with Prometheus's log if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// Waits until it listens and answers `/-/ready` with 200.
    async fn ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.assert_running();
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && get(self.addr, "/-/ready", &[]).await.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready on {} after {TIMEOUT:?}:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` on the API; the `data` member of a successful answer.
    async fn api(&mut self, path: &str) -> Value {
        self.assert_running();
        let a = get(self.addr, path, &[]).await;
        let v: Value = serde_json::from_slice(&a.body)
            .unwrap_or_else(|e| panic!("GET {path}: {} {e}: {}", a.status, a.text()));
        assert_eq!(v["status"], "success", "GET {path}: {} {}", a.status, v);
        v["data"].clone()
    }

    /// An instant query: each series as (labels, value).
    async fn query(&mut self, q: &str) -> Vec<(HashMap<String, String>, f64)> {
        let path = format!(
            "/api/v1/query?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", q)
                .finish()
        );
        let data = self.api(&path).await;
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}: {data}"))
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The single value of `q`, or `None` while it has no series.
    async fn value(&mut self, q: &str) -> Option<f64> {
        let r = self.query(q).await;
        assert!(r.len() <= 1, "{q} gave several series: {r:?}");
        r.first().map(|(_, v)| *v)
    }

    /// Polls until every query has its expected value, or fails naming the ones that do not.
    async fn wait_for(&mut self, what: &str, expected: &[(&str, f64)]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut wrong = Vec::new();
            for (q, want) in expected {
                let got = self.value(q).await;
                if !got.is_some_and(|g| (g - want).abs() < 1e-9) {
                    wrong.push(format!("  {q} = {got:?}, expected {want}"));
                }
            }
            if wrong.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let targets = self.api("/api/v1/targets").await;
                panic!(
                    "{what}: after {TIMEOUT:?} Prometheus still has\n{}\ntargets: {}\nprometheus log:\n{}",
                    wrong.join("\n"),
                    targets["activeTargets"],
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_counts_and_evaluates_the_shipped_rules() {
    let Some(binary) = prometheus_binary() else {
        if std::env::var_os("TAMIS_SKIP_PROMETHEUS").is_some() {
            eprintln!("TAMIS_SKIP_PROMETHEUS set: Prometheus scrape test skipped");
            return;
        }
        panic!(
            "no `prometheus` binary on PATH (nor $TAMIS_PROMETHEUS): install it with \
             `apt-get install prometheus` (.ci/run does), or set TAMIS_SKIP_PROMETHEUS=1 to skip"
        );
    };

    let up = Upstream::http(|_| Reply::ok("tile").header("cache-control", "max-age=600")).await;
    let config = format!(
        "{LISTEN}[cache]\nmax_bytes = 33554432\n\n{}",
        route("tiles", "/tiles/", &up.url("/"), "")
    );
    let t = Tamis::start(&config).await;
    let admin = t.admin.expect("admin listener");
    let mut prom = Prometheus::start(&binary, &scrape_config(admin));
    prom.ready().await;

    // The first scrape: tamis is up, every counter still at zero.
    prom.wait_for(
        "first scrape",
        &[
            (r#"up{job="tamis"}"#, 1.0),
            (
                r#"tamis_cache_lookups_total{route="tiles",result="hit"}"#,
                0.0,
            ),
            (r#"tamis_config_reloads_total{result="failure"}"#, 0.0),
        ],
    )
    .await;

    // Two misses, three hits, one request that matches no route.
    assert_eq!(t.get("/tiles/1/2/3.png").await.status, 200);
    for _ in 0..3 {
        let a = t.get("/tiles/1/2/3.png").await;
        assert_eq!((a.status, a.text().as_str()), (200, "tile"));
    }
    assert_eq!(t.get("/tiles/1/2/4.png").await.status, 200);
    assert_eq!(t.get("/elsewhere").await.status, 404);
    assert_eq!(up.count(), 2, "the hits came from the cache");

    prom.wait_for(
        "the traffic driven",
        &[
            (r#"tamis_requests_total{route="tiles",status="200"}"#, 5.0),
            (r#"tamis_requests_total{route="none",status="404"}"#, 1.0),
            (
                r#"tamis_cache_lookups_total{route="tiles",result="hit"}"#,
                3.0,
            ),
            (
                r#"tamis_cache_lookups_total{route="tiles",result="miss"}"#,
                2.0,
            ),
            (
                r#"tamis_upstream_requests_total{route="tiles",status="200"}"#,
                2.0,
            ),
            (
                r#"tamis_served_bytes_total{route="tiles",result="cache"}"#,
                12.0,
            ),
            (
                r#"tamis_served_bytes_total{route="tiles",result="upstream"}"#,
                8.0,
            ),
            (
                r#"tamis_request_duration_seconds_count{route="tiles"}"#,
                5.0,
            ),
            ("tamis_cache_entries", 2.0),
            ("tamis_cache_max_bytes", 33554432.0),
            // The shipped recording rule: 3 hits of 5 cacheable lookups.
            (r#"route:tamis_cache_hit_ratio:rate5m{route="tiles"}"#, 0.6),
        ],
    )
    .await;

    // Every shipped rule loaded and evaluates without error.
    let rules = prom.api("/api/v1/rules").await;
    let groups = rules["groups"].as_array().unwrap();
    let mut names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["tamis.alerts", "tamis.recording"]);
    let mut evaluated = 0;
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
            evaluated += 1;
        }
    }
    let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/tamis.rules.yml"))
        .unwrap()
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- record:") || l.starts_with("- alert:")
        })
        .count();
    assert_eq!(evaluated, shipped, "every rule of tamis.rules.yml");

    // A refused reload: the shipped alert fires (it has no `for`).
    std::fs::write(&t.config_path, format!("{config}\nbogus = 1\n")).unwrap();
    assert_eq!(
        request(admin, http::Method::POST, "/reload", &[])
            .await
            .status,
        409
    );
    prom.wait_for(
        "a refused reload",
        &[
            (r#"tamis_config_reloads_total{result="failure"}"#, 1.0),
            (
                r#"ALERTS{alertname="TamisConfigReloadFailed",alertstate="firing"}"#,
                1.0,
            ),
        ],
    )
    .await;
    let firing: Vec<String> = prom
        .query(r#"ALERTS{alertstate="firing"}"#)
        .await
        .into_iter()
        .map(|(labels, _)| labels["alertname"].clone())
        .collect();
    assert_eq!(firing, ["TamisConfigReloadFailed"], "no other alert fires");
}
