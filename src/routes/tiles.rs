//! Map tiles (`kind = "tiles"`): a visitor path is parsed as `{z}/{x}/{y}[@2x].{ext}` and the
//! upstream URL is built from the configured template, never from the visitor's path.

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
    pub ext: String,
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
    let ext = ext.to_ascii_lowercase();
    if !EXTENSIONS.contains(&ext.as_str()) {
        return Err(TileError::Shape);
    }
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

/// A tile URL template: `https://{s}.tile.example/{z}/{x}/{y}{r}.png`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    subdomains: Vec<String>,
}

impl Template {
    /// Checks a template and its subdomains; the message names what is wrong.
    pub fn new(raw: &str, subdomains: Vec<String>) -> Result<Template, String> {
        for needed in ["{z}", "{x}", "{y}"] {
            if !raw.contains(needed) {
                return Err(format!("{raw:?} has no {needed}"));
            }
        }
        if raw.contains("{s}") && subdomains.is_empty() {
            return Err(format!(
                "{raw:?} uses {{s}}: set subdomains = [\"a\", \"b\", \"c\"]"
            ));
        }
        if !raw.contains("{s}") && !subdomains.is_empty() {
            return Err(format!("subdomains are set but {raw:?} has no {{s}}"));
        }
        for s in &subdomains {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("subdomain {s:?}: use letters, digits and '-'"));
            }
        }
        // Nothing but the known placeholders, and a valid URL once filled in.
        let stripped = ["{z}", "{x}", "{y}", "{s}", "{r}"]
            .iter()
            .fold(raw.to_owned(), |acc, p| acc.replace(p, ""));
        if stripped.contains('{') || stripped.contains('}') {
            return Err(format!(
                "{raw:?}: only {{z}}, {{x}}, {{y}}, {{s}} and {{r}} may be used"
            ));
        }
        let t = Template {
            raw: raw.to_owned(),
            subdomains,
        };
        let sample = t.uri(&Tile {
            z: 0,
            x: 0,
            y: 0,
            retina: false,
            ext: t.ext().unwrap_or("png").to_owned(),
        });
        let uri = sample.ok_or_else(|| format!("{raw:?} does not make a valid URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("{raw:?} must be an http:// or https:// URL")),
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{raw:?} has no valid host"));
        }
        if t.host_has_placeholder_other_than_s() {
            return Err(format!("{raw:?}: only {{s}} may appear in the host"));
        }
        Ok(t)
    }

    fn host_has_placeholder_other_than_s(&self) -> bool {
        let after_scheme = self.raw.split_once("://").map_or("", |(_, r)| r);
        let host = after_scheme.split('/').next().unwrap_or("");
        ["{z}", "{x}", "{y}", "{r}"]
            .iter()
            .any(|p| host.contains(p))
    }

    /// The extension the template's URL ends with, if it has a literal one.
    pub fn ext(&self) -> Option<&str> {
        let last = self.raw.rsplit('/').next()?;
        let (_, ext) = last.rsplit_once('.')?;
        (!ext.contains('{')).then_some(ext)
    }

    /// Whether `@2x` tiles exist upstream (the template has `{r}`).
    pub fn retina(&self) -> bool {
        self.raw.contains("{r}")
    }

    /// Checks a parsed tile against what this template can serve.
    pub fn accepts(&self, tile: &Tile) -> Result<(), TileError> {
        if tile.retina && !self.retina() {
            return Err(TileError::Retina);
        }
        match self.ext() {
            Some(ext) if !ext.eq_ignore_ascii_case(&tile.ext) => Err(TileError::Extension),
            _ => Ok(()),
        }
    }

    /// The subdomain for a tile: always the same one for the same tile, so upstream caches
    /// stay warm.
    pub fn subdomain(&self, tile: &Tile) -> Option<&str> {
        if self.subdomains.is_empty() {
            return None;
        }
        let i = (u64::from(tile.x) + u64::from(tile.y)) % self.subdomains.len() as u64;
        self.subdomains.get(i as usize).map(String::as_str)
    }

    /// The upstream URL of a tile.
    pub fn uri(&self, tile: &Tile) -> Option<Uri> {
        let url = self
            .raw
            .replace("{z}", &tile.z.to_string())
            .replace("{x}", &tile.x.to_string())
            .replace("{y}", &tile.y.to_string())
            .replace("{r}", if tile.retina { "@2x" } else { "" })
            .replace("{s}", self.subdomain(tile).unwrap_or(""));
        url.parse().ok()
    }

    /// The host, with the first subdomain for `{s}` (for reports and checks).
    pub fn sample_host(&self) -> String {
        let after = self.raw.split_once("://").map_or("", |(_, r)| r);
        let host = after.split('/').next().unwrap_or("");
        host.replace("{s}", self.subdomains.first().map_or("", String::as_str))
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.raw
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

    #[test]
    fn tile_paths() {
        assert_eq!(
            parse("3/4/5.png", 19),
            Ok(Tile {
                z: 3,
                x: 4,
                y: 5,
                retina: false,
                ext: "png".into()
            })
        );
        assert_eq!(
            parse("0/0/0@2x.PNG", 19).map(|t| (t.retina, t.ext)),
            Ok((true, "png".into()))
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
