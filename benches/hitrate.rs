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
//! Everything runs in this process on loopback: the origin, tamis, the client. With `NGINX=1`
//! an nginx (`apt-get install nginx-light`) is started beside them, caching on disk with
//! `max_size` = `MAX_BYTES` against the same origin, and the same paths are replayed through it
//! after `NGINX_WAIT` seconds (61: nginx enforces `max_size` only once its cache loader has run,
//! 60 s after start; 0 in smoke mode).

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    let tiles: usize = env("TILES", if smoke { 2_000 } else { 20_000 });
    let requests: usize = env("REQUESTS", if smoke { 10_000 } else { 100_000 });
    let skew: f64 = env("SKEW", 1.0);
    let size: usize = env("SIZE", 20_000);
    let max_bytes: u64 = env("MAX_BYTES", if smoke { 8 << 20 } else { 64 << 20 });
    let concurrency: usize = env("CONCURRENCY", 32);
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

    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nmax_bytes = {max_bytes}\nmax_object_bytes = {}\nstatus_header = false\n[log]\naccess = false\n[upstream]\nuser_agent = \"tamis-bench (+https://operator.test/)\"\n[[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/t/\"\nupstream = \"http://{origin}/{{z}}/{{x}}/{{y}}.png\"\n# One client replays a whole workload: no per-client rate.\nrate_limit = \"off\"\n",
        (size as u64 * 2).min(max_bytes)
    );
    let config = Config::parse(&config, Path::new("hitrate.toml")).expect("bench config");
    let server = Server::bind(config).await.expect("bind tamis");
    let addr = server.http_addr().expect("tamis address");
    let state = server.state().clone();
    tokio::spawn(server.run(std::future::pending()));
    let rss_before = rss_bytes();

    let paths = Arc::new(paths);
    let start = Instant::now();
    replay(&format!("http://{addr}/t/"), &paths, concurrency).await;
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
    let mib = |b: f64| b / (1024.0 * 1024.0);

    println!("workload      {} requests over {} distinct tiles of {size} B (zipf skew {skew}), {concurrency} clients", paths.len(), if std::env::var("LOG").is_ok() { "logged".to_owned() } else { tiles.to_string() });
    println!(
        "max_bytes     {max_bytes} ({:.0} MiB)",
        mib(max_bytes as f64)
    );
    println!("hit ratio     {:.1} %", 100.0 * hits / lookups.max(1.0));
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

    if std::env::var_os("NGINX").is_some() {
        let origin_before = origin_requests.load(Ordering::Relaxed);
        let wait = env("NGINX_WAIT", if smoke { 0 } else { 61 });
        if wait > 0 {
            eprintln!("waiting {wait} s for nginx's cache loader (its cap applies only after it)");
        }
        match nginx_run(origin, &paths, concurrency, max_bytes, wait).await {
            Ok(n) => {
                let origin_n = origin_requests.load(Ordering::Relaxed) - origin_before;
                println!();
                println!(
                    "the same workload through nginx proxy_cache (max_size = max_bytes, on disk):"
                );
                println!(
                    "hit ratio     {:.1} % (tamis {:.1} %)",
                    100.0 * n.tally.hits as f64 / n.tally.responses.max(1) as f64,
                    100.0 * hits / lookups.max(1.0)
                );
                println!(
                    "bytes         {:.1} MiB from cache, {:.1} MiB from origin",
                    mib(n.tally.bytes_hit as f64),
                    mib(n.tally.bytes_other as f64)
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
                println!("elapsed       {:.2} s", n.elapsed);
            }
            Err(e) => {
                eprintln!("nginx comparison not run: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// What came back from one replay, read from a response header naming cache hits.
#[derive(Default)]
struct Tally {
    responses: u64,
    hits: u64,
    bytes_hit: u64,
    bytes_other: u64,
}

/// Fetches every path under `base` with `concurrency` clients, each taking the next path in
/// turn; counts as hits the answers whose `X-Cache-Status` is `HIT` (nginx's
/// `$upstream_cache_status`).
async fn replay(base: &str, paths: &Arc<Vec<String>>, concurrency: usize) -> Tally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, paths, next) = (client.clone(), paths.clone(), next.clone());
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let uri: hyper::Uri = format!("{base}{p}").parse().expect("uri");
                    let Ok(resp) = client.get(uri).await else {
                        continue;
                    };
                    let hit = resp
                        .headers()
                        .get("x-cache-status")
                        .is_some_and(|v| v.as_bytes() == b"HIT");
                    let n = resp
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len() as u64);
                    tally.responses += 1;
                    if hit {
                        tally.hits += 1;
                        tally.bytes_hit += n;
                    } else {
                        tally.bytes_other += n;
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.responses += t.responses;
            total.hits += t.hits;
            total.bytes_hit += t.bytes_hit;
            total.bytes_other += t.bytes_other;
        }
    }
    total
}

struct NginxRun {
    tally: Tally,
    elapsed: f64,
    files: u64,
    disk_bytes: u64,
    peak_bytes: u64,
}

/// Stops nginx and removes its directory, however the run ends.
struct Scratch {
    dir: std::path::PathBuf,
    nginx: Option<std::process::Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.nginx.take() {
            // SIGTERM lets the master stop its workers and cache manager; SIGKILL would leave
            // them running, orphaned.
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replays `paths` through an nginx `proxy_cache` in front of `origin`, with the same URL
/// mapping as the tamis route (`/t/z/x/y.png` → `/z/x/y.png`) and the cache capped at
/// `max_bytes`.
async fn nginx_run(
    origin: std::net::SocketAddr,
    paths: &Arc<Vec<String>>,
    concurrency: usize,
    max_bytes: u64,
    wait: u64,
) -> Result<NginxRun, String> {
    let dir = std::env::temp_dir().join(format!("tamis-hitrate-nginx-{}", std::process::id()));
    let mut scratch = Scratch {
        dir: dir.clone(),
        nginx: None,
    };
    std::fs::create_dir_all(dir.join("cache")).map_err(|e| format!("{}: {e}", dir.display()))?;
    // nginx's workers drop to an unprivileged user when it runs as root.
    let open = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))
    };
    open(&dir)
        .and_then(|_| open(&dir.join("cache")))
        .map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let d = dir.display();
    // keys_zone: about 8 000 keys per MiB. The cache manager trims often and in large batches,
    // so the cap holds as closely as nginx can hold it.
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           proxy_cache_path {d}/cache levels=1:2 keys_zone=t:32m max_size={max_bytes} inactive=1d \
         use_temp_path=off manager_files=10000 manager_sleep=10ms;\n\
           upstream origin {{ server {origin}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location /t/ {{\n\
               proxy_pass http://origin/;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_cache t;\n      proxy_cache_lock on;\n\
               add_header X-Cache-Status $upstream_cache_status always;\n    }}\n  }}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = std::process::Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx (apt-get install nginx-light): {e}"))?;
    scratch.nginx = Some(child);
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !up {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        return Err(format!("nginx did not start: {log}"));
    }
    // nginx's cache manager enforces max_size only once the cache loader has run, 60 s after
    // start: before that the cache grows without bound (and hits like an unbounded one).
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    // The cap is enforced in the background: sample how far the cache goes over it.
    let cache_dir = dir.join("cache");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (cache_dir, sampling) = (cache_dir.clone(), sampling.clone());
        tokio::task::spawn_blocking(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(disk_usage(&cache_dir).1);
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            peak
        })
    };
    let start = Instant::now();
    let tally = replay(&format!("http://127.0.0.1:{port}/t/"), paths, concurrency).await;
    let elapsed = start.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let (files, disk_bytes) = disk_usage(&cache_dir);
    let peak_bytes = sampler.await.unwrap_or(0).max(disk_bytes);
    drop(scratch);
    Ok(NginxRun {
        tally,
        elapsed,
        files,
        disk_bytes,
        peak_bytes,
    })
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
