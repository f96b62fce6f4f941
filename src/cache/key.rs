//! What names a stored object: the key (route, upstream URL, Vary variant) and the request
//! header values a variant answers for.

use std::hash::{Hash, Hasher};

use http::{header, HeaderMap, HeaderName, HeaderValue, Uri};

/// Identifies one stored object. Built only from what tamis sends upstream (route, upstream
/// URL, and the values of the headers the response varies on, normalised Accept-Encoding
/// included), never from headers it strips.
#[derive(Clone, Debug)]
pub struct CacheKey {
    /// The route's `cache_id` (a fingerprint of everything that shapes what it stores).
    pub route: u64,
    pub uri: Uri,
    /// 0 for the primary key; otherwise a hash of the request's values for the Vary'd headers.
    pub variant: u64,
}

impl CacheKey {
    /// The key before any `Vary` is known.
    pub fn primary(route: u64, uri: Uri) -> CacheKey {
        CacheKey {
            route,
            uri,
            variant: 0,
        }
    }

    pub(super) fn with_variant(&self, variant: u64) -> CacheKey {
        CacheKey {
            variant,
            ..self.clone()
        }
    }

    /// The key's parts, for equality and hashing (see [`KeyParts`]).
    pub fn parts(&self) -> KeyParts<'_> {
        KeyParts {
            route: self.route,
            variant: self.variant,
            scheme: self.uri.scheme_str().unwrap_or(""),
            authority: self.uri.authority().map_or("", |a| a.as_str()),
            target: [
                self.uri.path_and_query().map_or("", |p| p.as_str()),
                "",
                "",
                "",
            ],
        }
    }
}

/// A primary key's parts, borrowed: what the fresh-copy shortcut looks the store up with, so
/// that a hit builds no upstream URL (no allocation, no URI parsing). The upstream target is
/// given in pieces (base path, the visitor's path after the prefix, `?`, the query) and
/// compares and hashes as their concatenation, exactly as the [`CacheKey`] of the URL they
/// would make. Only the pieces of an accepted request could ever have been stored: a visitor's
/// path that confinement would refuse makes no stored key, so it finds nothing.
#[derive(Clone, Copy, Debug)]
pub struct KeyParts<'a> {
    pub route: u64,
    pub variant: u64,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub target: [&'a str; 4],
}

impl KeyParts<'_> {
    /// The parts of the primary key for the upstream URL `scheme://authority` + the target
    /// pieces concatenated.
    pub fn primary<'a>(
        route: u64,
        scheme: &'a str,
        authority: &'a str,
        target: [&'a str; 4],
    ) -> KeyParts<'a> {
        KeyParts {
            route,
            variant: 0,
            scheme,
            authority,
            target,
        }
    }
}

/// Whether two lists of pieces spell the same string, without joining them.
fn same_concatenation(a: &[&str; 4], b: &[&str; 4]) -> bool {
    let len = |p: &[&str; 4]| p.iter().map(|s| s.len()).sum::<usize>();
    if len(a) != len(b) {
        return false;
    }
    // The common case: one side is a whole target (a stored key).
    if a[1..].iter().all(|s| s.is_empty()) {
        return starts_with_pieces(a[0], b);
    }
    if b[1..].iter().all(|s| s.is_empty()) {
        return starts_with_pieces(b[0], a);
    }
    a.iter()
        .flat_map(|s| s.bytes())
        .eq(b.iter().flat_map(|s| s.bytes()))
}

/// Whether `whole` is `pieces` concatenated (their lengths already add up to its length).
fn starts_with_pieces(whole: &str, pieces: &[&str; 4]) -> bool {
    let mut rest = whole.as_bytes();
    for p in pieces.iter().filter(|p| !p.is_empty()) {
        match rest.strip_prefix(p.as_bytes()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    true
}

// By hand rather than derived: `Uri`'s own `Hash` feeds the hasher one byte per call (it
// lowercases the authority as it goes). The store's hasher stays SipHash-1-3 with a random
// key (std's `RandomState`, moka's default): the URL is the visitor's to choose, so the
// table must resist chosen collisions, and SipHash is a keyed PRF made for that, where
// foldhash and aHash claim only a weaker resistance. It also hashes a byte stream the same
// however the stream is split into writes, which lets the borrowed parts hash their pieces
// one by one as the whole target. Scheme and authority are compared but not hashed: a
// route's `cache_id` already fixes its upstream's, and fewer bytes hash faster. Equality is
// exact, so it agrees with the hash.
impl PartialEq for KeyParts<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.route == other.route
            && self.variant == other.variant
            && self.scheme == other.scheme
            && self.authority == other.authority
            && same_concatenation(&self.target, &other.target)
    }
}

impl Eq for KeyParts<'_> {}

impl Hash for KeyParts<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Route and variant in one write, and no write for an empty piece: SipHash's cost
        // per call (buffering a tail) is most of what a short key costs, and the byte stream
        // is the same. (Copying the pieces into one buffer for a single write saved 54
        // instructions of hashing per hit and cost 53 in memcpy calls.)
        let mut ids = [0u8; 16];
        ids[..8].copy_from_slice(&self.route.to_ne_bytes());
        ids[8..].copy_from_slice(&self.variant.to_ne_bytes());
        state.write(&ids);
        for piece in self.target {
            if !piece.is_empty() {
                state.write(piece.as_bytes());
            }
        }
        state.write_u8(0xff);
    }
}

/// The store finds a [`CacheKey`] by its borrowed parts.
impl moka::Equivalent<CacheKey> for KeyParts<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        *self == key.parts()
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

/// The values a request has for the headers a response varies on.
pub type VaryValues = Vec<(HeaderName, Option<HeaderValue>)>;

