//! Map tiles (`kind = "tiles"`): a visitor path is parsed as `{z}/{x}/{y}[@2x].{ext}` and the
//! upstream URL is built from the configured template, never from the visitor's path.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

/// Extensions a tile request may have.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "pbf", "mvt"];

/// Deepest zoom any tile route accepts (2^z must fit in a u32).
pub const ZOOM_LIMIT: u8 = 30;

/// Why a tile path was refused (400, nothing sent upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error("not a {{z}}/{{x}}/{{y}}.ext tile path")]
    Shape,
    #[error("zoom above max_zoom")]
    Zoom,
    #[error("x or y outside 0..2^z")]
    OutOfRange,
    #[error("extension not served by this route")]
    Extension,
    #[error("@2x tiles not served by this route")]
    Retina,
}

/// A parsed tile request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    pub z: u8,
    pub x: u32,
    pub y: u32,
    pub retina: bool,
    /// Lower case, one of [`EXTENSIONS`].
    pub ext: &'static str,
}

fn number(s: &str, max_digits: usize) -> Option<u32> {
    (!s.is_empty() && s.len() <= max_digits && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses the path after the prefix. Strict: decimal numbers only, in range, a known extension.
pub fn parse(rest: &str, max_zoom: u8) -> Result<Tile, TileError> {
    let mut parts = rest.split('/');
    let (Some(z), Some(x), Some(file), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TileError::Shape);
    };
    let (stem, ext) = file.rsplit_once('.').ok_or(TileError::Shape)?;
    let (y, retina) = match stem.strip_suffix("@2x") {
        Some(y) => (y, true),
        None => (stem, false),
    };
    // The list's own spelling: lower case, and no allocation per request.
    let ext = EXTENSIONS
        .iter()
        .find(|e| e.eq_ignore_ascii_case(ext))
        .copied()
        .ok_or(TileError::Shape)?;
    let z = number(z, 2).ok_or(TileError::Shape)?;
    let (x, y) = (
        number(x, 10).ok_or(TileError::Shape)?,
        number(y, 10).ok_or(TileError::Shape)?,
    );
    if z > u32::from(max_zoom.min(ZOOM_LIMIT)) {
        return Err(TileError::Zoom);
    }
    let side = 1u64 << z;
    if u64::from(x) >= side || u64::from(y) >= side {
        return Err(TileError::OutOfRange);
    }
    Ok(Tile {
        z: z as u8,
        x,
        y,
        retina,
        ext,
    })
}

/// Why a tile URL template is refused (a config error, naming the template).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0:?} has no {1}")]
    Missing(String, &'static str),
    #[error("{0:?} uses {{s}}: set subdomains = [\"a\", \"b\", \"c\"]")]
    NoSubdomains(String),
    #[error("subdomains are set but {0:?} has no {{s}}")]
    UnusedSubdomains(String),
    #[error("subdomain {0:?}: use letters, digits and '-'")]
    Subdomain(String),
    #[error("{0:?}: only {{z}}, {{x}}, {{y}}, {{s}} and {{r}} may be used")]
    Placeholder(String),
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?}: only {{s}} may appear in the host")]
    PlaceholderInHost(String),
    #[error(
        "{0:?} has no valid host: up to the first '/', only letters, digits, '-', '.', '_', {{s}} \
         and a :port (no user information, '?', '#' or '\\')"
    )]
    Host(String),
    #[error("{0:?}: a fragment ('#') is never sent to the upstream")]
    Fragment(String),
    #[error("{0:?} does not make a valid URL")]
    InvalidUrl(String),
}

/// The extension a template's URL ends with, if it has a literal one.
fn literal_ext(raw: &str) -> Option<&str> {
    // The query (an API key: `….png?key=…`) is no part of the extension.
    let path = raw.split('?').next().unwrap_or(raw);
    let last = path.rsplit('/').next()?;
    let (_, ext) = last.rsplit_once('.')?;
    (!ext.contains('{')).then_some(ext)
}

