//! The disk tier against real files in a temporary directory: the bound under churn, restarts
//! of the real binary (objects and their ages kept, what expired meanwhile revalidated),
//! corrupted and truncated files never served, `kill -9` during a busy fill, purge and reload,
//! and a directory that cannot be used or written.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_ports, get, request, route, Reply, Tamis, Upstream, LISTEN};
use http::Method;

/// Calls `f` with every file under `dir` (`tmp/` included) and its metadata.
fn walk(dir: &Path, f: &mut impl FnMut(PathBuf, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            walk(&e.path(), f);
        } else {
            f(e.path(), &meta);
        }
    }
}

/// Every file under `dir` with its length (`tmp/` included).
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    walk(dir, &mut |path, meta| out.push((path, meta.len())));
    out
}

/// Bytes of the files under `dir`, each counted once: a file renamed out of `tmp/` while the
/// walk goes on can be met under both names, as `du` would not count it.
fn bytes_on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashMap::new();
    walk(dir, &mut |_, meta| {
        seen.insert((meta.dev(), meta.ino()), meta.len());
    });
    seen.values().sum()
}

/// The object files (not `tmp/`).
fn objects(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.starts_with(dir.join("tmp")))
        .collect()
}

/// The sum of a metric's series whose line contains every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(admin: SocketAddr) -> String {
    get(admin, "/metrics", &[]).await.text()
}

/// Polls `admin`'s metrics until `check` holds (at most 10 s).
async fn wait_metric(admin: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_of(admin).await;
        if check(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `admin` counts `n` disk write errors of `result`; returns the metrics then.
async fn wait_write_errors(admin: SocketAddr, result: &str, n: f64) -> String {
    let label = format!("result=\"{result}\"");
    wait_metric(admin, &format!("{n} write errors, {label}"), |m| {
        metric(m, "tamis_cache_disk_write_errors_total", &[&label]) == n
    })
    .await
}

/// A config with one `static` route `/t/` to `up`, its disk tier at `disk`.
fn config(listen: &str, disk: &Path, cache: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "{listen}[cache]\ndisk_dir = \"{}\"\n{cache}\n\n{}",
        disk.display(),
        route(
            "t",
            "/t/",
            &up.url("/"),
            &format!("disk_cache = true\n{extra}")
        )
    )
}

/// The `[server]` and `[admin]` sections on fixed ports (a restarted binary keeps them).
fn listen_on(http: u16, admin: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{http}\"\nshutdown_timeout = \"1s\"\ndrain = \"0s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n"
    )
}

