//! The shape of the house, checked: imports run only down the layer map (README, "Layout"), no
//! two files of `src/` import each other through any chain, no file of `src/` is longer than
//! [`MAX_LINES`], and only `api/status.rs` builds a gRPC status. Reads the sources only; test modules (`mod tests`, files named `*tests.rs`) may
//! import what they like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, highest layer first. A module may import only the modules
/// after it. The last group shares one layer (each may import the others; the file-level cycle
/// check still holds among them).
const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &["api"],
    &["node"],
    &["raft"],
    &["apply"],
    &["cluster"],
    &["auth"],
    &["watch"],
    &["mvcc"],
    &["lease"],
    &["storage"],
    &["net"],
    &["rt"],
    &["config", "keys", "limits", "metrics", "pb"],
];

/// The longest file `src/` may hold.
const MAX_LINES: usize = 800;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` → `[]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments and without inline test modules: everything from a
/// `#[cfg(...test...)]` attribute on a `mod name {` onwards (inline test modules come last in our
/// files; a test module in its own file is a file named `*tests.rs`).
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(") && trimmed.contains("test") {
            let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            let after = lines.get(i + 2).map(|l| l.trim_start()).unwrap_or("");
            let module = if next.starts_with("#[path") {
                after
            } else {
                next
            };
            if module.starts_with("mod ") && module.trim_end().ends_with('{') {
                break;
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every `crate::a::b::...` and `super::...` path in `code`, as module paths from the crate root
/// (`from` is the importing file's module: `a/b.rs` and `a/b/mod.rs` are both `a::b`, whose
/// `super` is `a`).
fn referenced_paths(code: &str, from: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        let (base, skip) = if starts_word && rest.starts_with("crate::") {
            (Some(Vec::new()), "crate::".len())
        } else if starts_word && rest.starts_with("super::") {
            let mut base = from.to_vec();
            let mut skip = 0;
            let mut r = rest;
            while r.starts_with("super::") {
                base.pop();
                skip += "super::".len();
                r = &r["super::".len()..];
            }
            (Some(base), skip)
        } else {
            (None, 1)
        };
        i += skip;
        let Some(mut path) = base else { continue };
        // The segments that follow: identifiers joined by `::`.
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if j == start {
                break;
            }
            path.push(code[start..j].to_string());
            if code[j..].starts_with("::")
                && code[j + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            {
                j += 2;
            } else {
                break;
            }
        }
        out.push(path);
        i = j.max(i);
    }
    out
}

struct Crate {
    /// Module path → its file's code (without tests and comments) and line count.
    files: BTreeMap<Vec<String>, (PathBuf, String, usize)>,
}

impl Crate {
    fn read() -> Self {
        let mut paths = Vec::new();
        rust_files(&src_dir(), &mut paths);
        let files = paths
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("read source");
                let lines = text.lines().count();
                (module_path(&p), (p, code_of(&text), lines))
            })
            .collect();
        Self { files }
    }

    /// The module file a path names: its longest prefix that is a file of the crate.
    fn file_of(&self, path: &[String]) -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.files.contains_key(p))
    }

    fn is_test_file(path: &Path) -> bool {
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"))
    }

    /// File → the files it imports (itself and its ancestors' `mod.rs` excluded).
    fn imports(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut graph = BTreeMap::new();
        for (module, (path, code, _)) in &self.files {
            if Self::is_test_file(path) {
                continue;
            }
            let mut targets = BTreeSet::new();
            for referenced in referenced_paths(code, module) {
                let Some(target) = self.file_of(&referenced) else {
                    continue;
                };
                if target != *module && !module.starts_with(&target) {
                    targets.insert(target);
                }
            }
            graph.insert(module.clone(), targets);
        }
        graph
    }
}

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first().map(String::as_str).unwrap_or("main");
    LAYERS.iter().position(|layer| layer.contains(&top))
}

#[test]
fn every_top_level_module_has_a_place_in_the_layer_map() {
    let krate = Crate::read();
    let tops: BTreeSet<String> = krate
        .files
        .keys()
        .filter_map(|m| m.first().cloned())
        .collect();
    let unplaced: Vec<&String> = tops
        .iter()
        .filter(|t| layer_of(std::slice::from_ref(t)).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS: {unplaced:?}"
    );
}