/// A tile URL template: `https://{s}.tile.example/{z}/{x}/{y}{r}.png`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    subdomains: Vec<String>,
    /// `raw[..scheme_len]` is `http` or `https`; `://` follows.
    scheme_len: usize,
    /// End of the authority in `raw` (the first `/` after the scheme).
    authority_end: usize,
    /// [`Template::ext`] and [`Template::retina`], read once: every tile request asks.
    ext: Option<String>,
    retina: bool,
    /// Made once from `raw`, so that a tile's URL is written in one pass (a tile hit keys the
    /// cache on its upstream URL: five `replace` passes and a URL parse cost ~9 k instructions
    /// per request).
    built: Built,
}

/// The template taken apart: the scheme, the authority for each subdomain, and the path's
/// pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Built {
    scheme: Scheme,
    /// One per subdomain, in order (one when there is no `{s}`).
    hosts: Vec<Authority>,
    path: Vec<Piece>,
}

/// A piece of the template after its authority.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Z,
    X,
    Y,
    /// `@2x` for a retina tile, nothing otherwise.
    R,
}

impl Template {
    /// Checks a template and its subdomains; the error names what is wrong.
    ///
    /// Strict, so that the host tamis reads from the template (for the OpenStreetMap policy
    /// check, `tamis check`, the transparency page) is exactly the authority every tile request
    /// goes to: the template starts with `http://` or `https://`, its authority runs to the
    /// first `/` and holds only host characters, `{s}` and a port; the tile's numbers only go
    /// after it; no `#` anywhere (the part after one would never be sent).
    pub fn new(raw: &str, subdomains: Vec<String>) -> Result<Template, TemplateError> {
        let err = |f: fn(String) -> TemplateError| f(raw.to_owned());
        for needed in ["{z}", "{x}", "{y}"] {
            if !raw.contains(needed) {
                return Err(TemplateError::Missing(raw.to_owned(), needed));
            }
        }
        if raw.contains("{s}") && subdomains.is_empty() {
            return Err(err(TemplateError::NoSubdomains));
        }
        if !raw.contains("{s}") && !subdomains.is_empty() {
            return Err(err(TemplateError::UnusedSubdomains));
        }
        for s in &subdomains {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(TemplateError::Subdomain(s.clone()));
            }
        }
        // Nothing but the known placeholders.
        let stripped = ["{z}", "{x}", "{y}", "{s}", "{r}"]
            .iter()
            .fold(raw.to_owned(), |acc, p| acc.replace(p, ""));
        if stripped.contains('{') || stripped.contains('}') {
            return Err(err(TemplateError::Placeholder));
        }
        // Literally, at the start: `http:{r}//h/…` or ` https://…` are no http(s) URLs.
        let scheme_len = if raw.starts_with("https://") {
            5
        } else if raw.starts_with("http://") {
            4
        } else {
            return Err(err(TemplateError::Scheme));
        };
        if raw.contains('#') {
            return Err(err(TemplateError::Fragment));
        }
        let after = &raw[scheme_len + 3..];
        // {z}, {x} and {y} are required and may not be in the authority, so a '/' follows it.
        let authority_end = scheme_len + 3 + after.find('/').unwrap_or(after.len());
        let authority = &raw[scheme_len + 3..authority_end];
        if ["{z}", "{x}", "{y}", "{r}"]
            .iter()
            .any(|p| authority.contains(p))
        {
            return Err(err(TemplateError::PlaceholderInHost));
        }
        if authority_end == raw.len() || !valid_authority(authority) {
            return Err(err(TemplateError::Host));
        }
        let built = Built::new(raw, scheme_len, authority_end, &subdomains)
            .ok_or_else(|| err(TemplateError::InvalidUrl))?;
        let t = Template {
            raw: raw.to_owned(),
            subdomains,
            scheme_len,
            authority_end,
            ext: literal_ext(raw).map(str::to_owned),
            retina: raw.contains("{r}"),
            built,
        };
        // Filled in, the template parses as a URL whose authority is the template's, whatever
        // the subdomain (a tile's numbers change only the path, after the authority).
        let hosts: Vec<&str> = if t.subdomains.is_empty() {
            vec![""]
        } else {
            t.subdomains.iter().map(String::as_str).collect()
        };
        for sub in hosts {
            let filled = raw
                .replace("{z}", "0")
                .replace("{x}", "0")
                .replace("{y}", "0")
                .replace("{r}", "")
                .replace("{s}", sub);
            let expected = authority.replace("{s}", sub);
            let uri: Uri = filled.parse().map_err(|_| err(TemplateError::InvalidUrl))?;
            if uri.scheme_str() != Some(t.scheme())
                || uri.authority().map(|a| a.as_str()) != Some(expected.as_str())
            {
                return Err(err(TemplateError::InvalidUrl));
            }
        }
        Ok(t)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        &self.raw[..self.scheme_len]
    }

    /// The authority as written, `{s}` included: `{s}.tile.example:8080`.
    pub fn authority(&self) -> &str {
        &self.raw[self.scheme_len + 3..self.authority_end]
    }

    /// The extension the template's URL ends with, if it has a literal one.
    pub fn ext(&self) -> Option<&str> {
        self.ext.as_deref()
    }

    /// Whether `@2x` tiles exist upstream (the template has `{r}`).
    pub fn retina(&self) -> bool {
        self.retina
    }

    /// Checks a parsed tile against what this template can serve.
    pub fn accepts(&self, tile: &Tile) -> Result<(), TileError> {
        if tile.retina && !self.retina() {
            return Err(TileError::Retina);
        }
        match self.ext() {
            Some(ext) if !ext.eq_ignore_ascii_case(tile.ext) => Err(TileError::Extension),
            _ => Ok(()),
        }
    }

    /// The subdomain for a tile: always the same one for the same tile, so upstream caches
    /// stay warm.
    pub fn subdomain(&self, tile: &Tile) -> Option<&str> {
        self.subdomains
            .get(self.subdomain_index(tile))
            .map(String::as_str)
    }

    /// Which subdomain (and which of `built.hosts`) serves `tile`.
    fn subdomain_index(&self, tile: &Tile) -> usize {
        match self.subdomains.len() {
            0 | 1 => 0,
            n => ((u64::from(tile.x) + u64::from(tile.y)) % n as u64) as usize,
        }
    }

    /// The upstream URL of a tile.
    pub fn uri(&self, tile: &Tile) -> Option<Uri> {
        let b = &self.built;
        let host = b.hosts.get(self.subdomain_index(tile))?;
        let mut path = String::with_capacity(self.raw.len() - self.authority_end + 24);
        for piece in &b.path {
            match piece {
                Piece::Text(t) => path.push_str(t),
                Piece::Z => push_number(&mut path, u32::from(tile.z)),
                Piece::X => push_number(&mut path, tile.x),
                Piece::Y => push_number(&mut path, tile.y),
                Piece::R if tile.retina => path.push_str("@2x"),
                Piece::R => {}
            }
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(b.scheme.clone());
        parts.authority = Some(host.clone());
        parts.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
        Uri::from_parts(parts).ok()
    }

    /// The authority tiles are fetched from (host and port), with the first subdomain for
    /// `{s}` (for reports and checks): exactly what [`Template::uri`] puts in its URLs.
    pub fn sample_host(&self) -> String {
        self.authority()
            .replace("{s}", self.subdomains.first().map_or("", String::as_str))
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The template as published (`tamis check`, the transparency page): query values, where
    /// tile providers put API keys, hidden.
    pub fn public(&self) -> String {
        let Some((path, query)) = self.raw.split_once('?') else {
            return self.raw.clone();
        };
        let hidden: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=…"),
                None => pair.to_owned(),
            })
            .collect();
        format!("{path}?{}", hidden.join("&"))
    }
}

