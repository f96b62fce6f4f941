//! The report as text: covered, not covered (with what to do), the suggested routes, and a
//! summary line.

use std::fmt::Write as _;

use super::{Coverage, Finding, Suggestion};

/// The human-readable report: covered, then not covered (one line each), the suggested routes,
/// and the summary line. `site` says what counts as first-party (a host, and how it was chosen).
pub fn render(
    page: &str,
    site: Option<&str>,
    findings: &[Finding],
    suggestions: &[Suggestion],
) -> String {
    let mut out = String::new();
    match site {
        Some(h) => {
            let _ = writeln!(out, "{page}: third-party resources (site {h})");
        }
        None => {
            let _ = writeln!(
                out,
                "{page}: third-party resources (no --site given: every absolute URL counts)"
            );
        }
    }
    let covered: Vec<&Finding> = findings.iter().filter(|f| f.covered()).collect();
    let uncovered: Vec<&Finding> = findings.iter().filter(|f| !f.covered()).collect();
    if !covered.is_empty() {
        let _ = writeln!(out, "\ncovered ({}):", covered.len());
        for f in &covered {
            if let Coverage::Covered {
                route,
                first_party,
                note,
            } = &f.coverage
            {
                let _ = write!(
                    out,
                    "  {} -> {first_party} (route {route}; {})",
                    f.url,
                    f.places.join(", ")
                );
                if let Some(n) = note {
                    let _ = write!(out, "; {n}");
                }
                out.push('\n');
            }
        }
    }
    if !uncovered.is_empty() {
        let _ = writeln!(out, "\nNOT COVERED ({}):", uncovered.len());
        for f in &uncovered {
            let _ = write!(out, "  {} ({}) -> ", f.url, f.places.join(", "));
            match &f.coverage {
                Coverage::Hint { serving: Some(r) } => {
                    let _ = write!(out, "remove this connection hint (route {r} already serves this host first-party)");
                }
                Coverage::Hint { serving: None } => {
                    out.push_str("remove this connection hint (the browser connects to the host even if nothing is fetched)");
                }
                Coverage::Facade { player } => {
                    let _ = write!(
                        out,
                        "a {player} player: no route can cover it (mirrored, the player still \
                         loads its scripts, thumbnails and the video from {player}); show a \
                         click-to-load facade instead: a thumbnail stored on the site and a \
                         button that loads the player only when the visitor asks for it"
                    );
                }
                _ => {
                    let s = suggestions.iter().find_map(|s| {
                        s.serves
                            .iter()
                            .find(|(u, _)| *u == f.url)
                            .map(|(_, p)| (s, p))
                    });
                    match s {
                        Some((s, p)) => {
                            let _ =
                                write!(out, "no route; with the suggested route {}: {p}", s.name);
                        }
                        None => out.push_str("no route; self-host it or remove it"),
                    }
                }
            }
            out.push('\n');
        }
    }
    if !suggestions.is_empty() {
        out.push_str("\nsuggested routes (append to the config, then run tamis check):\n");
        for s in suggestions {
            out.push('\n');
            out.push_str(&s.toml);
        }
    }
    let _ = writeln!(
        out,
        "\n{} third-party resources: {} covered, {} not covered",
        findings.len(),
        covered.len(),
        uncovered.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::classify::classify;
    use crate::audit::classify::tests::config;
    use crate::audit::scan::scan;
    use crate::audit::suggest::suggest;
    use crate::routes::Router;

    #[test]
    fn report_layout() {
        let cfg = config();
        let found = scan(br#"<script src="https://cdnjs.cloudflare.com/ajax/libs/a/1/a.js"></script><img src="https://x.example/a.png"><link rel=dns-prefetch href="//y.example">"#).unwrap();
        let findings = classify(&found, Some("site.example"), &Router::new(&cfg));
        let s = suggest(&findings, &cfg, Some("https://site.example"));
        let text = render("page.html", Some("site.example"), &findings, &s);
        assert!(text.contains("\ncovered (1):\n  https://cdnjs.cloudflare.com/ajax/libs/a/1/a.js -> /cdnjs/a/1/a.js (route cdnjs; <script src>)\n"), "{text}");
        assert!(text.contains("\nNOT COVERED (2):\n  https://x.example/a.png (<img src>) -> no route; with the suggested route x-example: /x-example/a.png\n"), "{text}");
        assert!(
            text.contains(
                "  //y.example (<link rel=dns-prefetch href>) -> remove this connection hint"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("\n3 third-party resources: 1 covered, 2 not covered\n"),
            "{text}"
        );
    }
}
