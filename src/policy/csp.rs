//! `Content-Security-Policy` without its reporting. `report-uri` makes the browser post a
//! report, with the page's URL in it, to any address the upstream names; `report-to` names an
//! endpoint group for the same. A mirrored page keeps the protection its policy gives, never
//! the reporting. (`-Report-Only` policies do nothing but report: withheld whole.)

/// Directives that make the browser send reports.
const REPORTING: [&str; 2] = ["report-uri", "report-to"];

/// One `Content-Security-Policy` value (a comma-separated list of policies) without its
/// reporting directives, written anew as CSP Level 3 parses it (directives split on `;`, a
/// name and values split on ASCII whitespace); `None` if nothing is left.
pub fn without_reporting(value: &str) -> Option<String> {
    let policies: Vec<String> = value
        .split(',')
        .filter_map(|policy| {
            let directives: Vec<String> = policy
                .split(';')
                .filter_map(|directive| {
                    let mut words = directive
                        .split(|c: char| c.is_ascii_whitespace())
                        .filter(|w| !w.is_empty());
                    let name = words.next()?;
                    // A name of anything else than these is no directive a browser knows.
                    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        || REPORTING.iter().any(|r| name.eq_ignore_ascii_case(r))
                    {
                        return None;
                    }
                    Some(
                        std::iter::once(name)
                            .chain(words)
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                })
                .collect();
            (!directives.is_empty()).then(|| directives.join("; "))
        })
        .collect();
    (!policies.is_empty()).then(|| policies.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporting_directives_are_removed_and_the_rest_kept() {
        assert_eq!(
            without_reporting(
                "default-src 'self'; report-uri https://evil.example/r;REPORT-TO\tg, img-src *; Report-Uri /x"
            )
            .as_deref(),
            Some("default-src 'self', img-src *")
        );
        assert_eq!(
            without_reporting("script-src  'self'\t'nonce-a' ;; upgrade-insecure-requests")
                .as_deref(),
            Some("script-src 'self' 'nonce-a'; upgrade-insecure-requests")
        );
        assert_eq!(without_reporting("report-uri https://evil.example/r"), None);
        assert_eq!(without_reporting(" ; , "), None);
        // A name a browser would not read as `report-uri` is not one it acts on either.
        assert_eq!(
            without_reporting("report\u{b}uri https://evil.example/"),
            None
        );
    }
}