impl Built {
    /// `None` if a subdomain does not make a valid authority (checked before, so never).
    fn new(
        raw: &str,
        scheme_len: usize,
        authority_end: usize,
        subdomains: &[String],
    ) -> Option<Built> {
        let scheme = Scheme::try_from(&raw[..scheme_len]).ok()?;
        let authority = &raw[scheme_len + 3..authority_end];
        let subs: Vec<&str> = if subdomains.is_empty() {
            vec![""]
        } else {
            subdomains.iter().map(String::as_str).collect()
        };
        let hosts = subs
            .into_iter()
            .map(|sub| Authority::try_from(authority.replace("{s}", sub)).ok())
            .collect::<Option<Vec<_>>>()?;
        let mut path = Vec::new();
        let mut rest = &raw[authority_end..];
        while !rest.is_empty() {
            let next = ["{z}", "{x}", "{y}", "{r}"]
                .iter()
                .filter_map(|p| rest.find(p).map(|at| (at, *p)))
                .min();
            let Some((at, p)) = next else {
                path.push(Piece::Text(rest.to_owned()));
                break;
            };
            if at > 0 {
                path.push(Piece::Text(rest[..at].to_owned()));
            }
            path.push(match p {
                "{z}" => Piece::Z,
                "{x}" => Piece::X,
                "{y}" => Piece::Y,
                _ => Piece::R,
            });
            rest = &rest[at + p.len()..];
        }
        Some(Built {
            scheme,
            hosts,
            path,
        })
    }
}

