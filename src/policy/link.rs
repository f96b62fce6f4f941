//! `Link` response headers. A preconnect, preload, prefetch or `imagesrcset` hint sends the
//! browser to whatever it names, before the page asks for anything, so an entry is kept only
//! when every URL in it resolves on the site. Browsers do not agree on how to split and parse
//! a `Link` value (commas inside `<…>`, quotes, escapes), so a kept entry is never passed on
//! as written: it is parsed, judged, and written anew in one plain form that every parser reads
//! the same way. Anything that does not parse cleanly is dropped.

use crate::policy::reach::{reach, Reach};

/// The entries of one `Link` value a browser would follow only on the site, written anew;
/// `None` if none is left.
pub fn filter(value: &str) -> Option<String> {
    let kept: Vec<String> = split_entries(value)
        .into_iter()
        .filter_map(parse)
        .filter(Entry::stays_on_site)
        .map(|e| e.to_string())
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// One parsed entry: the target and its parameters (names lowercased, values unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    target: &'a str,
    params: Vec<(String, Option<String>)>,
}

impl Entry<'_> {
    /// The target is a plain same-origin reference, and every parameter value is plain (no
    /// quote, backslash, `<`, `>` or `;` that a parser ignoring quotes would read as structure)
    /// and names no other host once split on spaces and commas, as a srcset is (an `anchor`, an
    /// `imagesrcset` candidate, anything a browser may one day read as a URL).
    fn stays_on_site(&self) -> bool {
        plain(self.target)
            && reach(self.target) == Reach::Relative
            && self.params.iter().all(|(_, v)| {
                v.as_deref().is_none_or(|v| {
                    v.bytes()
                        .all(|b| (b' '..=b'~').contains(&b) && !b"\"\\<>;".contains(&b))
                        && v.split([' ', ',']).all(|t| reach(t) != Reach::Network)
                })
            })
    }
}

impl std::fmt::Display for Entry<'_> {
    /// `<target>; name; name=token; name="value"`: no escapes, no space inside the target.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.target)?;
        for (name, value) in &self.params {
            match value {
                None => write!(f, "; {name}")?,
                Some(v) if !v.is_empty() && v.bytes().all(is_tchar) => write!(f, "; {name}={v}")?,
                Some(v) => write!(f, "; {name}=\"{v}\"")?,
            }
        }
        Ok(())
    }
}

/// A target that reads the same to every parser: printable ASCII, nothing that delimits a
/// `Link` value (`<`, `>`, `"`, `,`, `;`), no backslash, no space.
fn plain(target: &str) -> bool {
    target
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"<>\",;\\".contains(&b))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses `<target> *( OWS ";" OWS name [ OWS "=" OWS ( token / quoted-string ) ] )`; `None`
/// for anything else.
fn parse(entry: &str) -> Option<Entry<'_>> {
    let rest = entry.trim_matches(is_ows).strip_prefix('<')?;
    let end = rest.find('>')?;
    let target = &rest[..end];
    let mut rest = rest[end + 1..].trim_start_matches(is_ows);
    let mut params = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix(';')?.trim_start_matches(is_ows);
        let name_end = rest
            .bytes()
            .position(|b| !is_tchar(b))
            .unwrap_or(rest.len());
        if name_end == 0 {
            return None;
        }
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start_matches(is_ows);
        let value = match rest.strip_prefix('=') {
            None => None,
            Some(after) => {
                let after = after.trim_start_matches(is_ows);
                let (value, tail) = match after.strip_prefix('"') {
                    Some(quoted) => quoted_string(quoted)?,
                    None => {
                        let end = after
                            .bytes()
                            .position(|b| !is_tchar(b))
                            .unwrap_or(after.len());
                        (after[..end].to_owned(), &after[end..])
                    }
                };
                rest = tail.trim_start_matches(is_ows);
                Some(value)
            }
        };
        params.push((name, value));
    }
    Some(Entry { target, params })
}

/// The value of a quoted string whose opening quote is gone, and what follows its closing one.
fn quoted_string(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// Splits a `Link` value on the commas between entries (not those inside `<…>` or quotes).
fn split_entries(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_angle, mut in_quote, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if in_quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '<' => in_angle = true,
            '>' => in_angle = false,
            '"' if !in_angle => in_quote = true,
            ',' if !in_angle => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_entries_a_browser_would_follow_off_site_are_dropped() {
        for value in [
            "<https://fonts.gstatic.com>; rel=preconnect; crossorigin",
            "<//cdn.example/x.js>; rel=preload; as=script",
            "<HTTPS://B.example/>; rel=dns-prefetch",
            // The URL parser deletes tabs: `/\t/evil` is `//evil`.
            "</\t/evil.example/a.png>; rel=preload; as=image",
            "</\\evil.example/a.png>; rel=preload; as=image",
            "< //evil.example/a.png>; rel=preload; as=image",
            // Candidates and anchors are URLs too.
            "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x, //evil.example/b.png 2x\"",
            "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x,https://evil.example/b.png 2x\"; imagesizes=\"50vw\"",
            "</a>; rel=preload; anchor=\"https://evil.example/\"",
            // A browser that splits on every comma outside quotes reads a second entry here.
            "</a,<//evil.example/x>; rel=preload; as=image>; rel=preload",
            // Escapes in a quoted value read differently from parser to parser.
            "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x, \\/\\/evil.example/b 2x\"",
            // A value a quote-blind parser would split into more structure.
            "</a>; title=\"x, <https://evil.example/>; rel=preload\"",
            "garbage",
            "</a>; rel=preload junk",
            "</a>; =x",
        ] {
            assert_eq!(filter(value), None, "{value:?}");
        }
    }

    #[test]
    fn first_party_entries_are_kept_in_one_plain_form() {
        for (value, kept) in [
            (
                "</local.css>; rel=preload; as=style",
                "</local.css>; rel=preload; as=style",
            ),
            (
                "<https://a.example/x,y>; rel=preload, </local.css>;rel=\"preload\";  AS=style",
                "</local.css>; rel=preload; as=style",
            ),
            (
                "</a>; title=\"x, y\", <HTTPS://B.example/>; rel=dns-prefetch",
                "</a>; title=\"x, y\"",
            ),
            (
                "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x, /b.png 2x\"; imagesizes=\"(max-width: 600px) 50vw\"",
                "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x, /b.png 2x\"; imagesizes=\"(max-width: 600px) 50vw\"",
            ),
            (
                "</f.woff2>; rel=preload; as=font; crossorigin, </g.js>; rel=modulepreload",
                "</f.woff2>; rel=preload; as=font; crossorigin, </g.js>; rel=modulepreload",
            ),
        ] {
            assert_eq!(filter(value).as_deref(), Some(kept), "{value:?}");
        }
    }
}
