//! Hit-rate bench: replays a tile workload through tamis against a counting origin and reports
//! what an operator needs to size `cache.max_bytes`: hit ratio, bytes served from cache vs
//! origin, origin requests/s, evictions, and memory (RSS against cached bytes).
//!
//!   cargo bench --bench hitrate                                  # defaults below
//!   TILES=50000 REQUESTS=200000 SKEW=1.0 MAX_BYTES=67108864 cargo bench --bench hitrate
//!   LOG=access.log cargo bench --bench hitrate                    # one tile path per line (z/x/y.png)
//!   SMOKE=1 cargo bench --bench hitrate                           # a few seconds (CI)
//!   NGINX=1 cargo bench --bench hitrate                           # the same workload through
//!                                                                 # nginx proxy_cache too
//!
//! The disk tier (issue 28):
//!
//!   DISK_BYTES=536870912 NGINX=1 cargo bench --bench hitrate      # working set 4 x memory
//!   DISK_BYTES=536870912 NGINX=1 RESTART=1 cargo bench --bench hitrate
//!   DISK_BYTES=4294967296 FILL=100000 cargo bench --bench hitrate # index load time
//!
//! Everything runs on loopback: the origin, tamis, the client. With `NGINX=1`
//! an nginx (`apt-get install nginx-light`) is started beside them, caching on disk with
//! `max_size` = `MAX_BYTES` against the same origin, and the same paths are replayed through it
//! after `NGINX_WAIT` seconds (61: nginx enforces `max_size` only once its cache loader has run,
//! 60 s after start; 0 in smoke mode).
//!
//! With `DISK_BYTES` the tiles default to 4 x `MAX_BYTES` / `SIZE` (a working set four times
//! the memory tier) and, after the in-process memory-only run, the same paths go through the
//! real tamis binary (`CARGO_BIN_EXE_tamis`, so that it can be restarted) with `disk_dir` in a
//! temporary directory and `max_disk_bytes = DISK_BYTES`; nginx then gets `max_size =
//! DISK_BYTES` and a `keys_zone` sized for the objects that fit on disk, never more memory
//! than tamis's `max_bytes`. Hits are read from each answer (`Cache-Status: tamis; hit`, with
//! `detail=disk` for the disk tier; nginx's `$upstream_cache_status`). `RESTART=1` stops and
//! starts tamis and nginx after half of the requests and compares the hit ratio of the 10 000
//! requests (`WINDOW`) before with the first 10 000 after; tamis rebuilds its index in the
//! background meanwhile (reported from `tamis_cache_disk_loading` and
//! `tamis_cache_disk_loaded_objects` on the admin `/metrics`). `FILL=N` fills a fresh tamis
//! with N distinct objects of `SIZE` bytes, restarts it and times the index load, and reports
//! resident memory per indexed object.

