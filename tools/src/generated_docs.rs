//! The lists in the docs that follow the registry, generated like the template's blocks: `make template`
//! rewrites them, `make template-check` and a unit test fail when one drifts. Today that is the schedules
//! table of docs/operating.md; the task list itself is printed by `dualcaster tasks` and named nowhere else.
//!
//! A block sits between `<!-- BEGIN GENERATED: <name> (make template) -->` and
//! `<!-- END GENERATED: <name> -->`; everything outside the markers is left as written.

use std::fmt::Write as _;

use dualcaster::registry::Registry;

use crate::marked_block;

/// A generated block of a docs page: its name in the markers and what generates it.
struct DocBlock {
    name: &'static str,
    generate: fn(&Registry) -> String,
}

/// The generated blocks of docs/operating.md.
const OPERATING: &[DocBlock] = &[DocBlock {
    name: "schedules",
    generate: schedules_table,
}];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocsDriftError {
    #[error("the page has no `{0}` line")]
    MissingMarker(String),
    #[error(
        "the {block} table of the docs differs from the registry: run `make template` (first difference at \
         generated line {line}: the page has {found:?}, the registry gives {expected:?})"
    )]
    Drift {
        block: &'static str,
        line: usize,
        found: String,
        expected: String,
    },
}

fn begin(name: &str) -> String {
    format!("<!-- BEGIN GENERATED: {name} (make template) -->")
}

fn end(name: &str) -> String {
    format!("<!-- END GENERATED: {name} -->")
}

/// A table cell: a `|` would end the cell, a line break the row.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Every schedule of the registry, in the task list's order: its rule, queue, expression, kwargs and why.
pub fn schedules_table(registry: &Registry) -> String {
    let mut out =
        String::from("| rule | queue | expression | kwargs | why |\n|---|---|---|---|---|\n");
    for (spec, schedule) in registry.schedules() {
        let state = if schedule.enabled { "" } else { " (disabled)" };
        let _ = writeln!(
            out,
            "| `{}`{state} | {} | `{}` | `{}` | {} |",
            schedule.rule_name(spec.name),
            spec.queue.as_str(),
            schedule.expression,
            cell(schedule.kwargs),
            cell(schedule.why),
        );
    }
    out
}

/// docs/operating.md with its generated blocks rewritten from the registry.
pub fn sync_operating(page: &str, registry: &Registry) -> Result<String, DocsDriftError> {
    let mut text = page.to_owned();
    for block in OPERATING {
        text = marked_block::rewrite(
            &text,
            &begin(block.name),
            &end(block.name),
            &(block.generate)(registry),
        )
        .map_err(DocsDriftError::MissingMarker)?;
    }
    Ok(text)
}

/// Fails when a generated block of docs/operating.md is not exactly what the registry generates.
pub fn check_operating(page: &str, registry: &Registry) -> Result<(), DocsDriftError> {
    for block in OPERATING {
        let (body, stop) = marked_block::bounds(page, &begin(block.name), &end(block.name))
            .map_err(DocsDriftError::MissingMarker)?;
        let expected = (block.generate)(registry);
        if let Some((line, found, expected)) =
            marked_block::first_difference(&page[body..stop], &expected)
        {
            return Err(DocsDriftError::Drift {
                block: block.name,
                line,
                found,
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualcaster::registry::{Schedule, TaskSpec};

    fn operating() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operating.md");
        std::fs::read_to_string(path).expect("docs/operating.md")
    }

    #[test]
    fn the_operating_page_lists_exactly_the_registered_schedules() {
        check_operating(&operating(), &dualcaster::tasks::registry()).unwrap();
    }

    /// A schedule the built-in list does not have, on a task of its own: the page must name it.
    const TIDY_UP: &[Schedule] = &[Schedule {
        name: "nightly",
        expression: "cron(0 4 * * ? *)",
        kwargs: "{}",
        enabled: false,
        why: "Tidies | up\n   at night.",
    }];

    #[test]
    fn a_new_schedule_missing_from_the_page_is_drift_and_sync_adds_it() {
        let mut spec = TaskSpec::of::<dualcaster::tasks::noop::Noop>();
        spec.name = "tidy_up";
        spec.schedules = TIDY_UP;
        let registry = dualcaster::tasks::registry().with(spec).unwrap();
        let page = operating();
        let err = check_operating(&page, &registry).unwrap_err();
        assert!(
            matches!(&err, DocsDriftError::Drift { found, expected, .. }
                if found == "(end of block)" && expected.contains("`tidy_up-nightly` (disabled)")),
            "{err}"
        );
        assert!(err.to_string().contains("run `make template`"), "{err}");
        let synced = sync_operating(&page, &registry).unwrap();
        check_operating(&synced, &registry).unwrap();
        assert!(synced.contains(
            "| `tidy_up-nightly` (disabled) | default | `cron(0 4 * * ? *)` | `{}` | Tidies \\| up at night. |\n"
        ));
        // Only the block changed: the page before and after it is as written.
        let (before, after) = page.split_once(&begin("schedules")).unwrap();
        assert!(synced.starts_with(before));
        let tail = after.split_once(&end("schedules")).unwrap().1;
        assert!(synced.ends_with(tail));
    }

    #[test]
    fn a_page_without_the_markers_is_refused() {
        let err = check_operating("# Operating it\n", &dualcaster::tasks::registry()).unwrap_err();
        assert_eq!(
            err,
            DocsDriftError::MissingMarker(begin("schedules")),
            "{err}"
        );
    }
}
