//! The tasks, one file each. To add one, write `tasks/<name>.rs` with a type implementing
//! [`Task`](crate::registry::Task) and add one line below (see the README's "Adding a task").

use crate::registry::TaskSpec;

macro_rules! tasks {
    ($($module:ident :: $task:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every task of this build, for [`Registry::builtin`](crate::registry::Registry::builtin).
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
}