use std::convert::Infallible;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tamis::config::Config;
use tamis::server::Server;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Tile paths drawn from a Zipf distribution over `n` tiles (skew 0 = uniform).
fn zipf_paths(n: usize, count: usize, skew: f64) -> Vec<String> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / (k as f64).powf(skew);
        cdf.push(total);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..count)
        .map(|_| {
            let u = rng.next_f64() * total;
            let i = cdf.partition_point(|&c| c < u).min(n - 1);
            // Spread tile indexes over zoom 14 (16384 x 16384 tiles).
            format!("14/{}/{}.png", i % 16384, i / 16384)
        })
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too; a benchmark is not a test.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let smoke = std::env::var_os("SMOKE").is_some();
    let size: usize = env("SIZE", 20_000);
    let max_bytes: u64 = env("MAX_BYTES", if smoke { 8 << 20 } else { 64 << 20 });
    let disk_bytes: Option<u64> = std::env::var("DISK_BYTES")
        .ok()
        .map(|v| v.parse().expect("DISK_BYTES: a number of bytes"));
    // With a disk tier, a working set four times the memory tier.
    let tiles_default = match disk_bytes {
        Some(_) => (4 * max_bytes as usize / size).max(1),
        None if smoke => 2_000,
        None => 20_000,
    };
    let tiles: usize = env("TILES", tiles_default);
    let requests: usize = env("REQUESTS", if smoke { 10_000 } else { 100_000 });
    let skew: f64 = env("SKEW", 1.0);
    let concurrency: usize = env("CONCURRENCY", 32);
    let restart = std::env::var_os("RESTART").is_some();
    let window: usize = env("WINDOW", if smoke { 1_000 } else { 10_000 });
    let fill: usize = env("FILL", 0);
    if restart && disk_bytes.is_none() {
        eprintln!("RESTART=1 needs DISK_BYTES (a restart empties a memory-only cache)");
        std::process::exit(2);
    }
    let paths = match std::env::var("LOG") {
        Ok(file) => std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => zipf_paths(tiles, requests, skew),
    };

    // The origin: one shared body, counts what it serves.
    let origin_requests = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(vec![b't'; size]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind origin");
    let origin = listener.local_addr().expect("origin address");
    let counter = origin_requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (counter, body) = (counter.clone(), body.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut resp = hyper::Response::new(Full::new(body.clone()));
                    resp.headers_mut().insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=86400"),
                    );
                    resp.headers_mut()
                        .insert("content-type", http::HeaderValue::from_static("image/png"));
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let max_object_bytes = (size as u64 * 2).min(max_bytes);

    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nmax_bytes = {max_bytes}\nmax_object_bytes = {max_object_bytes}\nstatus_header = false\n[log]\naccess = false\n[upstream]\nuser_agent = \"tamis-bench (+https://operator.test/)\"\n[[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/t/\"\nupstream = \"http://{origin}/{{z}}/{{x}}/{{y}}.png\"\n# One client replays a whole workload: no per-client rate.\nrate_limit = \"off\"\n",
    );
    let config = Config::parse(&config, Path::new("hitrate.toml")).expect("bench config");
    let server = Server::bind(config).await.expect("bind tamis");
    let addr = server.http_addr().expect("tamis address");
    let state = server.state().clone();
    tokio::spawn(server.run(std::future::pending()));
    let rss_before = rss_bytes();

    let paths = Arc::new(paths);
    let start = Instant::now();
    replay(
        &format!("http://{addr}/t/"),
        &paths,
        0..paths.len(),
        concurrency,
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();

    let (cache_bytes, entries) = state.cache.size().await;
    state.metrics.set_cache_size(cache_bytes, entries);
    let text = String::from_utf8(state.metrics.render().expect("metrics")).unwrap_or_default();
    let hits = metric(&text, "tamis_cache_lookups_total{result=\"hit\"")
        + metric(&text, "tamis_cache_lookups_total{result=\"coalesced\"");
    let lookups = metric(&text, "tamis_cache_lookups_total{");
    let from_cache = metric(&text, "tamis_served_bytes_total{result=\"cache\"");
    let from_upstream = metric(&text, "tamis_served_bytes_total{result=\"upstream\"");
    let evicted = metric(&text, "tamis_cache_evictions_total{result=\"size\"");
    let origin_n = origin_requests.load(Ordering::Relaxed);
    let rss = rss_bytes();
    let memory_hit_ratio = 100.0 * hits / lookups.max(1.0);

    println!("workload      {} requests over {} distinct tiles of {size} B (zipf skew {skew}), {concurrency} clients", paths.len(), if std::env::var("LOG").is_ok() { "logged".to_owned() } else { tiles.to_string() });
    println!(
        "max_bytes     {max_bytes} ({:.0} MiB){}",
        mib(max_bytes as f64),
        if disk_bytes.is_some() {
            format!(
                "; the tiles are {:.1} x max_bytes",
                (tiles * size) as f64 / max_bytes as f64
            )
        } else {
            String::new()
        }
    );
    println!("hit ratio     {memory_hit_ratio:.1} % (memory only, in process)");
    println!(
        "bytes         {:.1} MiB from cache, {:.1} MiB from origin",
        mib(from_cache),
        mib(from_upstream)
    );
    println!(
        "origin        {origin_n} requests ({:.0} /s), {:.0} requests/s through tamis",
        origin_n as f64 / elapsed,
        paths.len() as f64 / elapsed
    );
    println!(
        "cache         {entries} entries, {:.1} MiB held, {evicted} evicted for size",
        mib(cache_bytes as f64)
    );
    println!(
        "memory        RSS {:.1} MiB ({:.1} MiB before the run); target <= 1.15 x cached + 30 MiB = {:.1} MiB",
        mib(rss as f64),
        mib(rss_before as f64),
        1.15 * mib(cache_bytes as f64) + 30.0
    );
    println!("elapsed       {elapsed:.2} s");

    let half = if restart {
        paths.len() / 2
    } else {
        paths.len()
    };
    let mut tamis_disk = None;
    if let Some(disk_bytes) = disk_bytes {
        let fits = tiles as u64 * (size as u64 + 1024);
        if fits > disk_bytes {
            eprintln!(
                "warning: {tiles} tiles of {size} B (+ ~1 KiB of head each) do not fit in DISK_BYTES = {disk_bytes}"
            );
        }
        let origin_before = origin_requests.load(Ordering::Relaxed);
        let dir = scratch_dir("tamis-hitrate-disk");
        let mut tamis = TamisProc::new(&dir.path, origin, max_bytes, max_object_bytes, disk_bytes)
            .unwrap_or_else(|e| fail(&e));
        tamis.start().await.unwrap_or_else(|e| fail(&e));
        let base = format!("http://127.0.0.1:{}/t/", tamis.port);
        let start = Instant::now();
        let first = replay(&base, &paths, 0..half, concurrency).await;
        let mut elapsed = start.elapsed().as_secs_f64();
        let mut run = DiskRun {
            first,
            second: None,
            load: None,
            ready_ms: 0.0,
        };
        if restart {
            // A graceful stop (SIGTERM), as `systemctl restart` and a rollout do.
            tamis.stop();
            let spawned = Instant::now();
            tamis.start().await.unwrap_or_else(|e| fail(&e));
            run.ready_ms = spawned.elapsed().as_secs_f64() * 1e3;
            let watcher = tokio::spawn(watch_loader(tamis.admin, spawned));
            let start = Instant::now();
            run.second = Some(replay(&base, &paths, half..paths.len(), concurrency).await);
            elapsed += start.elapsed().as_secs_f64();
            run.load = watcher.await.ok().flatten();
        }
        let text = tamis.metrics().await;
        let origin_n = origin_requests.load(Ordering::Relaxed) - origin_before;
        let (files, blocks) = disk_usage(&dir.path.join("cache"));
        let (dirs, dir_blocks) = dir_usage(&dir.path.join("cache"));
        println!();
        println!(
            "the same workload through the tamis binary with its disk tier (max_bytes {:.0} MiB, max_disk_bytes {:.0} MiB):",
            mib(max_bytes as f64),
            mib(disk_bytes as f64)
        );
        let all = run.all();
        println!(
            "hit ratio     {:.1} % ({:.1} % from memory, {:.1} % from disk; {:.1} % coalesced)",
            all.ratio(HIT, DISK_HIT),
            all.ratio(HIT, HIT),
            all.ratio(DISK_HIT, DISK_HIT),
            all.ratio(COLLAPSED, COLLAPSED)
        );
        println!(
            "origin        {origin_n} requests ({:.0} /s), {:.0} requests/s through tamis",
            origin_n as f64 / elapsed,
            paths.len() as f64 / elapsed
        );
        println!(
            "disk          {} entries, {:.1} MiB counted (tamis_cache_disk_bytes), {files} files taking {:.1} MiB of blocks, {dirs} directories {:.1} MiB; evicted: {} size, {} expired, {} corrupt; write errors: {}",
            gauge(&text, "tamis_cache_disk_entries"),
            mib(gauge(&text, "tamis_cache_disk_bytes")),
            mib(blocks as f64),
            mib(dir_blocks as f64),
            metric(&text, "tamis_cache_disk_evictions_total{result=\"size\""),
            metric(&text, "tamis_cache_disk_evictions_total{result=\"expired\""),
            metric(&text, "tamis_cache_disk_evictions_total{result=\"corrupt\""),
            metric(&text, "tamis_cache_disk_write_errors_total{"),
        );
        println!(
            "memory        tamis RSS {:.1} MiB at the end",
            mib(tamis.rss() as f64)
        );
        if restart {
            run.print_restart(window);
        }
        println!("elapsed       {elapsed:.2} s");
        tamis_disk = Some(run);
    }

    if std::env::var_os("NGINX").is_some() {
        let origin_before = origin_requests.load(Ordering::Relaxed);
        let wait = env("NGINX_WAIT", if smoke { 0 } else { 61 });
        if wait > 0 {
            eprintln!("waiting {wait} s for nginx's cache loader (its cap applies only after it)");
        }
        let cap = disk_bytes.unwrap_or(max_bytes);
        // keys_zone: about 8 000 keys per MiB. With a disk tier, room for the keys of what
        // fits on disk, never more than tamis's max_bytes; without, 32 MiB as before.
        let zone_mib = match disk_bytes {
            Some(d) => (d / size as u64 / 8_000 + 2).min(max_bytes >> 20).max(1),
            None => 32,
        };
        match nginx_run(origin, &paths, concurrency, cap, zone_mib, wait, restart).await {
            Ok(n) => {
                let origin_n = origin_requests.load(Ordering::Relaxed) - origin_before;
                let all = n.run.all();
                println!();
                println!(
                    "the same workload through nginx proxy_cache (max_size = {}, on disk; keys_zone {zone_mib} MiB):",
                    if disk_bytes.is_some() { "DISK_BYTES" } else { "max_bytes" }
                );
                let tamis_ratio = match &tamis_disk {
                    Some(t) => format!(
                        "tamis with its disk tier {:.1} %, memory only {memory_hit_ratio:.1} %",
                        t.all().ratio(HIT, DISK_HIT)
                    ),
                    None => format!("tamis {memory_hit_ratio:.1} %"),
                };
                println!(
                    "hit ratio     {:.1} % ({tamis_ratio})",
                    all.ratio(HIT, DISK_HIT)
                );
                println!(
                    "bytes         {:.1} MiB from cache, {:.1} MiB from origin",
                    mib(all.bytes_hit as f64),
                    mib(all.bytes_other as f64)
                );
                println!(
                    "origin        {origin_n} requests ({:.0} /s), {:.0} requests/s through nginx",
                    origin_n as f64 / n.elapsed,
                    paths.len() as f64 / n.elapsed
                );
                println!(
                    "cache         {} files, {:.1} MiB on disk at the end, {:.1} MiB at most \
                     during the run (nginx trims to max_size in the background and counts no \
                     evictions){}",
                    n.files,
                    mib(n.disk_bytes as f64),
                    mib(n.peak_bytes as f64),
                    if wait < 61 {
                        "; NGINX_WAIT < 61 s: the cap was not enforced yet"
                    } else {
                        ""
                    }
                );
                if restart {
                    n.run.print_restart(window);
                }
                println!("elapsed       {:.2} s", n.elapsed);
            }
            Err(e) => fail(&format!("nginx comparison not run: {e}")),
        }
    }

    if fill > 0 {
        fill_and_load(origin, fill, size, max_bytes, max_object_bytes, concurrency).await;
    }
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1)
}

