//! A coarse location computed by tamis itself, so an analytics upstream can keep its country
//! and region reports without ever receiving the visitor's address.
//!
//! The address is looked up in memory in an operator-supplied MaxMind-format database
//! (GeoLite2, DB-IP Lite), never logged or stored. A region is released only once enough
//! distinct subscribers (a keyed hash of the IPv4 address or IPv6 /64, nothing a request says)
//! were seen in it during the current rotation period (the
//! regulator's "geographic mesh ensuring a minimum number of users per cell"); below that the
//! country is released, and a country below the threshold gives nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {path:?}: {source}")]
    Open {
        path: String,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// How precise a location a route releases (`location` in a route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// No location (the default).
    #[default]
    None,
    /// The country, once `min_visitors` were seen in it this period.
    Country,
    /// The region (first-level subdivision), once `min_visitors` were seen in it; else the
    /// country as above.
    Region,
}

impl Precision {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::None => "none",
            Precision::Country => "country",
            Precision::Region => "region",
        }
    }
}

/// A short code of ASCII letters and digits (ISO 3166-1 alpha-2 country, ISO 3166-2
/// subdivision suffix): safe in a header or a query as it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    bytes: [u8; 3],
    len: u8,
}

impl Code {
    /// `text` if it is 1 to 3 ASCII letters or digits, upper-cased.
    pub fn new(text: &str) -> Option<Code> {
        let b = text.as_bytes();
        if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0u8; 3];
        for (i, c) in b.iter().enumerate() {
            bytes[i] = c.to_ascii_uppercase();
        }
        Some(Code {
            bytes,
            len: b.len() as u8,
        })
    }

    /// The code's text.
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an address is, as the database says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub country: Code,
    pub region: Option<Code>,
}

/// What a location lookup releases for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub country: Option<Code>,
    pub region: Option<Code>,
}

/// An operator-supplied MaxMind-format database, read into memory.
pub struct Database {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("type", &self.reader.metadata().database_type)
            .field("build_epoch", &self.reader.metadata().build_epoch)
            .finish()
    }
}

// Only the two fields tamis uses are decoded (borrowed, nothing else allocated).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Iso<'a>>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Iso<'a>>>,
}

#[derive(Deserialize)]
struct Iso<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

impl Database {
    /// Reads the database at `path`.
    pub fn open(path: &Path) -> Result<Database, GeoError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| GeoError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Database { reader })
    }

    /// The database's type as its metadata names it (`GeoLite2-City`, `DBIP-Country-Lite`).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Where `ip` is: its country (ISO 3166-1), and its first subdivision's ISO 3166-2 code
    /// when the database has one. An address the database does not know, or a record whose
    /// codes are not plain short codes, gives nothing: a malformed database is never trusted
    /// to put text into a request.
    pub fn locate(&self, ip: IpAddr) -> Option<Place> {
        // An address carrying an IPv4 (mapped, 6to4, Teredo, NAT64) is where that IPv4 is.
        let ip = match ip {
            IpAddr::V6(v6) => crate::policy::client_addr::embedded_ipv4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let found = self.reader.lookup(ip).ok()?;
        let record: Record<'_> = found.decode().ok()??;
        let country = Code::new(record.country?.iso_code?).filter(|c| c.len == 2)?;
        let region = record
            .subdivisions
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| s.iso_code)
            .and_then(Code::new);
        Some(Place { country, region })
    }
}

/// Most cells (countries and regions) one route counts per period: the world has about 5 000
/// first-level subdivisions, so this bound is only reached by a database with made-up codes.
pub const MAX_CELLS: usize = 65_536;

/// The k-anonymity gate of one analytics route: for each cell, the distinct pseudonymous
/// visitors seen in it this period, until there are `min_visitors` of them (then only that
/// the cell is open). Everything is forgotten when the period changes.
pub struct Gate {
    min_visitors: usize,
    state: Mutex<GateState>,
}

