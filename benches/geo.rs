//! Location and synthetic addresses (issue 21): what they cost per tracking request, and how
//! many unique visitors an upstream counting synthetic addresses would report.
//!
//!   cargo bench --bench geo             # full run: the uniques table, then the timings
//!   cargo bench --bench geo -- --test   # smoke (CI)
//!
//! The database is made here: 65 536 IPv4 /24 networks in 256 countries of 8 regions each, in
//! an IPv6 database (as GeoLite2 and DB-IP are, so an IPv4 lookup walks the IPv4 subtree).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use criterion::{black_box, Criterion};
use maxminddb_writer::paths::IpAddrWithMask;
use tamis::analytics::geo::{Database, Gate, Precision};
use tamis::analytics::visitor::{self, ClientAddress};
use tamis::analytics::{Protocol, Pseudonymizer, Runtime, Settings};

#[derive(serde::Serialize)]
struct Record {
    country: BTreeMap<&'static str, String>,
    subdivisions: Vec<BTreeMap<&'static str, String>>,
}

fn database(dir: &std::path::Path) -> Database {
    let mut db = maxminddb_writer::Database::default();
    db.metadata.binary_format_major_version = 2;
    db.metadata.ip_version = maxminddb_writer::metadata::IpVersion::V6;
    db.metadata.database_type = "tamis-bench-City".to_owned();
    let mut records = Vec::new();
    for country in 0..256u32 {
        for region in 0..8u32 {
            let c = format!(
                "{}{}",
                (b'A' + (country / 26) as u8 % 26) as char,
                (b'A' + (country % 26) as u8) as char
            );
            let r = BTreeMap::from([("iso_code", format!("R{region}"))]);
            let rec = Record {
                country: BTreeMap::from([("iso_code", c)]),
                subdivisions: vec![r],
            };
            records.push(db.insert_value(rec).expect("record"));
        }
    }
    for n in 0..65_536u32 {
        let net = Ipv4Addr::from((n << 8) | (11 << 24));
        // In an IPv6 database an IPv4 network lives under ::/96, as in GeoLite2.
        let path = IpAddrWithMask::new(IpAddr::V6(net.to_ipv6_compatible()), 96 + 24);
        db.insert_node(path, records[(n as usize * 7) % records.len()]);
    }
    let path = dir.join("bench.mmdb");
    let file = std::fs::File::create(&path).expect("file");
    db.write_to(file).expect("write");
    Database::open(&path).expect("open")
}

fn runtime(address: ClientAddress, location: Precision, bits: u8) -> Runtime {
    Runtime {
        protocol: Protocol::Umami,
        settings: Settings::default(),
        pseudonyms: std::sync::Arc::new(Pseudonymizer::new(Duration::from_secs(86400), None)),
        max_body: 65536,
        address,
        bits,
        location,
        gate: std::sync::Arc::new(Gate::new(10)),
    }
}

/// The route's own keyed state, as the real path passes it.
fn keys<'a>(rt: &'a Runtime, geo: Option<&'a Database>) -> visitor::Keys<'a> {
    visitor::Keys {
        pseudonyms: &rt.pseudonyms,
        gate: &rt.gate,
        geo,
    }
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// For each audience and bit count: the distinct synthetic addresses of N distinct visitors
/// (what Plausible or Umami would count as uniques from them), against N.
fn uniques_table(smoke: bool) {
    let audiences: &[u32] = if smoke {
        &[1_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    println!("visitors  bits  distinct synthetic  undercount  expected undercount");
    for &n in audiences {
        for bits in [16u8, 20, 24] {
            let rt = runtime(ClientAddress::Pseudonym, Precision::None, bits);
            let now = SystemTime::now();
            let mut seen = HashSet::with_capacity(n as usize);
            for i in 0..n {
                // Distinct visitors: distinct addresses, one browser each.
                let ip = IpAddr::V4(Ipv4Addr::from((11 << 24) | i));
                let v = visitor::observe(
                    &rt,
                    &keys(&rt, None),
                    "stats",
                    || "site.example".to_owned(),
                    ip,
                    UA,
                    now,
                );
                seen.insert(v.forwarded_for);
            }
            let under = 1.0 - seen.len() as f64 / f64::from(n);
            let expected = 1.0 - visitor::expected_distinct(f64::from(n), bits) / f64::from(n);
            println!(
                "{n:>8}  {bits:>4}  {:>18}  {:>9.2} %  {:>18.2} %",
                seen.len(),
                under * 100.0,
                expected * 100.0
            );
        }
    }
}

fn timings(c: &mut Criterion, db: &Database) {
    let now = SystemTime::now();
    let ip = IpAddr::V4(Ipv4Addr::new(11, 42, 7, 9));
    c.bench_function("geo lookup alone", |b| b.iter(|| db.locate(black_box(ip))));
    let both = runtime(ClientAddress::Pseudonym, Precision::Region, 20);
    // Open the visitor's cells first: the steady state of a busy site.
    for i in 0..20u32 {
        let other = IpAddr::V4(Ipv4Addr::new(11, 42, 7, i as u8));
        visitor::observe(
            &both,
            &keys(&both, Some(db)),
            "stats",
            || "site.example".to_owned(),
            other,
            UA,
            now,
        );
    }
    c.bench_function(
        "added per tracking request: lookup + k-anonymity gate + synthetic address",
        |b| {
            b.iter(|| {
                visitor::observe(
                    &both,
                    &keys(&both, Some(db)),
                    "stats",
                    || "site.example".to_owned(),
                    black_box(ip),
                    UA,
                    now,
                )
            })
        },
    );
    let pseudonym = runtime(ClientAddress::Pseudonym, Precision::None, 20);
    c.bench_function("added per tracking request: synthetic address only", |b| {
        b.iter(|| {
            visitor::observe(
                &pseudonym,
                &keys(&pseudonym, None),
                "stats",
                || "site.example".to_owned(),
                black_box(ip),
                UA,
                now,
            )
        })
    });
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path());
    // The made-up database must answer, or the timings would be of a miss.
    let probe = db.locate(IpAddr::V4(Ipv4Addr::new(11, 42, 7, 9)));
    assert!(
        probe.is_some(),
        "the bench database does not locate its own networks"
    );
    uniques_table(smoke);
    let mut c = Criterion::default().configure_from_args();
    timings(&mut c, &db);
    c.final_summary();
}
