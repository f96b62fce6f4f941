//! The shared key store (issue 29): what it adds to a tracking request, and what the store
//! holds for 100 000 visitors in a period with location on. Starts Debian's `redis-server` on
//! a free loopback port, persistence off (tests/setup.sh installs it).
//!
//!   cargo bench --bench store              # full run
//!   cargo bench --bench store -- --test    # smoke (CI): a few hundred calls
//!
//! Added latency: `analytics::shared::count_location` for a visitor whose cells are still closed
//! (the only case that asks the store: one pipelined SADD/PEXPIRE/SCARD per cell, country and
//! region), timed call by call; the same with the cells open (no network). Memory: the store's
//! `used_memory` before and after 100 000 distinct visitors are counted in one country and one
//! region with a threshold they never reach (the worst case: an open cell stops growing).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use maxminddb_writer::paths::IpAddrWithMask;
use tamis::analytics::geo::{Database, Gate, Precision};
use tamis::analytics::visitor::ClientAddress;
use tamis::analytics::{Protocol, Pseudonymizer, Runtime, Settings};
use tamis::store::{PersistencePolicy, Store, StoreConfig};

#[derive(serde::Serialize)]
struct Record {
    country: BTreeMap<&'static str, &'static str>,
    subdivisions: Vec<BTreeMap<&'static str, &'static str>>,
}

/// 10.0.0.0/8 in Île-de-France.
fn database(dir: &std::path::Path) -> Database {
    let mut db = maxminddb_writer::Database::default();
    db.metadata.binary_format_major_version = 2;
    db.metadata.database_type = "tamis-bench-City".to_owned();
    let data = db
        .insert_value(Record {
            country: BTreeMap::from([("iso_code", "FR")]),
            subdivisions: vec![BTreeMap::from([("iso_code", "IDF")])],
        })
        .expect("record");
    db.insert_node("10.0.0.0/8".parse::<IpAddrWithMask>().expect("net"), data);
    let path = dir.join("bench.mmdb");
    db.write_to(std::fs::File::create(&path).expect("file"))
        .expect("write");
    Database::open(&path).expect("open")
}

fn runtime(store: &Arc<Store>, min_visitors: usize) -> Runtime {
    Runtime {
        protocol: Protocol::Umami,
        settings: Settings::default(),
        pseudonyms: Arc::new(
            Pseudonymizer::new(Duration::from_secs(86400), None).with_store(Some(store.clone())),
        ),
        max_body: 65536,
        address: ClientAddress::Pseudonym,
        bits: 20,
        location: Precision::Region,
        gate: Arc::new(Gate::new(min_visitors)),
    }
}

fn visitor(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from((10 << 24) | n))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn used_memory(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "memory"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.path().display().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (tests/setup.sh installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = database(dir.path());
    let store = Arc::new(
        Store::new(&StoreConfig {
            url: format!("redis://127.0.0.1:{port}"),
            password: None,
            ca: None,
            timeout: Duration::from_millis(100),
            persistence: PersistencePolicy::Refuse,
            prefix: "tamis:".into(),
        })
        .expect("store"),
    );
    rt.block_on(async {
        store.connect().await.expect("connect");
        let now = SystemTime::now();
        // Added latency, closed cells: every call asks the store.
        let calls = if smoke { 300 } else { 20_000 };
        let closed = runtime(&store, 1000);
        let mut times = Vec::with_capacity(calls);
        for n in 0..calls as u32 {
            // The same 500 visitors again and again: the cell never reaches 1 000.
            let client = visitor(n % 500);
            let began = Instant::now();
            tamis::analytics::shared::count_location(&closed, "u", &db, client, now).await;
            times.push(began.elapsed());
        }
        times.sort();
        println!(
            "count_location, cells closed (asks the store): p50 {:?}, p99 {:?}, max {:?} over {calls} calls",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
        // Open cells: no network.
        let open = runtime(&store, 2);
        for n in 0..2 {
            tamis::analytics::shared::count_location(&open, "o", &db, visitor(n), now).await;
        }
        let mut times = Vec::with_capacity(calls);
        for n in 0..calls as u32 {
            let began = Instant::now();
            tamis::analytics::shared::count_location(&open, "o", &db, visitor(n), now).await;
            times.push(began.elapsed());
        }
        times.sort();
        println!(
            "count_location, cells open (no network):       p50 {:?}, p99 {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        // Memory: 100 000 distinct visitors, none opening the cells.
        let visitors = if smoke { 1_000 } else { 100_000 };
        let before = used_memory(port);
        let counting = runtime(&store, 1000);
        for n in 0..visitors {
            // Each visitor once. min_visitors is at most 1 000, after which a cell opens and
            // stops growing: to hold all of them, count through the store directly, the call
            // count_location makes while a cell is closed.
            let who = counting.pseudonyms.subscriber("m", visitor(n), now) as i64;
            let names = [
                "gate:m:86400:0:FR".to_owned(),
                "gate:m:86400:0:FR-IDF".to_owned(),
            ];
            store
                .count(&names, who, Duration::from_secs(3600))
                .await
                .expect("count");
        }
        let after = used_memory(port);
        println!(
            "store memory for {visitors} visitors counted in a country and a region: {:.1} MB ({} bytes per visitor)",
            (after - before) as f64 / 1e6,
            (after - before) / u64::from(visitors)
        );
    });
    let _ = server.kill();
    let _ = server.wait();
}
