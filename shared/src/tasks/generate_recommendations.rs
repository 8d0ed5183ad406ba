//! `generate_recommendations`: buy, sell or hold for each printing, with a confidence and a one-sentence
//! rationale, judged on the printing's main retail series (US dollars and non-foil first, then the series with
//! the most history) and the signals of its last seven days.
//!
//! The rules, strongest first:
//! - a buylist pays more than the cheapest retail price: **sell** to that buylist;
//! - a spike: **sell** into it;
//! - a breakout above the prior 30-day high: **buy** the momentum;
//! - a drop: **buy** the dip (with less confidence than a breakout);
//! - otherwise **hold**, more confidently the flatter the last week was.
//!
//! Set-based over the printings whose metrics or signals changed since the previous run; a recommendation
//! is rewritten only when its action, confidence or rationale changes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analytics::{self, Watermark};
use crate::context::TaskContext;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{Idempotency, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct GenerateRecommendations;

const WATERMARK: &str = "generate_recommendations";

#[derive(Debug, Clone, Default, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct GenerateRecommendationsArgs {
    /// Judge every printing, not only those whose metrics or signals changed.
    #[serde(default)]
    #[garde(skip)]
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationsReport {
    pub full: bool,
    pub since: Option<DateTime<Utc>>,
    /// Printings judged.
    pub considered: u64,
    /// Recommendations written (new or changed), by action.
    pub buy: u64,
    pub sell: u64,
    pub hold: u64,
}

impl RecommendationsReport {
    pub fn changed(&self) -> u64 {
        self.buy + self.sell + self.hold
    }
}

impl TaskReport for RecommendationsReport {
    fn counts(&self) -> Counts {
        Counts::new(self.considered, 0)
    }
}

/// Judges every printing touched since `$2` (all when `$1`) and upserts what changed; returns how many were
/// judged and how many of each action were written.
const JUDGE: &str = r#"
WITH touched AS (
    SELECT scryfall_id FROM price_metrics WHERE $1 OR computed_at > $2
    UNION
    SELECT scryfall_id FROM price_signals WHERE $1 OR detected_at > $2
),
main AS (
    -- The columns judged, not m.*: the stored window would ride through the sort for nothing.
    SELECT DISTINCT ON (m.scryfall_id) m.scryfall_id, m.source, m.price_type, m.finish, m.currency,
        m.latest_day, m.latest_price, m.change_7d_pct, m.change_30d_pct, m.ma_30d, m.volatility_30d,
        m.high_30d, m.low_30d, m.points
    FROM price_metrics m JOIN touched t USING (scryfall_id)
    WHERE m.price_type = 'retail'
    ORDER BY m.scryfall_id, (m.currency = 'USD') DESC, (m.finish = 'nonfoil') DESC, m.points DESC, m.source
),
signals AS (
    -- The strongest signal of each kind in the main series' last seven days; arbitrage on any of the
    -- printing's buylists. Aggregated weakest first, so the strongest of a kind is the one kept.
    SELECT m.scryfall_id,
           max(s.strength) FILTER (WHERE s.kind = 'spike') AS spike,
           max(s.strength) FILTER (WHERE s.kind = 'drop') AS dip,
           max(s.strength) FILTER (WHERE s.kind = 'breakout') AS breakout,
           max(s.strength) FILTER (WHERE s.kind = 'buylist_arbitrage') AS arbitrage,
           jsonb_object_agg(s.kind, s.details || jsonb_build_object('strength', s.strength, 'day', s.day,
                            'source', s.source, 'finish', s.finish, 'currency', s.currency)
                            ORDER BY s.strength) AS details
    FROM main m JOIN price_signals s ON s.scryfall_id = m.scryfall_id
     AND s.day > m.latest_day - 7 AND s.day <= m.latest_day
     AND (s.kind = 'buylist_arbitrage' OR (s.source, s.price_type, s.finish, s.currency)
                                          = (m.source, m.price_type, m.finish, m.currency))
    GROUP BY 1
),
judged AS (
    SELECT m.*, g.spike, g.dip, g.breakout, g.arbitrage, g.details AS signal_details,
           round(m.latest_price, 2) || ' ' || m.currency AS price_text,
           CASE WHEN g.arbitrage IS NOT NULL THEN 'sell'
                WHEN g.spike IS NOT NULL THEN 'sell'
                WHEN g.breakout IS NOT NULL THEN 'buy'
                WHEN g.dip IS NOT NULL THEN 'buy'
                ELSE 'hold' END AS action
    FROM main m LEFT JOIN signals g USING (scryfall_id)
),
decided AS (
    SELECT j.scryfall_id, j.action, j.source, j.finish, j.currency, j.latest_day,
        round(CASE
            WHEN j.arbitrage IS NOT NULL THEN least(0.95, 0.6 + j.arbitrage)
            WHEN j.spike IS NOT NULL THEN least(0.9, 0.5 + 0.1 * j.spike)
            WHEN j.breakout IS NOT NULL THEN 0.5 + least(0.35, 2 * j.breakout)
            WHEN j.dip IS NOT NULL THEN least(0.8, 0.4 + 0.1 * j.dip)
            WHEN j.change_7d_pct IS NULL THEN 0.3
            ELSE 0.5 + 0.4 * (1 - least(1, abs(j.change_7d_pct) / 20))
        END, 3) AS confidence,
        CASE
            WHEN j.arbitrage IS NOT NULL THEN format(
                'Sell to %s''s buylist at %s %s (%s), %s%% over the cheapest retail price (%s at %s).',
                j.signal_details->'buylist_arbitrage'->>'buylist_source',
                round((j.signal_details->'buylist_arbitrage'->>'buylist_price')::numeric, 2),
                j.signal_details->'buylist_arbitrage'->>'currency',
                j.signal_details->'buylist_arbitrage'->>'finish',
                round(j.arbitrage * 100, 1),
                round((j.signal_details->'buylist_arbitrage'->>'retail_price')::numeric, 2),
                j.signal_details->'buylist_arbitrage'->>'retail_source')
            WHEN j.spike IS NOT NULL THEN format(
                'Sell into the spike: up %s%% in 7 days to %s, against a 30-day average of %s.',
                round(j.change_7d_pct, 1), j.price_text, round(j.ma_30d, 2))
            WHEN j.breakout IS NOT NULL THEN format(
                'Buy the breakout: at %s it is above every price of the previous 30 days (high %s).',
                j.price_text, round((j.signal_details->'breakout'->>'prior_30d_high')::numeric, 2))
            WHEN j.dip IS NOT NULL THEN format(
                'Buy the dip: down %s%% in 7 days to %s, under its 30-day average of %s.',
                round(abs(j.change_7d_pct), 1), j.price_text, round(j.ma_30d, 2))
            WHEN j.change_7d_pct IS NULL THEN format(
                'Hold: %s, too little history for a trend.', j.price_text)
            ELSE format('Hold: %s, %s%% over 7 days and no signal.', j.price_text,
                CASE WHEN j.change_7d_pct >= 0 THEN '+' ELSE '' END || round(j.change_7d_pct, 1))
        END AS rationale,
        jsonb_build_object('latest_price', j.latest_price, 'change_7d_pct', j.change_7d_pct,
            'change_30d_pct', j.change_30d_pct, 'ma_30d', j.ma_30d, 'volatility_30d', j.volatility_30d,
            'high_30d', j.high_30d, 'low_30d', j.low_30d, 'points', j.points,
            'signals', coalesce(j.signal_details, '{}'::jsonb)) AS basis
    FROM judged j
),
written AS (
    INSERT INTO price_recommendations (scryfall_id, action, confidence, rationale, source, finish, currency, day, basis)
    SELECT scryfall_id, action, confidence, rationale, source, finish, currency, latest_day, basis FROM decided
    ON CONFLICT (scryfall_id) DO UPDATE SET
        action = EXCLUDED.action, confidence = EXCLUDED.confidence, rationale = EXCLUDED.rationale,
        source = EXCLUDED.source, finish = EXCLUDED.finish, currency = EXCLUDED.currency, day = EXCLUDED.day,
        basis = EXCLUDED.basis, updated_at = now()
    WHERE (price_recommendations.action, price_recommendations.confidence, price_recommendations.rationale)
          IS DISTINCT FROM (EXCLUDED.action, EXCLUDED.confidence, EXCLUDED.rationale)
    RETURNING action
)
SELECT (SELECT count(*) FROM decided),
       count(*) FILTER (WHERE action = 'buy'),
       count(*) FILTER (WHERE action = 'sell'),
       count(*) FILTER (WHERE action = 'hold')
FROM written
"#;

impl Task for GenerateRecommendations {
    const NAME: &'static str = "generate_recommendations";
    const QUEUE: Queue = Queue::Analytics;
    const RETRY: RetryPolicy = analytics::RETRY;
    const SINGLE_INSTANCE: Option<SingleInstance> = analytics::ONE_AT_A_TIME;
    /// Signal passes enqueue one run each (`recommendations:<signals run>`): a repeat is answered from the first.
    const IDEMPOTENCY: Option<Idempotency> = analytics::ONCE_PER_ID;
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "incremental",
        expression: "cron(30 1/4 * * ? *)",
        kwargs: "{}",
        enabled: true,
        why: "Forty minutes after each scheduled metrics run, for metrics or signals written outside a chain; a run \
              with nothing new costs two index scans.",
    }];
    type Args = GenerateRecommendationsArgs;
    type Report = RecommendationsReport;

    async fn run(
        args: GenerateRecommendationsArgs,
        ctx: TaskContext,
    ) -> Result<RecommendationsReport, TaskError> {
        let mut tx = analytics::begin(ctx.db()).await?;
        let mark = Watermark::read(&mut tx, WATERMARK).await?;
        let full = args.full || mark.since.is_none();
        let since = mark.since.unwrap_or(DateTime::UNIX_EPOCH);
        let (considered, buy, sell, hold): (i64, i64, i64, i64) = sqlx::query_as(JUDGE)
            .bind(full)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?;
        mark.advance(&mut tx).await?;
        tx.commit().await?;
        Ok(RecommendationsReport {
            full,
            since: (!full).then_some(since),
            considered: considered as u64,
            buy: buy as u64,
            sell: sell as u64,
            hold: hold as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    #[test]
    fn arguments() {
        let spec = TaskSpec::of::<GenerateRecommendations>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"full": true})).is_ok());
        assert!(check(json!({"full": "yes"})).is_err());
        assert!(check(json!({"min_confidence": 0.5})).is_err());
    }
}