/// The value of a metric without labels (0 when absent).
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What one request got, by its place in the workload.
const NONE: u8 = 0;
const MISS: u8 = 1;
const HIT: u8 = 2;
const DISK_HIT: u8 = 3;
const COLLAPSED: u8 = 4;

/// What came back from one replay, read from a response header naming cache hits.
#[derive(Default)]
struct Tally {
    /// Per request, in workload order: NONE, MISS, HIT, DISK_HIT or COLLAPSED.
    outcomes: Vec<u8>,
    bytes_hit: u64,
    bytes_other: u64,
}

impl Tally {
    /// Percentage of answered requests whose outcome is within `lo..=hi`.
    fn ratio(&self, lo: u8, hi: u8) -> f64 {
        window_ratio(&self.outcomes, lo, hi)
    }
}

fn window_ratio(outcomes: &[u8], lo: u8, hi: u8) -> f64 {
    let answered = outcomes.iter().filter(|&&o| o != NONE).count();
    let n = outcomes.iter().filter(|&&o| (lo..=hi).contains(&o)).count();
    100.0 * n as f64 / answered.max(1) as f64
}

/// A replay through a server that may have been restarted half-way.
struct DiskRun {
    first: Tally,
    second: Option<Tally>,
    load: Option<LoadReport>,
    /// From the restart's spawn to the first 200 from /healthz.
    ready_ms: f64,
}