/// Reads `names` from the (scrubbed) request headers.
pub fn vary_values(names: &[HeaderName], request: &HeaderMap) -> VaryValues {
    names
        .iter()
        .map(|n| (n.clone(), request.get(n).cloned()))
        .collect()
}

pub(super) fn variant_hash(values: &VaryValues) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, value) in values {
        name.hash(&mut h);
        value.as_ref().map(|v| v.as_bytes()).hash(&mut h);
    }
    // 0 is the primary key.
    h.finish().max(1)
}

/// A `Vary` the cache cannot honour: `*`, or a header tamis does not forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaryRefused;

/// The request headers a stored response answers for: those its `Vary` lists, plus
/// Accept-Encoding when its body is encoded (an unencoded body suits every client). Refused for
/// `Vary: *` or a header `varyable` refuses (one tamis strips).
pub fn vary_names(
    headers: &HeaderMap,
    varyable: impl Fn(&HeaderName) -> bool,
) -> Result<Vec<HeaderName>, VaryRefused> {
    let mut names = Vec::new();
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        names.push(header::ACCEPT_ENCODING);
    }
    for v in headers.get_all(header::VARY) {
        let v = v.to_str().map_err(|_| VaryRefused)?;
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err(VaryRefused);
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| VaryRefused)?;
            if names.contains(&name) {
                continue;
            }
            // Accept-Encoding is always forwarded, normalised: a safe dimension.
            if name != header::ACCEPT_ENCODING && !varyable(&name) {
                return Err(VaryRefused);
            }
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn hash(k: &CacheKey) -> u64 {
        let mut h = DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    }

    #[test]
    fn keys_differ_by_route_uri_and_variant_and_equal_keys_hash_alike() {
        let a = CacheKey::primary(1, "https://cdn.example/a?x=1".parse().unwrap());
        assert_eq!(a, a.clone());
        assert_eq!(hash(&a), hash(&a.clone()));
        assert_ne!(a, CacheKey::primary(2, a.uri.clone()));
        assert_ne!(
            a,
            CacheKey::primary(1, "https://cdn.example/a?x=2".parse().unwrap())
        );
        let varied = a.with_variant(variant_hash(&vec![]));
        assert_ne!(varied.variant, 0, "0 is the primary key");
        assert_ne!(a, varied);
        assert_eq!(varied.with_variant(0), a);
    }

    /// Parts in pieces hash as their concatenation does with a byte-stream hasher (SipHash,
    /// the store's), and equal a key only when they spell its URL exactly.
    #[test]
    fn key_parts_in_pieces_are_the_key_of_the_url_they_spell() {
        let k = CacheKey::primary(7, "https://cdn.example/npm/a/b.js?v=1".parse().unwrap());
        let parts = |route, target| KeyParts::primary(route, "https", "cdn.example", target);
        let same = parts(7, ["/npm/", "a/b.js", "?", "v=1"]);
        assert_eq!(same, k.parts());
        assert!(moka::Equivalent::equivalent(&same, &k));
        let state = std::collections::hash_map::RandomState::new();
        use std::hash::BuildHasher;
        assert_eq!(state.hash_one(same), state.hash_one(&k));
        for other in [
            parts(8, ["/npm/", "a/b.js", "?", "v=1"]),
            parts(7, ["/npm/", "a/b.js", "?", "v=2"]),
            parts(7, ["/npm/", "a/b.js", "", ""]),
            parts(7, ["/npm/", "a/b.jsv=1", "", ""]),
            parts(7, ["/npm", "/a/b.js", "?", "v=1x"]),
            KeyParts::primary(7, "http", "cdn.example", ["/npm/", "a/b.js", "?", "v=1"]),
            KeyParts::primary(
                7,
                "https",
                "cdn.example:8443",
                ["/npm/", "a/b.js", "?", "v=1"],
            ),
        ] {
            assert!(!moka::Equivalent::equivalent(&other, &k), "{other:?}");
        }
        // Split anywhere, the same string is the same key.
        assert_eq!(parts(7, ["/npm", "/a/b.js?", "", "v=1"]), same);
        // A variant key is another key.
        assert!(!moka::Equivalent::equivalent(&same, &k.with_variant(3)));
    }

    /// Keys of any length hash as their pieces do: one byte stream, however it is written.
    #[test]
    fn long_keys_hash_as_their_pieces() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        for n in [90, 111, 112, 113, 200, 3000] {
            let path = "x".repeat(n);
            let k = CacheKey::primary(
                7,
                format!("https://cdn.example/npm/{path}?v=1")
                    .parse()
                    .unwrap(),
            );
            let parts = KeyParts::primary(7, "https", "cdn.example", ["/npm/", &path, "?", "v=1"]);
            assert_eq!(state.hash_one(parts), state.hash_one(&k), "{n}");
            assert_eq!(parts, k.parts());
        }
    }

    #[test]
    fn vary_names_are_sorted_once_each_and_refused_for_star_or_a_stripped_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::VARY,
            HeaderValue::from_static("Accept, accept-encoding"),
        );
        h.append(header::VARY, HeaderValue::from_static("accept"));
        let only_accept = |n: &HeaderName| n == header::ACCEPT;
        assert_eq!(
            vary_names(&h, only_accept),
            Ok(vec![header::ACCEPT, header::ACCEPT_ENCODING])
        );
        h.append(header::VARY, HeaderValue::from_static("*"));
        assert_eq!(vary_names(&h, only_accept), Err(VaryRefused));
        let mut h = HeaderMap::new();
        h.append(header::VARY, HeaderValue::from_static("cookie"));
        assert_eq!(vary_names(&h, only_accept), Err(VaryRefused));
    }
}
