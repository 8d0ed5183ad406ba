//! The tasks, one file each. To add one, write `tasks/<name>.rs` with a type implementing
//! [`Task`](crate::registry::Task), declare its module below and add its line to the `tasks!` list (see
//! docs/writing-a-task.md). The modules are declared here, outside the macro, so that `cargo fmt` reaches
//! every task file (rustfmt does not look inside macro invocations); a module without its line in the list
//! fails `every_task_file_is_registered_under_its_own_name`, a line without its module does not compile.

use crate::registry::{Registry, TaskSpec};

pub mod compute_price_metrics;
pub mod detect_price_signals;
pub mod dlq_purge;
pub mod dlq_redrive;
pub mod dlq_report;
pub mod generate_recommendations;
pub mod ingest_mtgjson_prices;
pub mod ingest_scryfall_bulk;
pub mod leases;
pub mod noop;
pub mod ping;
pub mod prune_price_history;
pub mod prune_task_runs;

macro_rules! tasks {
    ($($module:ident :: $task:ident),* $(,)?) => {
        /// Every task of this build, in the order of the list.
        pub fn all() -> Vec<TaskSpec> {
            vec![$(TaskSpec::of::<$module::$task>()),*]
        }
    };
}

tasks! {
    ping::Ping,
    noop::Noop,
    dlq_report::DlqReport,
    dlq_redrive::DlqRedrive,
    dlq_purge::DlqPurge,
    leases::Leases,
    ingest_scryfall_bulk::IngestScryfallBulk,
    ingest_mtgjson_prices::IngestMtgjsonPrices,
    compute_price_metrics::ComputePriceMetrics,
    detect_price_signals::DetectPriceSignals,
    generate_recommendations::GenerateRecommendations,
    prune_price_history::PrunePriceHistory,
    prune_task_runs::PruneTaskRuns,
}

/// Every task of this build: the registry each function runs.
pub fn registry() -> Registry {
    // The list is checked by a unit test, so this cannot fail in a tested build.
    Registry::from_specs(all()).unwrap_or_else(|e| panic!("the task list: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queue;

    #[test]
    fn builtin_registry_is_valid_and_routes() {
        let r = registry();
        assert_eq!(r.route("ping").unwrap(), Queue::Default);
        assert_eq!(r.route("dlq_report").unwrap(), Queue::Default);
        assert_eq!(r.route("ingest_scryfall_bulk").unwrap(), Queue::Ingestion);
        assert_eq!(r.route("compute_price_metrics").unwrap(), Queue::Analytics);
    }

    /// A task file whose line in `tasks/mod.rs` is missing is never compiled, so nothing else would notice.
    #[test]
    fn every_builtin_schedule_is_valid() {
        let r = registry();
        r.validate_schedules().unwrap();
        assert!(r.schedules().count() >= 2);
    }

    #[test]
    fn every_task_file_is_registered_under_its_own_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tasks");
        let files: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "rs"))
            .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
            .filter(|stem| stem != "mod")
            .collect();
        let registered: std::collections::BTreeSet<String> =
            registry().iter().map(|spec| spec.name.to_owned()).collect();
        assert_eq!(
            registered, files,
            "every src/tasks/<name>.rs needs its line in the tasks! list of src/tasks/mod.rs, and its NAME must be <name>"
        );
    }

    /// `cargo test -p dualcaster-shared` alone catches a schedule changed without `make template`: the
    /// template's generated block holds exactly the task list's rules, expressions and states. (The
    /// byte-for-byte comparison is `dualcaster template check`, which the tools' and integration tests run.)
    #[test]
    fn the_template_carries_every_schedule_of_the_task_list() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let block = text
            .split("# BEGIN GENERATED")
            .nth(1)
            .and_then(|rest| rest.split("# END GENERATED").next())
            .expect("the template's generated block");
        let mut found = std::collections::BTreeSet::new();
        let mut rule: Option<(String, String)> = None;
        for line in block.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("Name: !Sub \"${AWS::StackName}-") {
                rule = Some((name.trim_end_matches('"').to_owned(), String::new()));
            } else if let Some(expression) = line.strip_prefix("ScheduleExpression: ") {
                if let Some((_, e)) = rule.as_mut() {
                    *e = expression.trim_matches('\'').to_owned();
                }
            } else if let Some(state) = line.strip_prefix("State: ") {
                if let Some((name, expression)) = rule.take() {
                    found.insert((name, expression, state == "ENABLED"));
                }
            }
        }
        let expected: std::collections::BTreeSet<(String, String, bool)> = registry()
            .schedules()
            .map(|(spec, s)| (s.rule_name(spec.name), s.expression.to_owned(), s.enabled))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(
            found, expected,
            "infra/template.yaml's schedules differ from the task list: run `make template`"
        );
    }
}
