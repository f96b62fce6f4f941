//! Hit-rate bench: replays a tile workload through tamis against a counting origin and reports
//! what an operator needs to size `cache.max_bytes`: hit ratio, bytes served from cache vs
//! origin, origin requests/s, evictions, and memory (RSS against cached bytes).
//!
//!   cargo bench --bench hitrate                                  # defaults below
//!   TILES=50000 REQUESTS=200000 SKEW=1.0 MAX_BYTES=67108864 cargo bench --bench hitrate
//!   LOG=access.log cargo bench --bench hitrate                    # one tile path per line (z/x/y.png)
//!   SMOKE=1 cargo bench --bench hitrate                           # a few seconds (CI)
//!
//! Everything runs in this process on loopback: the origin, tamis, the client.

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

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let paths = Arc::new(paths);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, paths, next) = (client.clone(), paths.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let uri: hyper::Uri = format!("http://{addr}/t/{p}").parse().expect("uri");
                    if let Ok(resp) = client.get(uri).await {
                        let _ = resp.into_body().collect().await;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
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
}
