//! The layout guard: `src/lib.rs`'s map lists every top-level module in the order a request
//! meets it, and each module imports only modules below it there, so no two modules import
//! each other, directly or in a circle. Read from the source text (production code: each
//! file up to its `#[cfg(test)]`, comments left out).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules of lib.rs's map, in its order.
fn map() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each top-level module and the top-level modules its production code names as `crate::x`.
fn imports() -> BTreeMap<String, Vec<(String, String)>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        let entry = out.entry(top.clone()).or_default();
        for line in production.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    entry.push((name, rel.display().to_string()));
                }
                // `use crate::{a, b::c}`: every name at the group's top level.
                if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    for part in group.split(',') {
                        let name = part.trim().split("::").next().unwrap_or("").trim();
                        if !name.is_empty() && name != top {
                            entry.push((name.to_owned(), rel.display().to_string()));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_module_is_on_the_map_and_imports_only_modules_below_it() {
    let map = map();
    let imports = imports();
    for module in imports.keys() {
        assert!(map.contains(module), "src/{module} is not on lib.rs's map");
    }
    for module in &map {
        assert!(
            imports.contains_key(module),
            "lib.rs's map names {module}, which is not in src/"
        );
    }
    let rank = |m: &str| map.iter().position(|x| x == m);
    let mut upward = Vec::new();
    for (module, uses) in &imports {
        for (used, file) in uses {
            let (Some(from), Some(to)) = (rank(module), rank(used)) else {
                continue;
            };
            if to < from {
                upward.push(format!("{file} imports {used}, which is above {module}"));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports pointing up the map:\n{}",
        upward.join("\n")
    );
}
