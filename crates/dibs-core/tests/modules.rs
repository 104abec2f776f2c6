//! The code's shape, as ARCHITECTURE.md's invariants state it. Modules import in no
//! circle: within `dibs-core` and within `dibs-serve`, the top-level modules form a graph
//! without cycles, so a leaf (`allocation`, `ledger`, `app`) can be read and changed
//! without the modules that use it. The engine is a folder of files a newcomer can read
//! whole, and the broker answers with types, never loose JSON.
//!
//! The graph is read from the source text: a file under `src/NAME.rs` or `src/NAME/` belongs
//! to module `NAME`, and it depends on every `crate::OTHER` it names (also inside
//! `use crate::{..}` groups). Comments are left out. It is a grep, not a compiler, and says
//! so in its failure message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The names `crate::NAME` and `crate::{NAME, ..}` mention in `text`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String =
        text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Top-level module -> the other top-level modules it refers to.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(src).expect("under src");
        let top = relative.components().next().expect("a component").as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source file is readable");
        let refs = crate_references(&text);
        graph.entry(top.clone()).or_default().extend(refs.into_iter().filter(|r| *r != top));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for refs in graph.values_mut() {
        refs.retain(|r| modules.contains(r));
    }
    graph
}

/// A cycle in `graph`, if there is one, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn check(crate_folder: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_folder).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 5, "read too few modules under {}: {graph:?}", src.display());
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules of {crate_folder} import each other in a circle: {} (read from `crate::` paths in the source)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn dibs_core_modules_import_in_no_circle() {
    check("dibs-core");
}

#[test]
fn dibs_serve_modules_import_in_no_circle() {
    check("dibs-serve");
}

#[test]
fn the_checker_sees_a_circle_and_groups() {
    let refs = crate_references(
        "use crate::{engine::Engine, ledger};\n// crate::commented\nlet x = crate::types::Price;",
    );
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["engine", "ledger", "types"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_owned(), ["b".to_owned()].into()), ("b".to_owned(), BTreeSet::new())].into();
    assert_eq!(find_cycle(&acyclic), None);
}

/// The files of a folder under a crate's `src`, with their text.
fn sources(crate_folder: &str, folder: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_folder).join("src").join(folder);
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files.sort();
    files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).expect("readable"))).collect()
}

/// The most lines an engine file may have: one concern a newcomer reads whole.
const MAX_ENGINE_FILE_LINES: usize = 700;

#[test]
fn the_engine_is_a_folder_of_files_read_whole() {
    let files = sources("dibs-core", "engine");
    assert!(files.len() >= 8, "the engine's concerns each have a file: {files:?}");
    for (path, text) in &files {
        let lines = text.lines().count();
        assert!(
            lines <= MAX_ENGINE_FILE_LINES,
            "{} has {lines} lines (at most {MAX_ENGINE_FILE_LINES})",
            path.display()
        );
    }
}

#[test]
fn the_broker_answers_with_types_not_loose_json() {
    let mut files = sources("dibs-serve", "broker");
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dibs-serve/src/broker.rs");
    files.push((top.clone(), std::fs::read_to_string(&top).expect("readable")));
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("serde_json::Value") && !code.contains("json!("),
                "{}:{}: the broker's answers are types (view.rs), not JSON values: {line}",
                path.display(),
                n + 1
            );
        }
    }
}