#[test]
fn imports_run_only_down_the_layer_map() {
    let krate = Crate::read();
    let mut upward = Vec::new();
    for (from, targets) in krate.imports() {
        let Some(from_layer) = layer_of(&from) else {
            continue;
        };
        for to in targets {
            let to_layer = layer_of(&to).expect("placed");
            if to_layer < from_layer {
                upward.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layer map:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_files_import_each_other_through_any_chain() {
    let graph = Crate::read().imports();
    // Tarjan's strongly connected components (the graph is small enough to recurse).
    struct Walk<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        cycles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().expect("on the stack");
                    self.on_stack.remove(w);
                    component.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.cycles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        cycles: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    assert!(
        walk.cycles.is_empty(),
        "files that import each other: {:?}",
        walk.cycles
    );
}

#[test]
fn no_file_in_src_is_longer_than_the_limit() {
    let krate = Crate::read();
    let long: Vec<String> = krate
        .files
        .values()
        .filter(|(_, _, lines)| *lines > MAX_LINES)
        .map(|(path, _, lines)| format!("{} ({lines} lines)", path.display()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn only_api_status_builds_a_grpc_status() {
    let krate = Crate::read();
    let builders = [
        "Status::new(",
        "Status::unknown(",
        "Status::invalid_argument(",
        "Status::internal(",
        "Status::unavailable(",
        "Status::failed_precondition(",
        "Status::not_found(",
        "Status::permission_denied(",
        "Status::resource_exhausted(",
        "Status::out_of_range(",
        "Status::unauthenticated(",
        "Status::aborted(",
        "Status::cancelled(",
        "Status::deadline_exceeded(",
        "Status::already_exists(",
        "Status::data_loss(",
        "Status::unimplemented(",
    ];
    let mut found = Vec::new();
    for (module, (path, code, _)) in &krate.files {
        if Crate::is_test_file(path) || module.join("::") == "api::status" {
            continue;
        }
        for b in builders.iter().filter(|b| code.contains(*b)) {
            found.push(format!("{}: {b}", path.display()));
        }
    }
    assert!(
        found.is_empty(),
        "gRPC statuses built outside api/status.rs: {found:?}"
    );
}

/// The simulator's seam is `rt` (the runtime: time, tasks, randomness) and `net` (every socket and
/// what the simulator's transport does instead): no other file of `src/` tells the two worlds
/// apart, test modules aside.
#[test]
fn only_the_runtime_and_network_rooms_tell_the_simulator_apart() {
    let krate = Crate::read();
    let mut found = Vec::new();
    for (module, (path, code, _)) in &krate.files {
        let room = module.first().map(String::as_str);
        if Crate::is_test_file(path) || matches!(room, Some("rt" | "net")) {
            continue;
        }
        for line in code.lines() {
            // A test-only item may skip the simulator (its attribute names `test` too).
            if line.contains("madsim") && line.contains("cfg") && !line.contains("test") {
                found.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cfg(madsim) outside rt/ and net/: {found:?}"
    );
}

/// Every `select!` of `src/` (tests aside) takes its ready branches in the order written: tokio's
/// default picks at random among them, from a generator outside the simulator's seed, so a seed
/// would not replay the same run.
#[test]
fn every_select_is_biased() {
    let krate = Crate::read();
    let mut found = Vec::new();
    for (path, code, _) in krate.files.values() {
        if Crate::is_test_file(path) {
            continue;
        }
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("select!") || line.trim_start().starts_with("use ") {
                continue;
            }
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
            if next != "biased;" {
                found.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "select! without `biased;`: {found:?}");
}

/// The checker itself: it must see an import up the map and a cycle where there is one.
#[test]
fn the_checker_finds_paths_through_crate_and_super() {
    let from = vec!["node".to_string(), "quota".to_string()];
    let found = referenced_paths(
        "use super::{Node, NodeError};\nuse crate::api::status;\nlet x = crate::rt::now();\n",
        &from,
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["node", "api::status", "rt::now"]);
    let code = code_of(
        "use a;\n// crate::api\n#[cfg(test)]\nmod t;\nuse b;\n#[cfg(test)]\nmod tests {\n    use crate::api;\n}\n",
    );
    assert_eq!(code, "use a;\n#[cfg(test)]\nmod t;\nuse b;\n");
}
