//! The source tree's shape: the layers `src/lib.rs` lists, each using only the
//! layers above it in that list (no import from a layer below, so no cycle
//! between layers), and a cell's CPU rows in the cell's own folder.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layers in the order of `src/lib.rs`'s table (`| \`name\` | ... |` rows).
fn layers(lib_rs: &str) -> Vec<String> {
    lib_rs.lines().filter_map(|l| l.strip_prefix("//! | `")).filter_map(|l| l.split('`').next()).map(str::to_string).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a source file names through `crate::` (comments
/// dropped), and whether it uses the `usage!` macro (which is `error`'s).
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.insert(if name == "usage" { "error".to_string() } else { name });
        }
        if code.contains("usage!(") {
            out.insert("error".to_string());
        }
    }
    out
}

/// Each use of a layer below a file's own: (file, the layer it uses).
fn upward_uses(order: &[String], files: &[(String, String)]) -> Vec<(String, String)> {
    let rank = |m: &str| order.iter().position(|l| l == m);
    let mut bad = vec![];
    for (path, text) in files {
        let top = path.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let Some(own) = rank(&top) else { continue };
        for used in uses(text) {
            if rank(&used).is_some_and(|r| r > own) {
                bad.push((path.clone(), used));
            }
        }
    }
    bad
}

#[test]
fn no_layer_uses_one_below_it() {
    let root = src();
    let order = layers(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
    assert!(order.len() >= 8 && order[0] == "error" && order.last().unwrap() == "cli", "lib.rs's layer table: {order:?}");
    // Every module lib.rs declares is a layer of the table, and the reverse.
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim().split_once("mod ").filter(|(vis, _)| !vis.contains("//")).map(|(_, m)| m.trim_end_matches(';').to_string())
        })
        .collect();
    assert_eq!(declared, order.iter().cloned().collect::<BTreeSet<_>>(), "lib.rs's modules and its layer table differ");
    let mut paths = vec![];
    rust_files(&root, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| (p.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let bad = upward_uses(&order, &files);
    assert!(bad.is_empty(), "imports from a layer below (file, layer): {bad:?}");
}

#[test]
fn the_layer_check_catches_an_upward_use() {
    let order: Vec<String> = ["error", "platform", "model", "train", "cli"].map(String::from).into();
    let files = vec![
        ("model/mod.rs".to_string(), "use crate::platform::cuda;\n// crate::train in a comment\n".to_string()),
        ("platform/device.rs".to_string(), "fn f() { let _ = crate::train::optim::x; }\n".to_string()),
        ("error.rs".to_string(), "fn g() -> E { usage!(\"x\") }\n".to_string()),
        ("train/mod.rs".to_string(), "fn h() { usage!(\"y\") }\n".to_string()),
    ];
    assert_eq!(upward_uses(&order, &files), vec![("platform/device.rs".to_string(), "train".to_string())]);
}

#[test]
fn each_cells_cpu_rows_are_in_its_own_folder() {
    let root = src().join("model");
    // The CPU engine keeps only the kernels: it names no cell.
    let mut engine = vec![];
    rust_files(&root.join("cpu"), &mut engine);
    for p in &engine {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(!text.contains("model::cell") && !text.contains("super::cell"), "{} uses a cell", p.display());
    }
    for cell in ["gru", "lstm", "rnn"] {
        assert!(root.join("cell").join(cell).join("cpu.rs").is_file(), "cell {cell} has no cpu.rs in its folder");
    }
}