/// The real tamis binary on a config file; killed when dropped, so a test that fails midway
/// leaves no process behind holding its ports and directory.
struct Bin {
    child: Option<Child>,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Bin {
    async fn start(config: &Path, http: u16, admin: u16) -> Bin {
        Bin::start_with(
            Command::new(env!("CARGO_BIN_EXE_tamis")),
            config,
            http,
            admin,
        )
        .await
    }

    /// Starts `cmd` (the binary, or a shell that execs it) with `--config FILE run`.
    async fn start_with(mut cmd: Command, config: &Path, http: u16, admin: u16) -> Bin {
        let child = cmd
            .args(["--config", &config.display().to_string(), "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let bin = Bin {
            child: Some(child),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(bin.admin).await.is_err() {
            assert!(Instant::now() < deadline, "tamis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bin
    }

    /// Waits until the start-up loader has indexed the files.
    async fn loaded(&self) -> String {
        wait_metric(self.admin, "the loader", |m| {
            metric(m, "tamis_cache_disk_loading", &[]) == 0.0
        })
        .await
    }

    /// `kill -9`, and what it wrote on stderr.
    fn kill(mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn cached_reply(s: &common::Seen, max_age: u32, n: u64) -> Reply {
    Reply::ok(format!("v{n} {}", s.uri))
        .header("cache-control", &format!("public, max-age={max_age}"))
        .header("etag", "\"v1\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_from_disk_with_the_age_counting_on() {
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    let a = get(bin.http, "/t/1.png", &[]).await;
    assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss; stored"));
    wait_metric(bin.admin, "one object on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 1.0
    })
    .await;
    assert_eq!(objects(&disk).len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    bin.kill();

    let bin = Bin::start(&file, http, admin).await;
    bin.loaded().await;
    let b = get(bin.http, "/t/1.png", &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.header("cache-status"), Some("tamis; hit; detail=disk"));
    assert_eq!(b.body, a.body, "the same bytes");
    assert_eq!(b.header("etag"), a.header("etag"), "tamis's own ETag kept");
    let age: u64 = b.header("age").unwrap().parse().unwrap();
    assert!(age >= 2, "the age kept counting across the restart: {age}");
    assert_eq!(up.count(), 1, "the upstream was not asked again");
    // Promoted: the next one is a memory hit.
    let c = get(bin.http, "/t/1.png", &[]).await;
    assert_eq!(c.header("cache-status"), Some("tamis; hit"));
    let m = metrics_of(bin.admin).await;
    assert_eq!(
        metric(&m, "tamis_cache_lookups_total", &["result=\"disk_hit\""]),
        1.0
    );
    assert_eq!(metric(&m, "tamis_cache_disk_loaded_objects", &[]), 1.0);
    // The file read for that hit stays open for the next one, within the bound.
    assert_eq!(metric(&m, "tamis_cache_disk_open_files", &[]), 1.0);
    assert!(metric(&m, "tamis_cache_disk_max_open_files", &[]) >= 1.0);
    // Nothing waits for a writer any more; the queue's bound is the default.
    assert_eq!(metric(&m, "tamis_cache_disk_write_queue_objects", &[]), 0.0);
    assert_eq!(metric(&m, "tamis_cache_disk_write_queue_bytes", &[]), 0.0);
    assert_eq!(
        metric(&m, "tamis_cache_disk_write_queue_max_bytes", &[]),
        (64u64 << 20) as f64
    );
    // /status says where, how much and how many.
    let status = get(bin.admin, "/status?format=json", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(v["disk"]["entries"], 1, "{v}");
    assert_eq!(v["disk"]["dir"], disk.display().to_string());
    assert_eq!(v["disk"]["loading"], false);
    assert_eq!(v["disk"]["open_files"], 1, "{v}");
    let html = get(bin.admin, "/status", &[]).await.text();
    assert!(html.contains("Disk: <code>"), "{html}");
    assert!(html.contains("open files kept 1 of at most"), "{html}");
    assert!(
        html.contains("0 objects (0.0 MiB of at most 64.0 MiB) waiting to be written"),
        "{html}"
    );
    assert_eq!(v["disk"]["write_queue_max_bytes"], 64u64 << 20, "{v}");
    bin.kill();

    // `tamis check` says what is kept on disk, and for how long at most.
    let out = Command::new(env!("CARGO_BIN_EXE_tamis"))
        .args(["--config", &file.display().to_string(), "check"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let line = out.lines().find(|l| l.starts_with("disk ")).unwrap_or("");
    assert!(
        line.contains(&disk.display().to_string()) && line.contains("kept there: t"),
        "{out}"
    );
    assert!(out.contains("also kept on disk"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_expired_while_tamis_was_down_is_revalidated_not_served_fresh() {
    let up = Upstream::http(|s| {
        if s.header("if-none-match") == Some("\"v1\"") {
            Reply::ok("")
                .status(304)
                .header("cache-control", "public, max-age=1")
                .header("etag", "\"v1\"")
        } else {
            cached_reply(s, 1, 1)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    let a = get(bin.http, "/t/old.png", &[]).await;
    assert_eq!(a.status, 200);
    wait_metric(bin.admin, "one object on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 1.0
    })
    .await;
    bin.kill();
    let before = objects(&disk);
    assert_eq!(before.len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let bin = Bin::start(&file, http, admin).await;
    bin.loaded().await;
    let b = get(bin.http, "/t/old.png", &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body, a.body);
    assert_eq!(
        b.header("cache-status"),
        Some("tamis; fwd=stale; fwd-status=304; stored")
    );
    assert_eq!(up.count(), 2, "asked once more, conditionally");
    assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));
    // The refreshed copy is written again, under a name of its own; the old file goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while objects(&disk) == before || objects(&disk).len() != 1 {
        assert!(Instant::now() < deadline, "{:?}", objects(&disk));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!before[0].exists());
    bin.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_and_truncated_files_are_never_served_and_are_removed() {
    let n = Arc::new(AtomicU64::new(0));
    let count = n.clone();
    let up =
        Upstream::http(move |s| cached_reply(s, 3600, count.fetch_add(1, Ordering::SeqCst))).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    let first_a = get(bin.http, "/t/a", &[]).await;
    let first_b = get(bin.http, "/t/b", &[]).await;
    let first_c = get(bin.http, "/t/c", &[]).await;
    wait_metric(bin.admin, "three objects on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 3.0
    })
    .await;
    bin.kill();

    let holding = |needle: &str| -> PathBuf {
        objects(&disk)
            .into_iter()
            .find(|p| {
                let bytes = std::fs::read(p).unwrap();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
            .unwrap()
    };
    let a = holding("v0 /a");
    let b = holding("v1 /b");
    // A flipped bit in a's body (its head and length stay right: only the checksum tells).
    let mut bytes = std::fs::read(&a).unwrap();
    let at = bytes.len() - 6;
    bytes[at] ^= 0x01;
    std::fs::write(&a, &bytes).unwrap();
    // b cut short, as a crash of the machine could leave it.
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() - 3]).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    bin.loaded().await;
    // c vanishes once indexed (removed by hand): a miss, not a failed request.
    let c = holding("v2 /c");
    std::fs::remove_file(&c).unwrap();
    let again_c = get(bin.http, "/t/c", &[]).await;
    assert_eq!(again_c.status, 200);
    assert_eq!(again_c.text(), "v3 /c");
    assert_ne!(again_c.body, first_c.body);
    let again_a = get(bin.http, "/t/a", &[]).await;
    let again_b = get(bin.http, "/t/b", &[]).await;
    assert_eq!(again_a.text(), "v4 /a", "a was fetched again");
    assert_eq!(again_b.text(), "v5 /b", "b was fetched again");
    assert_ne!(again_a.body, first_a.body);
    assert_ne!(again_b.body, first_b.body);
    for x in [&again_a, &again_b] {
        assert_eq!(x.header("cache-status"), Some("tamis; fwd=miss; stored"));
    }
    assert_eq!(up.count(), 6);
    assert!(!a.exists(), "the corrupted file is removed");
    assert!(!b.exists(), "the truncated file is removed");
    let m = metrics_of(bin.admin).await;
    assert_eq!(
        metric(
            &m,
            "tamis_cache_disk_evictions_total",
            &["result=\"corrupt\""]
        ),
        3.0,
        "corrupted, truncated, vanished"
    );
    bin.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_while_tamis_was_down_loses_its_files_at_start() {
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();
    let bin = Bin::start(&file, http, admin).await;
    assert_eq!(get(bin.http, "/t/1", &[]).await.status, 200);
    wait_metric(bin.admin, "one object on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 1.0
    })
    .await;
    bin.kill();
    assert_eq!(objects(&disk).len(), 1);

    // Another max_ttl: another fingerprint, so the old file can never be served.
    let changed = config(&listen_on(http, admin), &disk, "", &up, "max_ttl = \"1h\"");
    std::fs::write(&file, changed).unwrap();
    let bin = Bin::start(&file, http, admin).await;
    let m = bin.loaded().await;
    assert_eq!(metric(&m, "tamis_cache_disk_entries", &[]), 0.0);
    assert_eq!(metric(&m, "tamis_cache_disk_bytes", &[]), 0.0);
    assert!(objects(&disk).is_empty(), "the old route's file is removed");
    let a = get(bin.http, "/t/1", &[]).await;
    assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss; stored"));
    bin.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_busy_fill_leaves_only_whole_objects() {
    // What this can and cannot catch: Linux finishes a write(2) to a regular file before a
    // SIGKILL takes effect, so a torn file needs the kill to land between the writer's system
    // calls; with the file written in place instead of tmp/ + rename, 8 runs of this test did
    // not catch it. Torn and damaged files are caught for certain by the corrupted/truncated
    // test; this one checks the whole path end to end: nothing served after the kill differs
    // from the upstream's bytes, and tmp/ is cleared.
    let body = |uri: &str| -> String { uri.repeat(512 * 1024 / uri.len() + 1) };
    let up = Upstream::http(move |s| {
        Reply::ok(body(&s.uri))
            .header("cache-control", "public, max-age=3600")
            .delay(Duration::from_millis(2))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    let addr = bin.http;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 120 {
                    return;
                }
                get(addr, &format!("/t/{i}"), &[]).await;
            }
        }));
    }
    // Killed in the middle of it: some objects written, some being written, some queued.
    wait_metric(bin.admin, "objects on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) >= 20.0
    })
    .await;
    bin.kill();
    for t in tasks {
        let _ = t.await; // requests cut by the kill fail; that is the point
    }
    let on_disk = objects(&disk).len();
    assert!(on_disk >= 20, "{on_disk}");

    let bin = Bin::start(&file, http, admin).await;
    bin.loaded().await;
    let mut from_disk = 0;
    assert!(
        files(&disk.join("tmp")).is_empty(),
        "what the kill left half-written in tmp/ is removed at start"
    );
    for i in 0..120 {
        let path = format!("/t/{i}");
        let a = get(bin.http, &path, &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.text() == body(&format!("/{i}")),
            "{path}: not the upstream's bytes"
        );
        if a.header("cache-status") == Some("tamis; hit; detail=disk") {
            from_disk += 1;
        }
    }
    assert!(
        from_disk >= 20,
        "served from disk: {from_disk} of {on_disk}"
    );
    let m = metrics_of(bin.admin).await;
    assert_eq!(
        metric(
            &m,
            "tamis_cache_disk_evictions_total",
            &["result=\"corrupt\""]
        ),
        0.0,
        "a kill leaves no torn object in place (tmp/ is never indexed)"
    );
    bin.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_under_churn() {
    let up = Upstream::http(|s| {
        Reply::ok(s.uri.repeat(10_000 / s.uri.len() + 1))
            .header("cache-control", "public, max-age=3600")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let max: u64 = 256 * 1024;
    let t = Tamis::start(&config(
        LISTEN,
        &disk,
        "max_disk_bytes = \"256 KiB\"\nmax_object_bytes = \"64 KiB\"",
        &up,
        "",
    ))
    .await;
    // Sampled all along, from another thread, as `du` would.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, disk) = (done.clone(), disk.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(bytes_on_disk(&disk));
                std::thread::sleep(Duration::from_micros(200));
            }
            most
        })
    };
    for i in 0..150 {
        let a = t.get(&format!("/t/{i}")).await;
        assert_eq!(a.status, 200);
    }
    let admin = t.admin.unwrap();
    // The counted bytes and entries converge on the files on disk (a bug in either count
    // never gets there, and times out). Compared within one snapshot: the two writers may
    // still be working through the queue after the last answer, so a later count of the
    // files can hold one more than an earlier metrics scrape.
    let m = wait_metric(admin, "the counts to match the files", |m| {
        metric(m, "tamis_cache_disk_evictions_total", &["result=\"size\""]) > 0.0
            && metric(m, "tamis_cache_disk_bytes", &[])
                == files(&disk).iter().map(|(_, n)| *n).sum::<u64>() as f64
            && metric(m, "tamis_cache_disk_entries", &[]) as usize == objects(&disk).len()
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(most <= max, "{most} bytes on disk at one moment > {max}");
    let now: u64 = files(&disk).iter().map(|(_, n)| n).sum();
    assert!(now <= max && now > max / 2, "{now}");
    assert_eq!(metric(&m, "tamis_cache_disk_max_bytes", &[]), max as f64);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_reload_remove_files() {
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let two = format!(
        "{}{}",
        config(LISTEN, &disk, "", &up, ""),
        route("u", "/u/", &up.url("/u/"), "disk_cache = true")
    );
    let t = Tamis::start(&two).await;
    let admin = t.admin.unwrap();
    for p in ["/t/1", "/t/2", "/u/1"] {
        assert_eq!(t.get(p).await.status, 200);
    }
    wait_metric(admin, "three objects on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 3.0
    })
    .await;
    assert_eq!(objects(&disk).len(), 3);

    // In both tiers, counted once.
    let purged = request(admin, Method::POST, "/cache/purge?route=t&path=/t/1", &[]).await;
    assert_eq!(purged.text().trim(), "{\"purged\":1}");
    assert_eq!(objects(&disk).len(), 2, "its file is gone");
    let b = t.get("/t/1").await;
    assert_eq!(b.header("cache-status"), Some("tamis; fwd=miss; stored"));
    wait_metric(admin, "three objects on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 3.0
    })
    .await;

    // Route u dropped: its file goes; t's (unchanged) stay.
    let one = format!(
        "{}\n[[route]]\nname = \"w\"\nkind = \"static\"\nprefix = \"/w/\"\nupstream = \"{}\"\n",
        config(LISTEN, &disk, "", &up, ""),
        up.url("/w/")
    );
    assert_eq!(t.reload(&one).await.status, 200);
    assert_eq!(objects(&disk).len(), 2);
    let kept = t.get("/t/2").await;
    assert_eq!(kept.header("cache-status"), Some("tamis; hit"));

    // Route t changed (its fingerprint with it): its files go too.
    let changed = one.replace(
        "disk_cache = true\n",
        "disk_cache = true\nmax_ttl = \"1h\"\n",
    );
    assert_ne!(changed, one);
    assert_eq!(t.reload(&changed).await.status, 200);
    assert_eq!(objects(&disk).len(), 0);
    let m = t.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tamis_cache_disk_evictions_total",
            &["result=\"purged\""]
        ),
        4.0
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_made_degrades_to_memory_with_one_line() {
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file: not even root can make a directory there.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let disk = blocker.join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();

    let bin = Bin::start(&file, http, admin).await;
    let a = get(bin.http, "/t/1", &[]).await;
    let b = get(bin.http, "/t/1", &[]).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(
        b.header("cache-status"),
        Some("tamis; hit"),
        "memory still caches"
    );
    let m = metrics_of(bin.admin).await;
    assert_eq!(metric(&m, "tamis_cache_disk_max_bytes", &[]), 0.0);
    let stderr = bin.kill();
    assert_eq!(
        stderr.matches("caching in memory only").count(),
        1,
        "one line:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_fail_while_running_are_counted_and_fail_no_request() {
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let t = Tamis::start(&config(LISTEN, &disk, "", &up, "")).await;
    let admin = t.admin.unwrap();
    // The directory is taken away under tamis: tmp/ becomes a file, nothing can be written.
    std::fs::remove_dir_all(disk.join("tmp")).unwrap();
    std::fs::write(disk.join("tmp"), b"").unwrap();
    for i in 0..5 {
        let a = t.get(&format!("/t/{i}")).await;
        assert_eq!(a.status, 200);
        let b = t.get(&format!("/t/{i}")).await;
        assert_eq!(b.header("cache-status"), Some("tamis; hit"));
    }
    let m = wait_write_errors(admin, "other", 5.0).await;
    assert_eq!(metric(&m, "tamis_cache_disk_entries", &[]), 0.0);
    assert_eq!(
        metric(&m, "tamis_cache_disk_bytes", &[]),
        0.0,
        "reservations released"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_bytes_counts_full_and_fails_no_request() {
    // No tmpfs can be mounted here; a file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored, as a
    // shell's `trap` leaves it across exec) makes each write fail the way a full disk does.
    let up = Upstream::http(|s| {
        Reply::ok("x".repeat(64 * 1024) + &s.uri).header("cache-control", "public, max-age=3600")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache");
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "trap '' XFSZ; ulimit -f 16 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_tamis"),
    ]);
    let bin = Bin::start_with(sh, &file, http, admin).await;
    for i in 0..3 {
        let a = get(bin.http, &format!("/t/{i}"), &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 64 * 1024 + format!("/{i}").len());
    }
    let m = wait_write_errors(bin.admin, "full", 3.0).await;
    assert_eq!(metric(&m, "tamis_cache_disk_bytes", &[]), 0.0);
    assert!(objects(&disk).is_empty());
    assert!(files(&disk).is_empty(), "no partial file left in tmp/");
    let stderr = bin.kill();
    assert_eq!(
        stderr.matches("cannot write to the disk cache").count(),
        1,
        "logged once, not per write:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_made_read_only_counts_denied_and_fails_no_request() {
    // Root writes through any mode, so the binary runs as `nobody` (setpriv, util-linux), as
    // the packaged service runs as its own user; elsewhere (not root, no setpriv) the test has
    // nothing to show and says so.
    if !rustix::process::geteuid().is_root()
        || Command::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("skipped: needs root and setpriv to run tamis as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    let up = Upstream::http(|s| cached_reply(s, 3600, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755).unwrap();
    let disk = dir.path().join("cache");
    std::fs::create_dir(&disk).unwrap();
    std::os::unix::fs::chown(&disk, Some(NOBODY), Some(NOBODY)).unwrap();
    let [http, admin] = free_ports::<2>();
    let file = dir.path().join("tamis.toml");
    std::fs::write(&file, config(&listen_on(http, admin), &disk, "", &up, "")).unwrap();
    mode(&file, 0o644).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        env!("CARGO_BIN_EXE_tamis"),
    ]);
    let bin = Bin::start_with(cmd, &file, http, admin).await;
    bin.loaded().await;
    // Writable: the first object reaches the disk, as user nobody.
    assert_eq!(get(bin.http, "/t/0", &[]).await.status, 200);
    wait_metric(bin.admin, "one object on disk", |m| {
        metric(m, "tamis_cache_disk_entries", &[]) == 1.0
    })
    .await;
    // Then its temporary directory is made read-only under it (an operator's chmod, a volume
    // remounted): every write is refused, no request fails, memory still caches.
    mode(&disk.join("tmp"), 0o555).unwrap();
    for i in 1..4 {
        let a = get(bin.http, &format!("/t/{i}"), &[]).await;
        assert_eq!(a.status, 200);
        let b = get(bin.http, &format!("/t/{i}"), &[]).await;
        assert_eq!(
            b.header("cache-status"),
            Some("tamis; hit"),
            "memory still caches"
        );
    }
    let m = wait_write_errors(bin.admin, "denied", 3.0).await;
    assert_eq!(metric(&m, "tamis_cache_disk_entries", &[]), 1.0);
    assert_eq!(
        metric(
            &m,
            "tamis_cache_disk_write_errors_total",
            &["result=\"other\""]
        ),
        0.0
    );
    let stderr = bin.kill();
    assert_eq!(
        stderr.matches("cannot write to the disk cache").count(),
        1,
        "logged once, not per write:\n{stderr}"
    );
}
