//! The documentation's links lead somewhere and the README's Layout names what is in the tree: the README is
//! the front door, `docs/` holds one page per topic, and a moved heading or file must not leave a dead end.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// Every `](target)` of a page outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_link_in_the_readme_and_docs_leads_to_a_file_and_a_heading_that_exist() {
    let mut dead = Vec::new();
    let mut linked = BTreeSet::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().expect("dir").join(path)
            };
            let Ok(target) = target.canonicalize() else {
                dead.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            };
            linked.insert(target.clone());
            if !fragment.is_empty() {
                let heads = anchors(&std::fs::read_to_string(&target).unwrap_or_default());
                if !heads.contains(fragment) {
                    dead.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    let orphans: Vec<_> = pages()
        .into_iter()
        .skip(1)
        .filter(|p| !linked.contains(&p.canonicalize().expect("page")))
        .collect();
    assert!(orphans.is_empty(), "pages no link leads to: {orphans:?}");
}

#[test]
fn the_readme_layout_names_what_is_in_the_tree() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("## Layout")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("a code block under ## Layout");
    let mut missing = Vec::new();
    let mut named_top = BTreeSet::new();
    let mut parent = PathBuf::new();
    // An entry starts at column 0 (top level) or 2 (inside the last top-level folder); deeper lines continue
    // a description.
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("   ") {
            continue;
        }
        let indented = line.starts_with("  ");
        let entries: Vec<&str> = line
            .trim()
            .split("  ")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|e| e.trim_end_matches(','))
            .collect();
        for entry in entries {
            if !(entry.contains('/') || entry.contains('.')) || entry.contains('<') {
                if !indented && entry.contains('/') {
                    parent = PathBuf::from(entry.split('/').next().unwrap_or_default());
                    named_top.insert(parent.clone());
                }
                continue;
            }
            let path = if indented {
                parent.join(entry)
            } else {
                let p = PathBuf::from(entry);
                named_top.insert(
                    p.components()
                        .next()
                        .map(|c| PathBuf::from(c.as_os_str()))
                        .unwrap_or_default(),
                );
                if entry.ends_with('/') {
                    parent = p.clone();
                }
                p
            };
            if !repo().join(&path).exists() {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the Layout names what is not there: {missing:?}"
    );
    let unnamed: Vec<String> = std::fs::read_dir(repo())
        .expect("repo")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !name.starts_with('.')
                && !matches!(
                    name.as_str(),
                    "target" | "README.md" | "Cargo.lock" | "Makefile" | "LICENSE"
                )
        })
        .filter(|name| !named_top.contains(Path::new(name)))
        .collect();
    assert!(
        unnamed.is_empty(),
        "in the tree but not in the Layout: {unnamed:?}"
    );
}

/// The Makefile's targets: `name:` at the start of a line (not `NAME :=`).
fn makefile_targets() -> BTreeSet<String> {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).expect("Makefile");
    makefile
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', '.']) && !l.contains(":="))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_%".contains(c))
        })
        .collect()
}

/// Whether `named` (as the docs write it: `trigger-<name>`, `bench-*`) is a target, patterns included.
fn is_target(named: &str, targets: &BTreeSet<String>) -> bool {
    let named = named.split('<').next().unwrap_or_default();
    targets
        .iter()
        .any(|t| match (t.strip_suffix('%'), named.strip_suffix('*')) {
            (_, Some(prefix)) => t.starts_with(prefix),
            (Some(prefix), None) => named.starts_with(prefix),
            (None, None) => t == named,
        })
}

/// The targets of one command as the docs write it (`make lint test`, `DATABASE_URL=... make migrate`,
/// `make bench-analytics RUNS=3`): the words after `make`, up to the first argument or comment.
fn targets_of_command(command: &str) -> Vec<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| *w == "make") else {
        return Vec::new();
    };
    if !words[..at].iter().all(|w| w.contains('=')) {
        return Vec::new();
    }
    words[at + 1..]
        .iter()
        .take_while(|w| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_%<>*".contains(c))
        })
        .map(|w| (*w).to_owned())
        .collect()
}

/// Every `make <target>` the README and the docs name: inline code that is a make command, and the commands
/// of code blocks (a line, or a part of one after ` · ` or ` / `).
fn named_make_targets() -> BTreeSet<(String, String)> {
    let mut named = BTreeSet::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let file = page
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut in_code = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let commands: Vec<&str> = if in_code {
                line.split(" · ")
                    .flat_map(|part| part.split(" / "))
                    .collect()
            } else {
                line.split('`').skip(1).step_by(2).collect()
            };
            for command in commands {
                for target in targets_of_command(command) {
                    named.insert((file.clone(), target));
                }
            }
        }
    }
    named
}

