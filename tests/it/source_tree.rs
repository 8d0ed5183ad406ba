//! Every Rust source file of the repository is one `cargo fmt` formats, and is formatted. rustfmt only follows
//! `mod` declarations it can see: a module declared inside a macro invocation (as the task list once did) is
//! silently left out of `cargo fmt --all --check`, so `make lint` would pass a file that `rustfmt` rejects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// Every `.rs` file under `dir`, leaving out build output, local installs and fuzzing artifacts.
fn rust_files(dir: &Path, found: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !(name.starts_with('.')
                || matches!(name.as_ref(), "target" | "corpus" | "artifacts"))
            {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.insert(path.canonicalize().expect("a file"));
        }
    }
}

/// Runs `cargo fmt -- --check -v` for one manifest: the files it formatted, and its output when a file is
/// not formatted.
fn cargo_fmt_check(manifest: &Path) -> (BTreeSet<PathBuf>, Option<String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["fmt", "--all", "--manifest-path"])
        .arg(manifest)
        .args(["--", "--check", "--verbose", "--color", "never"])
        .output()
        .expect("cargo fmt runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reached = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Formatting "))
        .filter_map(|p| Path::new(p.trim()).canonicalize().ok())
        .collect();
    let failure = (!out.status.success()).then(|| {
        let diffs: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.starts_with("Formatting ") && !l.starts_with("Spent "))
            .collect();
        format!(
            "{}\n{}",
            diffs.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (reached, failure)
}

#[test]
fn every_rust_file_is_reached_by_cargo_fmt_and_formatted() {
    let root = repo();
    let mut files = BTreeSet::new();
    rust_files(&root, &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("shared/src/tasks/ping.rs")),
        "the walk finds the task files"
    );
    let mut reached = BTreeSet::new();
    let mut failures = Vec::new();
    // The fuzz targets are a workspace of their own (they build with nightly), formatted like the rest.
    for manifest in [root.join("Cargo.toml"), root.join("fuzz/Cargo.toml")] {
        let (files, failure) = cargo_fmt_check(&manifest);
        reached.extend(files);
        failures.extend(failure);
    }
    let escaped: Vec<String> = files
        .difference(&reached)
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        escaped.is_empty(),
        "cargo fmt never formats or checks these files (a `mod` inside a macro? declare it where rustfmt \
         sees it): {escaped:?}"
    );
    assert!(
        failures.is_empty(),
        "not formatted: run `make fmt`\n{}",
        failures.join("\n")
    );
}
