//! The README and the guide (`docs/`): every relative link and anchor resolves,
//! every guide page is reachable from the README, and the README stays short.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The lines outside fenced code blocks, with inline code spans removed.
fn prose(md: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = vec![];
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Drop `code` spans: a link's syntax inside one is text.
            let mut kept = String::new();
            for (i, part) in line.split('`').enumerate() {
                if i % 2 == 0 {
                    kept.push_str(part);
                }
            }
            out.push(kept);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, letters, digits, `-` and `_`
/// kept, spaces made `-`, the rest dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings; a repeated one gets `-1`, `-2`, ... as on GitHub.
fn anchors(md: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = vec![];
    for line in prose(md) {
        let Some(text) = line.strip_prefix('#').map(|l| l.trim_start_matches('#')) else { continue };
        if !text.starts_with(' ') {
            continue;
        }
        let s = slug(text);
        let n = seen.entry(s.clone()).or_insert(0);
        out.push(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the page's links and images (`](target)`).
fn links(md: &str) -> Vec<String> {
    let mut out = vec![];
    for line in prose(md) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    out
}

fn pages() -> Vec<PathBuf> {
    let mut p = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    p.extend(docs);
    p
}

#[test]
fn every_relative_link_and_anchor_in_the_readme_and_the_guide_resolves() {
    let mut bad = vec![];
    let mut linked: Vec<PathBuf> = vec![];
    let mut count = 0;
    for page in pages() {
        let md = std::fs::read_to_string(&page).unwrap();
        let shown = page.strip_prefix(root()).unwrap().display().to_string();
        for target in links(&md) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (path, anchor) = target.split_once('#').map_or((target.as_str(), None), |(p, a)| (p, Some(a)));
            let file = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            if !file.exists() {
                bad.push(format!("{shown}: ({target}): {} does not exist", file.display()));
                continue;
            }
            if let Ok(canon) = file.canonicalize() {
                linked.push(canon);
            }
            if let Some(a) = anchor {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).iter().any(|h| h == a) {
                    bad.push(format!("{shown}: ({target}): no heading with anchor #{a} in {}", file.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} broken link(s):\n{}", bad.len(), bad.join("\n"));
    assert!(count > 50, "only {count} relative links found: is the parser broken?");
    // Every guide page can be reached from the README's links or the guide's own.
    for page in pages().iter().skip(1) {
        assert!(linked.contains(&page.canonicalize().unwrap()), "{} is linked from nowhere", page.display());
    }
    let size = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(size <= 15 * 1024, "README.md is {size} bytes; keep it under 15 KB and move the rest into docs/");
}

#[test]
fn the_link_checker_catches_what_it_must() {
    assert_eq!(slug("The cells compared (the GRU chapter's exercise)"), "the-cells-compared-the-gru-chapters-exercise");
    assert_eq!(slug("Checked on an NVIDIA H200, 2026-11-28"), "checked-on-an-nvidia-h200-2026-11-28");
    let md = "# A\n## A\n```\n# not a heading [x](nope.md)\n```\nsee [b](b.md#c) and `[code](nope.md)` and ![i](i.svg)\n";
    assert_eq!(anchors(md), ["a", "a-1"]);
    assert_eq!(links(md), ["b.md#c", "i.svg"]);
}
