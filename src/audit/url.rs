//! URLs as a browser reads them: the canonical absolute form, relative references resolved
//! against a base, and the host, origin and path of a canonical URL.

/// The canonical form of an absolute `http(s)://` or scheme-relative URL, as a browser reads it
/// (surrounding spaces, tabs and newlines dropped, `\` as `/`, any number of slashes after the
/// scheme); `None` for relative URLs, other schemes, or no usable host.
pub fn absolute(raw: &str) -> Option<String> {
    let s: String = raw
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let (scheme, rest) = match s.find([':', '/', '\\', '?', '#']) {
        Some(i) if s.as_bytes()[i] == b':' => {
            let scheme = s[..i].to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return None;
            }
            let rest = &s[i + 1..];
            if !rest.starts_with(['/', '\\']) {
                return None;
            }
            (Some(scheme), rest)
        }
        _ => {
            if !(s.starts_with("//")
                || s.starts_with("\\\\")
                || s.starts_with("/\\")
                || s.starts_with("\\/"))
            {
                return None;
            }
            (None, s.as_str())
        }
    };
    let rest = rest.trim_start_matches(['/', '\\']);
    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let authority = rest[..end].to_ascii_lowercase();
    let host_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]{}@%".contains(&b));
    if !host_ok || normal_host(&authority).is_empty() {
        return None;
    }
    let tail = &rest[end..];
    let tail = tail.split('#').next().unwrap_or("");
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p.replace('\\', "/"), Some(q)),
        None => (tail.replace('\\', "/"), None),
    };
    let mut out = match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("//{authority}{path}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Resolves a relative reference against an absolute base (for `<base href>` and redirects).
pub(super) fn resolve(base: &str, rel: &str) -> Option<String> {
    let rel = rel.trim_matches(|c: char| c <= ' ');
    if rel.is_empty() || rel.starts_with('#') || !crate::policy::is_relative_reference(rel) {
        return None;
    }
    let origin = origin_of(base);
    let base_path = path_of(base);
    let base_path = base_path.split(['?', '#']).next().unwrap_or("/");
    let rel = rel.split('#').next().unwrap_or("");
    let joined = if rel.starts_with('/') {
        rel.to_owned()
    } else if rel.starts_with('?') {
        format!("{base_path}{rel}")
    } else {
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{rel}")
    };
    let (path, query) = match joined.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (joined.as_str(), None),
    };
    let mut out = format!("{origin}{}", remove_dot_segments(path));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    absolute(&out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segs.push("");
                }
            }
            ".." => {
                if segs.len() > 1 {
                    segs.pop();
                }
                if last {
                    segs.push("");
                }
            }
            s => segs.push(s),
        }
    }
    let joined = segs.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// The authority of a canonical URL (`host[:port]`, lowercase).
pub(super) fn authority_of(url: &str) -> Option<&str> {
    let after = url.split_once("//")?.1;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(&after[..end])
}

/// The host of a canonical URL, without user information or port.
pub(super) fn host_of(url: &str) -> Option<&str> {
    let a = authority_of(url)?;
    let a = a.rsplit('@').next().unwrap_or(a);
    let host = if a.starts_with('[') {
        a.find(']').map_or(a, |i| &a[..=i])
    } else {
        a.split(':').next().unwrap_or(a)
    };
    Some(host.trim_end_matches('.'))
}

/// A host as compared: lowercase, no port, no trailing dot.
pub(super) fn normal_host(authority: &str) -> String {
    let fake = format!("//{}", authority.to_ascii_lowercase());
    host_of(&fake).unwrap_or("").to_owned()
}

pub(super) fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("https", |(s, _)| s)
}

/// `scheme://authority` of a canonical URL (`https` for a scheme-relative one).
pub(super) fn origin_of(url: &str) -> String {
    let scheme = if url.starts_with("//") {
        "https"
    } else {
        scheme_of(url)
    };
    format!("{scheme}://{}", authority_of(url).unwrap_or(""))
}

/// The path and query of a canonical URL (`/` when empty).
pub(super) fn path_of(url: &str) -> &str {
    let Some((_, after)) = url.split_once("//") else {
        return "/";
    };
    match after.find(['/', '?']) {
        Some(i) => &after[i..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_a_browser_reads_them() {
        assert_eq!(
            absolute("  HTTPS://Fonts.GoogleAPIs.com/css?family=A#x "),
            Some("https://fonts.googleapis.com/css?family=A".into())
        );
        assert_eq!(
            absolute("//cdn.example/a.js"),
            Some("//cdn.example/a.js".into())
        );
        assert_eq!(
            absolute("\\\\evil.example\\a.js"),
            Some("//evil.example/a.js".into())
        );
        assert_eq!(
            absolute("https:\\\\evil.example\\x?a\\b"),
            Some("https://evil.example/x?a\\b".into())
        );
        assert_eq!(
            absolute("ht\ntps://x.example/"),
            Some("https://x.example/".into())
        );
        for rel in [
            "/a.js",
            "a.js",
            "?q",
            "#top",
            "data:image/png;base64,AA",
            "javascript:void(0)",
            "mailto:a@b.example",
            "https://",
            "http:x.example",
            "//'+h+'/x",
        ] {
            assert_eq!(absolute(rel), None, "{rel}");
        }
        // Browsers skip any number of slashes after a web scheme.
        assert_eq!(
            absolute("https:///x.example/a"),
            Some("https://x.example/a".into())
        );
        assert_eq!(
            host_of("https://u@Host.example:8443/x"),
            Some("Host.example")
        );
        assert_eq!(host_of("//[::1]:8080/x"), Some("[::1]"));
    }
}
