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

    /// The URI's parts as they were sent: equality and hashing both use these exact bytes.
    fn uri_parts(&self) -> (Option<&str>, Option<&str>, &str) {
        (
            self.uri.scheme_str(),
            self.uri.authority().map(|a| a.as_str()),
            self.uri.path_and_query().map_or("", |p| p.as_str()),
        )
    }
}

// By hand rather than derived: `Uri`'s own `Hash` feeds the hasher one byte per call (it
// lowercases the authority as it goes), which made hashing the key the costliest step of a
// cache hit. The hasher stays the cache's SipHash: the URL is the visitor's to choose, so the
// table must resist chosen collisions. Equality is exact, so it agrees with the hash.
impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.route == other.route
            && self.variant == other.variant
            && self.uri_parts() == other.uri_parts()
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.route.hash(state);
        self.variant.hash(state);
        self.uri_parts().hash(state);
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