impl DiskRun {
    fn all(&self) -> Tally {
        let mut all = Tally {
            outcomes: self.first.outcomes.clone(),
            bytes_hit: self.first.bytes_hit,
            bytes_other: self.first.bytes_other,
        };
        if let Some(s) = &self.second {
            all.outcomes.extend_from_slice(&s.outcomes);
            all.bytes_hit += s.bytes_hit;
            all.bytes_other += s.bytes_other;
        }
        all
    }

    fn print_restart(&self, window: usize) {
        let Some(second) = &self.second else { return };
        let before = &self.first.outcomes[self.first.outcomes.len().saturating_sub(window)..];
        let after = &second.outcomes[..window.min(second.outcomes.len())];
        let (b, a) = (
            window_ratio(before, HIT, DISK_HIT),
            window_ratio(after, HIT, DISK_HIT),
        );
        println!(
            "restart       after {} requests: hit ratio of the last {window} before {b:.1} %, of the first {window} after {a:.1} % ({:+.1} points; {:.1} % from disk), of the {} after {:.1} %",
            self.first.outcomes.len(),
            a - b,
            window_ratio(after, DISK_HIT, DISK_HIT),
            second.outcomes.len(),
            second.ratio(HIT, DISK_HIT),
        );
        if self.ready_ms > 0.0 {
            match &self.load {
                Some(l) => println!(
                    "              answering {:.0} ms after the restart; index loaded {} objects {:.2} s after it",
                    self.ready_ms, l.objects, l.seconds
                ),
                None => println!(
                    "              answering {:.0} ms after the restart; the index load was not seen to end",
                    self.ready_ms
                ),
            }
        }
    }
}