struct GateState {
    period: u64,
    cells: HashMap<(Code, Option<Code>), Cell>,
}

enum Cell {
    /// Fewer than `min_visitors` distinct subscribers so far (their keyed hashes).
    Counting(Vec<u64>),
    /// At least `min_visitors`: released for the rest of the period.
    Open,
}

impl Gate {
    /// A gate releasing a cell once `min_visitors` distinct visitors were seen in it.
    pub fn new(min_visitors: usize) -> Gate {
        Gate {
            min_visitors: min_visitors.max(1),
            state: Mutex::new(GateState {
                period: u64::MAX,
                cells: HashMap::new(),
            }),
        }
    }

    /// Counts `visitor` (a keyed hash, never the address) in `place`'s cells for `period`,
    /// and says what may be released at `precision`.
    pub fn admit(&self, period: u64, visitor: u64, place: Place, precision: Precision) -> Released {
        if precision == Precision::None {
            return Released::default();
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.period != period {
            state.period = period;
            state.cells.clear();
        }
        let min = self.min_visitors;
        let mut count = |key: (Code, Option<Code>)| -> bool {
            let full = state.cells.len() >= MAX_CELLS;
            match state.cells.get_mut(&key) {
                Some(Cell::Open) => true,
                Some(Cell::Counting(seen)) => {
                    if !seen.contains(&visitor) {
                        seen.push(visitor);
                    }
                    if seen.len() >= min {
                        state.cells.insert(key, Cell::Open);
                        return true;
                    }
                    false
                }
                None if full => false,
                None if min <= 1 => {
                    state.cells.insert(key, Cell::Open);
                    true
                }
                None => {
                    state.cells.insert(key, Cell::Counting(vec![visitor]));
                    false
                }
            }
        };
        let country_open = count((place.country, None));
        let region_open = match (precision, place.region) {
            (Precision::Region, Some(region)) => count((place.country, Some(region))),
            _ => false,
        };
        Released {
            country: country_open.then_some(place.country),
            // Every visitor of a region is one of its country's, so an open region's country
            // is open too.
            region: (country_open && region_open)
                .then_some(place.region)
                .flatten(),
        }
    }

    /// How many distinct visitors open a cell.
    pub fn min_visitors(&self) -> usize {
        self.min_visitors
    }

    /// The cells `place` falls in at `precision` that are not open yet in `period`: those the
    /// shared counts may still open (an open cell stays open, so it is never asked again).
    pub fn closed_cells(
        &self,
        period: u64,
        place: Place,
        precision: Precision,
    ) -> Vec<(Code, Option<Code>)> {
        let mut cells = Vec::with_capacity(2);
        if precision == Precision::None {
            return cells;
        }
        cells.push((place.country, None));
        if let (Precision::Region, Some(region)) = (precision, place.region) {
            cells.push((place.country, Some(region)));
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.period == period {
            cells.retain(|c| !matches!(state.cells.get(c), Some(Cell::Open)));
        }
        cells
    }

    /// Opens `cell` for the rest of `period`: the shared counts (every replica's distinct
    /// visitors) reached `min_visitors`.
    pub fn open(&self, period: u64, cell: (Code, Option<Code>)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.period != period {
            state.period = period;
            state.cells.clear();
        }
        if state.cells.len() < MAX_CELLS || state.cells.contains_key(&cell) {
            state.cells.insert(cell, Cell::Open);
        }
    }

    /// How many cells are counted this period (for tests and the status page).
    pub fn cells(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cells
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(c: &str, r: Option<&str>) -> Place {
        Place {
            country: Code::new(c).unwrap(),
            region: r.and_then(Code::new),
        }
    }

    #[test]
    fn codes_are_short_plain_and_upper_case() {
        assert_eq!(Code::new("fr").unwrap().as_str(), "FR");
        assert_eq!(Code::new("IDF").unwrap().as_str(), "IDF");
        for bad in ["", "ABCD", "F\r", "é", "A-B", "A B"] {
            assert!(Code::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_region_is_released_only_past_the_threshold() {
        let gate = Gate::new(3);
        let p = place("FR", Some("IDF"));
        for v in 1..=2u64 {
            let r = gate.admit(7, v, p, Precision::Region);
            assert_eq!(r, Released::default(), "visitor {v}");
        }
        // The same visitor again does not count twice.
        assert_eq!(gate.admit(7, 2, p, Precision::Region), Released::default());
        let r = gate.admit(7, 3, p, Precision::Region);
        assert_eq!(r.country.unwrap().as_str(), "FR");
        assert_eq!(r.region.unwrap().as_str(), "IDF");
        // Visitor 1 now gets the region too.
        assert!(gate.admit(7, 1, p, Precision::Region).region.is_some());
    }

    #[test]
    fn a_thin_region_falls_back_to_its_country() {
        let gate = Gate::new(3);
        for v in 1..=3u64 {
            gate.admit(1, v, place("FR", Some("IDF")), Precision::Region);
        }
        // Three visitors in France, one in Brittany: the country only.
        let r = gate.admit(1, 9, place("FR", Some("BRE")), Precision::Region);
        assert_eq!(r.country.unwrap().as_str(), "FR");
        assert_eq!(r.region, None);
        // A country with one visitor: nothing.
        assert_eq!(
            gate.admit(1, 10, place("LU", Some("LU")), Precision::Region),
            Released::default()
        );
    }

    #[test]
    fn counts_are_forgotten_at_rotation() {
        let gate = Gate::new(2);
        let p = place("DE", Some("BE"));
        gate.admit(1, 1, p, Precision::Region);
        assert!(gate.admit(1, 2, p, Precision::Region).region.is_some());
        // The next period starts from nothing.
        assert_eq!(gate.admit(2, 2, p, Precision::Region), Released::default());
        assert_eq!(gate.cells(), 2);
    }

    #[test]
    fn country_precision_never_releases_a_region() {
        let gate = Gate::new(1);
        let r = gate.admit(1, 1, place("FR", Some("IDF")), Precision::Country);
        assert_eq!(r.country.unwrap().as_str(), "FR");
        assert_eq!(r.region, None);
        assert_eq!(
            gate.admit(1, 1, place("FR", Some("IDF")), Precision::None),
            Released::default()
        );
    }

    #[test]
    fn the_cell_count_is_bounded() {
        let gate = Gate::new(2);
        let mut n = 0u64;
        'outer: for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'0'..=b'9' {
                    for d in b'0'..=b'9' {
                        let region = [c, d, a];
                        let p = Place {
                            country: Code::new(std::str::from_utf8(&[a, b]).unwrap()).unwrap(),
                            region: Code::new(std::str::from_utf8(&region).unwrap()),
                        };
                        gate.admit(1, n, p, Precision::Region);
                        n += 1;
                        if n > 70_000 {
                            break 'outer;
                        }
                    }
                }
            }
        }
        assert_eq!(gate.cells(), MAX_CELLS);
    }

    #[test]
    fn a_cell_the_shared_counts_opened_is_released_and_never_asked_again() {
        let gate = Gate::new(5);
        let p = place("FR", Some("IDF"));
        assert_eq!(gate.closed_cells(3, p, Precision::Region).len(), 2);
        assert_eq!(gate.closed_cells(3, p, Precision::Country).len(), 1);
        gate.open(3, (p.country, None));
        gate.open(3, (p.country, p.region));
        assert!(gate.closed_cells(3, p, Precision::Region).is_empty());
        // One visitor of this replica gets what every replica's visitors opened.
        let r = gate.admit(3, 1, p, Precision::Region);
        assert_eq!(r.region.unwrap().as_str(), "IDF");
        // A new period forgets.
        assert_eq!(gate.closed_cells(4, p, Precision::Region).len(), 2);
    }
}