/// Appends `n` in decimal.
fn push_number(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Whether a template's authority is `host[:port]`: the host made of letters, digits, `-`, `.`,
/// `_` and `{s}`, or a bracketed IPv6 address; the port decimal.
fn valid_authority(authority: &str) -> bool {
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let Some((inner, port)) = v6.split_once(']') else {
            return false;
        };
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        port
    } else {
        let (host, port) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
        let plain = host.replace("{s}", "");
        if host.is_empty()
            || !plain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return false;
        }
        port
    };
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        }
    }
}

/// Hosts run by the OpenStreetMap Foundation or its chapters, whose tile usage policy requires
/// an identifying User-Agent and a Referer.
pub fn is_osm_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or("");
    ["openstreetmap.org", "openstreetmap.fr", "openstreetmap.de"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Tile servers whose grid is known to stop at a zoom level, with the source: a route's
/// `max_zoom` deeper than that sends requests that can only fail.
const GRIDS: &[(&str, u8, &str)] = &[
    // wiki.openstreetmap.org/wiki/Zoom_levels and the OSMF's tile layer: zoom 0 to 19.
    (
        "tile.openstreetmap.org",
        19,
        "the OpenStreetMap Foundation's standard layer",
    ),
];

/// The deepest zoom a known tile server serves, and where that is stated.
pub fn grid_max_zoom(host: &str) -> Option<(u8, &'static str)> {
    let host = host.to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or("");
    GRIDS
        .iter()
        .find(|(h, _, _)| host == *h || host.ends_with(&format!(".{h}")))
        .map(|&(_, z, source)| (z, source))
}

/// Whether a User-Agent carries a way to reach its operator: a URL or an e-mail address.
pub fn has_contact(user_agent: &str) -> bool {
    user_agent.contains("http://")
        || user_agent.contains("https://")
        || user_agent
            .split(|c: char| c.is_whitespace() || "();<>,".contains(c))
            .any(|w| {
                w.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.ends_with('.')
                })
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the URL was built before the template was taken apart: the reference.
    fn uri_by_replacing(t: &Template, tile: &Tile) -> Option<Uri> {
        let url = t
            .raw
            .replace("{z}", &tile.z.to_string())
            .replace("{x}", &tile.x.to_string())
            .replace("{y}", &tile.y.to_string())
            .replace("{r}", if tile.retina { "@2x" } else { "" })
            .replace("{s}", t.subdomain(tile).unwrap_or(""));
        url.parse().ok()
    }

    #[test]
    fn a_tile_url_is_the_one_the_template_spells() {
        let templates = [
            ("https://tile.openstreetmap.org/{z}/{x}/{y}.png", vec![]),
            (
                "https://{s}.tile.example:8443/{z}/{x}/{y}{r}.png",
                vec!["a", "b", "c"],
            ),
            (
                "http://[::1]:9000/t/{y}/{x}/{z}{r}.webp?key=K&z={z}",
                vec![],
            ),
            (
                "https://api.maptiler.example/tiles/v3/{z}/{x}/{y}.pbf?key=SECRET",
                vec![],
            ),
            (
                "https://{s}-cdn.example/{r}{z}-{x}-{y}.jpg",
                vec!["x1", "y2"],
            ),
        ];
        for (raw, subs) in templates {
            let t = Template::new(raw, subs.iter().map(|s| s.to_string()).collect()).unwrap();
            for (z, x, y) in [
                (0, 0, 0),
                (3, 2, 1),
                (19, 271_234, 180_001),
                (30, u32::MAX, 1 << 29),
            ] {
                for retina in [false, true] {
                    let tile = Tile {
                        z,
                        x,
                        y,
                        retina,
                        ext: "png",
                    };
                    let built = t.uri(&tile);
                    assert!(built.is_some(), "{raw} {tile:?}");
                    assert_eq!(built, uri_by_replacing(&t, &tile), "{raw} {tile:?}");
                }
            }
        }
    }

    #[test]
    fn a_template_with_an_api_key_serves_tiles_and_hides_the_key() {
        let t = Template::new(
            "https://api.maptiler.example/tiles/v3/{z}/{x}/{y}.pbf?key=SECRET&lang=fr",
            vec![],
        )
        .unwrap();
        assert_eq!(t.ext(), Some("pbf"));
        let tile = parse("3/2/1.pbf", 19).unwrap();
        assert_eq!(t.accepts(&tile), Ok(()));
        assert_eq!(
            t.uri(&tile).unwrap().to_string(),
            "https://api.maptiler.example/tiles/v3/3/2/1.pbf?key=SECRET&lang=fr"
        );
        assert_eq!(
            t.public(),
            "https://api.maptiler.example/tiles/v3/{z}/{x}/{y}.pbf?key=…&lang=…"
        );
        assert!(parse("3/2/1.png", 19).is_ok_and(|png| t.accepts(&png).is_err()));
    }

    #[test]
    fn tile_paths() {
        assert_eq!(
            parse("3/4/5.png", 19),
            Ok(Tile {
                z: 3,
                x: 4,
                y: 5,
                retina: false,
                ext: "png"
            })
        );
        assert_eq!(
            parse("0/0/0@2x.PNG", 19).map(|t| (t.retina, t.ext)),
            Ok((true, "png"))
        );
        assert_eq!(parse("19/524287/524287.pbf", 19).map(|t| t.x), Ok(524287));
        for (bad, why) in [
            ("20/0/0.png", TileError::Zoom),
            ("3/8/0.png", TileError::OutOfRange),
            ("3/0/8.png", TileError::OutOfRange),
            ("3/4/5.gif", TileError::Shape),
            ("3/4/5", TileError::Shape),
            ("3/4/5.png/x", TileError::Shape),
            ("3/4.png", TileError::Shape),
            ("-1/0/0.png", TileError::Shape),
            ("3/+4/5.png", TileError::Shape),
            ("3/4/5.png?x", TileError::Shape),
            ("3/%34/5.png", TileError::Shape),
            ("3/../5.png", TileError::Shape),
            ("999/0/0.png", TileError::Shape),
            ("3/99999999999/0.png", TileError::Shape),
            ("", TileError::Shape),
        ] {
            assert_eq!(parse(bad, 19), Err(why), "{bad}");
        }
        assert_eq!(parse("5/0/0.png", 4), Err(TileError::Zoom));
    }

    fn osm() -> Template {
        Template::new("https://tile.openstreetmap.org/{z}/{x}/{y}.png", vec![]).unwrap()
    }

    #[test]
    fn urls_come_from_the_template() {
        let t = parse("3/4/5.png", 19).unwrap();
        assert_eq!(
            osm().uri(&t).unwrap().to_string(),
            "https://tile.openstreetmap.org/3/4/5.png"
        );
        let fr = Template::new(
            "https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}{r}.png",
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap();
        let t2 = parse("3/4/5@2x.png", 19).unwrap();
        assert_eq!(
            fr.uri(&t2).unwrap().to_string(),
            "https://a.tile.openstreetmap.fr/osmfr/3/4/5@2x.png"
        );
        assert_eq!(fr.uri(&t2), fr.uri(&t2), "same tile, same subdomain");
        assert_eq!(fr.sample_host(), "a.tile.openstreetmap.fr");
    }

    #[test]
    fn templates_are_checked() {
        assert!(Template::new("https://t.example/{z}/{x}.png", vec![]).is_err());
        assert!(Template::new("https://{s}.t.example/{z}/{x}/{y}.png", vec![]).is_err());
        assert!(Template::new("https://t.example/{z}/{x}/{y}.png", vec!["a".into()]).is_err());
        assert!(Template::new("https://t.example/{z}/{x}/{y}.png?key={key}", vec![]).is_err());
        assert!(Template::new("ftp://t.example/{z}/{x}/{y}.png", vec![]).is_err());
        assert!(Template::new("https://{z}.t.example/{z}/{x}/{y}.png", vec![]).is_err());
        assert!(Template::new("https://u@t.example/{z}/{x}/{y}.png", vec![]).is_err());
        assert!(
            Template::new("https://{s}.t.example/{z}/{x}/{y}.png", vec!["a.b".into()]).is_err()
        );
    }

    #[test]
    fn the_host_read_from_a_template_is_where_tiles_go() {
        let err = |raw: &str, subs: &[&str]| {
            Template::new(raw, subs.iter().map(|s| (*s).to_owned()).collect()).expect_err(raw)
        };
        let t = |raw: &str| raw.to_owned();
        // The scheme, literally, at the start: `http:{r}//{x}.example/…` once put the
        // visitor's x in the host, as `http://17.example/…`.
        for raw in [
            "http:{r}//{x}.example/{z}/{y}.png",
            "http:{r}//t.example/{z}/{x}/{y}.png",
            "HTTPS://t.example/{z}/{x}/{y}.png",
            " https://t.example/{z}/{x}/{y}.png",
            "https:/t.example/{z}/{x}/{y}.png",
            "//t.example/{z}/{x}/{y}.png",
        ] {
            assert_eq!(err(raw, &[]), TemplateError::Scheme(t(raw)), "{raw}");
        }
        // A '#' anywhere: `…openstreetmap.org#.x/…` sent every tile to `/` of
        // a.tile.openstreetmap.org while the policy check read `….org#.x`.
        for raw in [
            "https://{s}.tile.openstreetmap.org#.x/{z}/{x}/{y}.png",
            "https://t.example/{z}/{x}/{y}.png#x",
        ] {
            let subs: &[&str] = if raw.contains("{s}") { &["a"] } else { &[] };
            assert_eq!(err(raw, subs), TemplateError::Fragment(t(raw)), "{raw}");
        }
        // Only {s} in the authority, whatever ends it.
        for raw in [
            "https://{z}.t.example/{z}/{x}/{y}.png",
            "https://t.example?{x}/{z}/{y}.png",
            "https://t.example:{r}/{z}/{x}/{y}.png",
        ] {
            assert_eq!(
                err(raw, &[]),
                TemplateError::PlaceholderInHost(t(raw)),
                "{raw}"
            );
        }
        // Host characters and a port only: no user information, query, backslash, space,
        // percent-encoding, or an empty host or port.
        for raw in [
            "https://h?x/{z}/{x}/{y}.png",
            "https://u@t.example/{z}/{x}/{y}.png",
            "https://t.example\\.evil.example/{z}/{x}/{y}.png",
            "https://t.example\\@evil.example/{z}/{x}/{y}.png",
            "https://t%2eexample/{z}/{x}/{y}.png",
            "https://t .example/{z}/{x}/{y}.png",
            "https:///{z}/{x}/{y}.png",
            "https://:8080/{z}/{x}/{y}.png",
            "https://t.example:/{z}/{x}/{y}.png",
            "https://t.example:70000/{z}/{x}/{y}.png",
            "https://t.example:80:80/{z}/{x}/{y}.png",
            "https://[::1/{z}/{x}/{y}.png",
        ] {
            assert_eq!(err(raw, &[]), TemplateError::Host(t(raw)), "{raw}");
        }
        // What is accepted: the authority is the URL's, for every subdomain and tile.
        let tile = parse("5/17/3@2x.png", 19).unwrap();
        for (raw, subs, host, url) in [
            (
                "https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}{r}.png",
                &["a", "b", "c"][..],
                "a.tile.openstreetmap.fr",
                "https://c.tile.openstreetmap.fr/osmfr/5/17/3@2x.png",
            ),
            (
                "http://tiles.example:8080/v/{z}/{x}/{y}{r}.png?key=k",
                &[][..],
                "tiles.example:8080",
                "http://tiles.example:8080/v/5/17/3@2x.png?key=k",
            ),
            (
                "http://[::1]:8080/{z}/{x}/{y}{r}.png",
                &[][..],
                "[::1]:8080",
                "http://[::1]:8080/5/17/3@2x.png",
            ),
            (
                "https://t-{s}.my_tiles.example/{z}/{x}/{y}{r}.png",
                &["1", "2"][..],
                "t-1.my_tiles.example",
                "https://t-1.my_tiles.example/5/17/3@2x.png",
            ),
        ] {
            let t = Template::new(raw, subs.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(t.sample_host(), host, "{raw}");
            let uri = t.uri(&tile).unwrap();
            assert_eq!(uri.to_string(), url, "{raw}");
            let authority = uri.authority().unwrap().as_str();
            assert_eq!(
                authority,
                t.authority()
                    .replace("{s}", t.subdomain(&tile).unwrap_or("")),
                "{raw}"
            );
        }
    }

    #[test]
    fn template_limits_what_is_served() {
        let t = osm();
        assert_eq!(t.accepts(&parse("1/0/0.png", 19).unwrap()), Ok(()));
        assert_eq!(
            t.accepts(&parse("1/0/0.webp", 19).unwrap()),
            Err(TileError::Extension)
        );
        assert_eq!(
            t.accepts(&parse("1/0/0@2x.png", 19).unwrap()),
            Err(TileError::Retina)
        );
    }

    #[test]
    fn osm_policy_helpers() {
        assert!(is_osm_host("tile.openstreetmap.org"));
        assert!(is_osm_host("a.tile.openstreetmap.fr:443"));
        assert!(!is_osm_host("openstreetmap.org.evil.example"));
        assert!(!is_osm_host("tiles.example"));
        assert!(has_contact("tamis (+https://site.example/privacy)"));
        assert!(has_contact("site tiles; ops@site.example"));
        assert!(!has_contact("tamis/0.1.0"));
        assert!(!has_contact("Mozilla/5.0 @ home"));
    }
}