/// Fetches `paths[range]` under `base` with `concurrency` clients, each taking the next path in
/// turn, and records what each got: a hit when `X-Cache-Status` is `HIT` (nginx's
/// `$upstream_cache_status`) or `Cache-Status` is `tamis; hit…` (a disk hit when it says
/// `detail=disk`), coalesced when tamis says `collapsed`.
async fn replay(
    base: &str,
    paths: &Arc<Vec<String>>,
    range: Range<usize>,
    concurrency: usize,
) -> Tally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(range.start));
    let outcomes: Arc<Vec<AtomicU8>> =
        Arc::new((range.clone()).map(|_| AtomicU8::new(NONE)).collect());
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, paths, next, outcomes) = (
                client.clone(),
                paths.clone(),
                next.clone(),
                outcomes.clone(),
            );
            let (base, range) = (base.to_owned(), range.clone());
            tokio::spawn(async move {
                let (mut bytes_hit, mut bytes_other) = (0, 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        break;
                    }
                    let uri: hyper::Uri = format!("{base}{}", paths[i]).parse().expect("uri");
                    let Ok(resp) = client.get(uri).await else {
                        continue;
                    };
                    let outcome = classify(resp.headers());
                    let n = resp
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len() as u64);
                    outcomes[i - range.start].store(outcome, Ordering::Relaxed);
                    if outcome == HIT || outcome == DISK_HIT {
                        bytes_hit += n;
                    } else {
                        bytes_other += n;
                    }
                }
                (bytes_hit, bytes_other)
            })
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        if let Ok((h, o)) = w.await {
            total.bytes_hit += h;
            total.bytes_other += o;
        }
    }
    total.outcomes = outcomes.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    total
}

fn classify(headers: &http::HeaderMap) -> u8 {
    if headers
        .get("x-cache-status")
        .is_some_and(|v| v.as_bytes() == b"HIT")
    {
        return HIT;
    }
    match headers.get("cache-status").and_then(|v| v.to_str().ok()) {
        Some(cs) if cs.starts_with("tamis; hit") => {
            if cs.contains("detail=disk") {
                DISK_HIT
            } else {
                HIT
            }
        }
        Some(cs) if cs.contains("collapsed") => COLLAPSED,
        _ => MISS,
    }
}