/// `make lint test` in the docs names two targets; everything named must exist, and every target (named or
/// not) has its place in scripts/check-make-targets.sh, which runs the cheap ones as a first command and reads
/// the dependencies of the rest.
#[test]
fn every_make_target_the_docs_name_exists_and_is_checked_as_a_first_command() {
    let targets = makefile_targets();
    assert!(
        targets.contains("demo") && targets.contains("trigger-%"),
        "{targets:?}"
    );
    let named = named_make_targets();
    assert!(
        named.iter().any(|(_, t)| t == "bench-analytics"),
        "{named:?}"
    );
    let missing: Vec<String> = named
        .iter()
        .filter(|(_, t)| !is_target(t, &targets))
        .map(|(file, t)| format!("{file}: make {t}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the docs name targets the Makefile does not have: {missing:?}"
    );

    let script =
        std::fs::read_to_string(repo().join("scripts/check-make-targets.sh")).expect("script");
    // Each line of `cheap` is one entry whose first word is the target; `not_run` is a list of words.
    let list = |name: &str, first_word_only: bool| -> BTreeSet<String> {
        let body = script
            .split(&format!("\n{name}=("))
            .nth(1)
            .and_then(|rest| rest.split("\n)").next())
            .unwrap_or_else(|| panic!("the script's {name} list"));
        body.lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| {
                let words = l.split_whitespace().map(|w| w.trim_matches('"').to_owned());
                if first_word_only {
                    words.take(1).collect::<Vec<_>>()
                } else {
                    words.collect()
                }
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (cheap, not_run) = (list("cheap", true), list("not_run", false));
    let checked = |target: &str| {
        let as_run = target.replace('%', "ping");
        cheap.contains(target) || cheap.contains(&as_run) || not_run.contains(target)
    };
    let unchecked: Vec<&String> = targets.iter().filter(|t| !checked(t)).collect();
    assert!(
        unchecked.is_empty(),
        "targets with no place in scripts/check-make-targets.sh (run it if cheap, list it in not_run if not): {unchecked:?}"
    );
    let unknown: Vec<&String> = cheap
        .iter()
        .chain(&not_run)
        .filter(|t| !is_target(t, &targets))
        .collect();
    assert!(
        unknown.is_empty(),
        "the script checks targets the Makefile does not have: {unknown:?}"
    );
}

/// A Rust block of the docs whose first line is `// <path>.rs` is an excerpt of that file: its other lines must
/// appear in the file as they are, one after another (docs/writing-a-task.md quotes its example task and
/// test this way, so the guide's code is code that compiles and runs).
#[test]
fn every_excerpt_in_the_docs_is_in_its_file() {
    let mut excerpts = 0;
    let mut stale = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let mut block: Option<Vec<&str>> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start().starts_with("```")) {
                (None, true) if line.trim_start() == "```rust" => block = Some(Vec::new()),
                (Some(lines), true) => {
                    if let Some(path) = lines
                        .first()
                        .and_then(|first| first.strip_prefix("// "))
                        .filter(|p| p.ends_with(".rs") && !p.contains(' '))
                    {
                        excerpts += 1;
                        let body = lines[1..].join("\n");
                        let source = std::fs::read_to_string(repo().join(path)).unwrap_or_default();
                        if body.trim().is_empty() || !source.contains(&body) {
                            stale.push(format!(
                                "{}: the excerpt of {path} starting {:?}",
                                page.display(),
                                lines.get(1).copied().unwrap_or_default()
                            ));
                        }
                    }
                    block = None;
                }
                (Some(lines), false) => lines.push(line),
                _ => {}
            }
        }
    }
    assert!(
        excerpts >= 8,
        "the writing-a-task guide's excerpts are found ({excerpts})"
    );
    assert!(
        stale.is_empty(),
        "excerpts that are no longer in their files (copy them again):\n{}",
        stale.join("\n")
    );
}

/// Source comments point readers at docs pages (`see docs/operating.md#schedules`): each named page exists,
/// and so does the heading a fragment names.
#[test]
fn every_docs_page_the_sources_name_exists() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut sources = Vec::new();
    for dir in ["shared", "tools", "functions", "tests", "bench"] {
        walk(&repo().join(dir), &mut sources);
    }
    let mut named = 0;
    let mut dead = Vec::new();
    for source in sources {
        let text = std::fs::read_to_string(&source).expect("source");
        for (at, _) in text.match_indices("docs/") {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-#".contains(c)))
                .unwrap_or(rest.len());
            let reference = rest[..end].trim_end_matches('.');
            let (page, fragment) = reference.split_once('#').unwrap_or((reference, ""));
            if !page.ends_with(".md") {
                continue;
            }
            named += 1;
            let Ok(target) = std::fs::read_to_string(repo().join(page)) else {
                dead.push(format!("{}: {reference} (no such page)", source.display()));
                continue;
            };
            if !fragment.is_empty() && !anchors(&target).contains(fragment) {
                dead.push(format!(
                    "{}: {reference} (no such heading)",
                    source.display()
                ));
            }
        }
    }
    assert!(named >= 10, "the sources' references are found ({named})");
    assert!(
        dead.is_empty(),
        "sources point at docs that are not there:\n{}",
        dead.join("\n")
    );
}
