//! The layout guard: `src/lib.rs`'s map lists every top-level module in the order a request
//! meets it, and each module imports only modules below it there, so no two modules import
//! each other, directly or in a circle; inside a folder, likewise, no two files (or subfolders)
//! import each other. Read from the source text (production code: each file up to its
//! `#[cfg(test)]`, comments left out).

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

/// A file's module path under `src/` (`cache/disk/tier.rs` → `[cache, disk, tier]`; a
/// `mod.rs` is its folder's module).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The module paths a line of code names through `crate::` or `super::` (with one level of
/// `{a, b::c}` group), resolved from the module at `here` (each `super` is its parent).
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let starts = rest.starts_with("crate::") || rest.starts_with("super::");
        let boundary = code[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !ident(c) && c != ':');
        if !(starts && boundary) {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        // The module the path starts from: the crate root, or `here`'s parent per `super`.
        let mut base: Vec<String> = Vec::new();
        let mut tail = rest;
        if let Some(t) = tail.strip_prefix("crate::") {
            tail = t;
        } else {
            base = here.to_vec();
            while let Some(t) = tail.strip_prefix("super::") {
                base.pop();
                tail = t;
            }
        }
        let mut path = base;
        loop {
            let name: String = tail.chars().take_while(|c| ident(*c)).collect();
            if name.is_empty() {
                break;
            }
            tail = &tail[name.len()..];
            path.push(name);
            match tail.strip_prefix("::") {
                Some(t) => tail = t,
                None => break,
            }
        }
        if let Some(group) = tail.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for part in group.split(',') {
                let first = part.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() && first != "self" {
                    let mut p = path.clone();
                    p.push(first.to_owned());
                    out.push(p);
                }
            }
        }
        out.push(path);
        i += rest.len() - tail.len();
    }
    out
}

/// Whether `dir` (under src/) holds a module named `name`, as a file or a folder.
fn is_module(dir: &[String], name: &str) -> bool {
    let mut p = src();
    for d in dir {
        p.push(d);
    }
    p.join(format!("{name}.rs")).is_file() || p.join(name).join("mod.rs").is_file()
}

#[test]
fn no_two_files_of_a_folder_import_each_other_directly_or_in_a_circle() {
    // Edges between sibling modules: `cache/disk/tier` → `cache/disk/heads` when tier's
    // production code names `super::heads::…` or `crate::cache::disk::heads::…`; a file deeper
    // in a sibling folder counts as that folder.
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap().to_path_buf();
        let here = module_path(&rel);
        if here.is_empty() || here == ["lib"] || here == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in production.lines() {
            let code = line.split("//").next().unwrap_or("");
            for target in named_paths(code, &here) {
                // The first level where the two paths part: both sides must be modules there.
                let shared = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
                let (Some(from), Some(to)) = (here.get(shared), target.get(shared)) else {
                    continue;
                };
                let dir = &here[..shared];
                if !is_module(dir, to) || !is_module(dir, from) {
                    continue;
                }
                let key = |m: &str| {
                    let mut k = dir.join("/");
                    if !k.is_empty() {
                        k.push('/');
                    }
                    k + m
                };
                edges
                    .entry(key(from))
                    .or_default()
                    .entry(key(to))
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    // Depth-first search; a back edge closes a circle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node.to_owned());
            circles.push(circle.join(" → "));
            return;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            visit(next, edges, stack, done, circles);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut circles = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "modules importing each other:\n{}",
        circles.join("\n")
    );
}