/// A scratch directory, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn scratch_dir(name: &str) -> Scratch {
    let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    // nginx's workers drop to an unprivileged user when it runs as root.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
    Scratch { path }
}

/// `N` distinct free loopback ports: all are held until all are read, since a port released
/// and asked for again can come back (CI once gave tamis's listener and its admin the same).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
        })
        .collect();
    std::array::from_fn(|i| held[i].local_addr().map_or(0, |a| a.port()))
}

/// SIGTERM (a graceful stop: tamis drains, nginx's master stops its workers and cache
/// manager; SIGKILL would orphan them), then waits.
fn terminate(child: &mut std::process::Child) {
    let stopped = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    if !stopped {
        let _ = child.kill();
    }
    let _ = child.wait();
}

async fn wait_port(port: u16) -> bool {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.get(url.parse().ok()?).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The tamis binary, with an admin listener and a disk tier in `dir/cache`.
struct TamisProc {
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    admin: u16,
    child: Option<std::process::Child>,
}

impl TamisProc {
    fn new(
        dir: &Path,
        origin: std::net::SocketAddr,
        max_bytes: u64,
        max_object_bytes: u64,
        disk_bytes: u64,
    ) -> Result<TamisProc, String> {
        let [port, admin] = free_ports::<2>();
        let conf = dir.join("tamis.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n# A restart without the 5 s drain meant for load balancers.\ndrain = \"0s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [cache]\nmax_bytes = {max_bytes}\nmax_object_bytes = {max_object_bytes}\n\
             status_header = true\ndisk_dir = \"{}\"\nmax_disk_bytes = {disk_bytes}\n\
             [log]\naccess = false\n[upstream]\nuser_agent = \"tamis-bench (+https://operator.test/)\"\n\
             [[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/t/\"\n\
             upstream = \"http://{origin}/{{z}}/{{x}}/{{y}}.png\"\nrate_limit = \"off\"\n",
            dir.join("cache").display()
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        Ok(TamisProc {
            conf,
            log: dir.join("tamis.log"),
            port,
            admin,
            child: None,
        })
    }

    /// Starts it and waits for the admin `/healthz`.
    async fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tamis"))
            .arg("--config")
            .arg(&self.conf)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tamis: {e}"))?;
        self.child = Some(child);
        let health = format!("http://127.0.0.1:{}/healthz", self.admin);
        for _ in 0..2000 {
            if matches!(http_get(&health).await, Some((200, _))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Err(format!("tamis did not start: {log}"))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    async fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .map(|(_, t)| t)
            .unwrap_or_default()
    }

    fn rss(&self) -> u64 {
        self.child.as_ref().map_or(0, |c| {
            std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                .ok()
                .and_then(|s| {
                    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                    l.split_whitespace().nth(1)?.parse::<u64>().ok()
                })
                .map_or(0, |kb| kb * 1024)
        })
    }
}

impl Drop for TamisProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long tamis took to index its disk tier after a start.
struct LoadReport {
    objects: u64,
    seconds: f64,
}

/// Polls `/metrics` until `tamis_cache_disk_loading` is 0; the time is from `since`.
async fn watch_loader(admin: u16, since: Instant) -> Option<LoadReport> {
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Some((200, text)) = http_get(&url).await {
            if text.contains("tamis_cache_disk_loading ")
                && gauge(&text, "tamis_cache_disk_loading") == 0.0
            {
                return Some(LoadReport {
                    objects: gauge(&text, "tamis_cache_disk_loaded_objects") as u64,
                    seconds: since.elapsed().as_secs_f64(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Fills a fresh tamis with `n` distinct objects, restarts it, and times the index load; and
/// the resident memory the loaded index takes per object (against the same tamis started on
/// an empty directory).
async fn fill_and_load(
    origin: std::net::SocketAddr,
    n: usize,
    size: usize,
    max_bytes: u64,
    max_object_bytes: u64,
    concurrency: usize,
) {
    let disk_bytes: u64 = env("FILL_DISK_BYTES", n as u64 * (size as u64 + 2048) * 5 / 4);
    let dir = scratch_dir("tamis-hitrate-fill");
    let mut tamis = TamisProc::new(&dir.path, origin, max_bytes, max_object_bytes, disk_bytes)
        .unwrap_or_else(|e| fail(&e));
    tamis.start().await.unwrap_or_else(|e| fail(&e));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = tamis.rss();
    // Zoom 18 (2^18 x 2^18 tiles): n distinct paths.
    let paths: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| format!("18/{}/{}.png", i % 262_144, i / 262_144))
            .collect(),
    );
    // The writer thread drops writes while its queue (1024) is full, so a fill at full speed
    // leaves part of the objects in memory only: fill in chunks of 512 and let the writer
    // catch up after each, so that all n are on disk for the load.
    let base = format!("http://127.0.0.1:{}/t/", tamis.port);
    let start = Instant::now();
    let mut answered = 0;
    let mut entries = 0.0;
    for chunk in (0..n).step_by(512) {
        let filled = replay(&base, &paths, chunk..(chunk + 512).min(n), concurrency).await;
        answered += filled.outcomes.iter().filter(|&&o| o != NONE).count();
        let (mut last, mut still) = (-1.0, 0);
        while still < 5 {
            let text = tamis.metrics().await;
            entries = gauge(&text, "tamis_cache_disk_entries")
                + metric(&text, "tamis_cache_disk_write_errors_total{");
            if entries >= answered as f64 {
                break;
            }
            still = if entries == last { still + 1 } else { 0 };
            last = entries;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let fill_s = start.elapsed().as_secs_f64();
    let misses = answered;
    let text = tamis.metrics().await;
    let dropped = metric(&text, "tamis_cache_disk_write_errors_total{");
    let disk_counted = gauge(&text, "tamis_cache_disk_bytes");
    tamis.stop();
    let (files, blocks) = disk_usage(&dir.path.join("cache"));
    let (dirs, dir_blocks) = dir_usage(&dir.path.join("cache"));
    let spawned = Instant::now();
    tamis.start().await.unwrap_or_else(|e| fail(&e));
    let ready_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let load = watch_loader(tamis.admin, spawned).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_loaded = tamis.rss();
    println!();
    println!(
        "fill and load: {n} distinct objects of {size} B through a fresh tamis (max_bytes {:.0} MiB, max_disk_bytes {:.0} MiB)",
        mib(max_bytes as f64),
        mib(disk_bytes as f64)
    );
    println!(
        "fill          {:.1} s ({:.0} objects/s, paced to the disk writer); {} objects on disk, {dropped} writes dropped or failed (tamis_cache_disk_write_errors_total); {misses} answers",
        fill_s,
        n as f64 / fill_s,
        entries - dropped
    );
    println!(
        "on disk       {files} files, {:.1} MiB counted, {:.1} MiB of blocks ({:.2} x); {dirs} directories, {:.1} MiB more ({:.2} x in all)",
        mib(disk_counted),
        mib(blocks as f64),
        blocks as f64 / disk_counted.max(1.0),
        mib(dir_blocks as f64),
        (blocks + dir_blocks) as f64 / disk_counted.max(1.0)
    );
    match load {
        Some(l) => {
            println!(
                "load          answering {ready_ms:.0} ms after the start; {} objects indexed {:.2} s after it ({:.0} objects/s; page cache warm)",
                l.objects,
                l.seconds,
                l.objects as f64 / l.seconds
            );
            println!(
                "memory        RSS {:.1} MiB with the index loaded, {:.1} MiB on an empty directory: {:.0} B per indexed object",
                mib(rss_loaded as f64),
                mib(rss_empty as f64),
                (rss_loaded as f64 - rss_empty as f64) / l.objects.max(1) as f64
            );
        }
        None => println!("load          the loader was not seen to finish within 600 s"),
    }
}

struct NginxRun {
    run: DiskRun,
    elapsed: f64,
    files: u64,
    disk_bytes: u64,
    peak_bytes: u64,
}

/// nginx with a `proxy_cache` in `dir/cache`, started and stopped at will; stopped when
/// dropped.
struct Nginx {
    conf: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl Nginx {
    async fn start(&mut self) -> Result<(), String> {
        let child = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nginx (apt-get install nginx-light): {e}"))?;
        self.child = Some(child);
        if !wait_port(self.port).await {
            let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx did not start: {log}"));
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replays `paths` through an nginx `proxy_cache` in front of `origin`, with the same URL
/// mapping as the tamis route (`/t/z/x/y.png` → `/z/x/y.png`) and the cache capped at
/// `max_size`; with `restart`, nginx is stopped and started again half-way.
#[allow(clippy::too_many_arguments)]
async fn nginx_run(
    origin: std::net::SocketAddr,
    paths: &Arc<Vec<String>>,
    concurrency: usize,
    max_size: u64,
    zone_mib: u64,
    wait: u64,
    restart: bool,
) -> Result<NginxRun, String> {
    let scratch = scratch_dir("tamis-hitrate-nginx");
    let dir = scratch.path.clone();
    std::fs::create_dir_all(dir.join("cache")).map_err(|e| format!("{}: {e}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("cache"), std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
    }
    let [port] = free_ports::<1>();
    let d = dir.display();
    // The cache manager trims often and in large batches, so the cap holds as closely as
    // nginx can hold it.
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           proxy_cache_path {d}/cache levels=1:2 keys_zone=t:{zone_mib}m max_size={max_size} inactive=1d \
         use_temp_path=off manager_files=10000 manager_sleep=10ms;\n\
           upstream origin {{ server {origin}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location /t/ {{\n\
               proxy_pass http://origin/;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_cache t;\n      proxy_cache_lock on;\n\
               add_header X-Cache-Status $upstream_cache_status always;\n    }}\n  }}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut nginx = Nginx {
        conf: conf_path,
        dir: dir.clone(),
        port,
        child: None,
    };
    nginx.start().await?;
    // nginx's cache manager enforces max_size only once the cache loader has run, 60 s after
    // start: before that the cache grows without bound (and hits like an unbounded one).
    tokio::time::sleep(Duration::from_secs(wait)).await;
    // The cap is enforced in the background: sample how far the cache goes over it.
    let cache_dir = dir.join("cache");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (cache_dir, sampling) = (cache_dir.clone(), sampling.clone());
        tokio::task::spawn_blocking(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(disk_usage(&cache_dir).1);
                std::thread::sleep(Duration::from_millis(500));
            }
            peak
        })
    };
    let base = format!("http://127.0.0.1:{port}/t/");
    let half = if restart {
        paths.len() / 2
    } else {
        paths.len()
    };
    let start = Instant::now();
    let first = replay(&base, paths, 0..half, concurrency).await;
    let mut elapsed = start.elapsed().as_secs_f64();
    let mut run = DiskRun {
        first,
        second: None,
        load: None,
        ready_ms: 0.0,
    };
    if restart {
        nginx.stop();
        let spawned = Instant::now();
        nginx.start().await?;
        run.ready_ms = spawned.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        run.second = Some(replay(&base, paths, half..paths.len(), concurrency).await);
        elapsed += start.elapsed().as_secs_f64();
    }
    sampling.store(false, Ordering::Relaxed);
    let (files, disk_bytes) = disk_usage(&cache_dir);
    let peak_bytes = sampler.await.unwrap_or(0).max(disk_bytes);
    drop(nginx);
    drop(scratch);
    Ok(NginxRun {
        run,
        elapsed,
        files,
        disk_bytes,
        peak_bytes,
    })
}

/// Directories under `dir` (not counting `dir`) and the blocks they take: each is an inode
/// and at least one filesystem block, which neither tamis's nor nginx's bound counts.
fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut dirs, mut bytes) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (d, b) = dir_usage(&entry.path());
            dirs += d + 1;
            bytes += b + meta.blocks() * 512;
        }
    }
    (dirs, bytes)
}

/// Files under `dir` and the disk space they take (allocated blocks, as nginx counts).
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut files, mut bytes) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (f, b) = disk_usage(&entry.path());
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.blocks() * 512;
        }
    }
    (files, bytes)
}
