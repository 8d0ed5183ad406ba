//! Logging: JSON lines in the shape of Lambda's JSON log format (`timestamp`, `level`, `message`, plus the
//! fields of the current spans: request id, queue, task, message id, attempt).

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Installs the global subscriber once. The level comes from `AWS_LAMBDA_LOG_LEVEL` (set by Lambda's
/// advanced logging controls), else `RUST_LOG`, else `info`.
pub fn init() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|level| EnvFilter::new(level.to_lowercase()))
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_file(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .try_init();
}

/// Logs progress of long work at most every 10% (and at the end), as structured fields.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    next_report: u64,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Self {
        Progress {
            what,
            total,
            next_report: 0,
        }
    }

    /// Records that `processed` items are done; logs (and returns true) when another tenth is complete.
    pub fn update(&mut self, processed: u64) -> bool {
        if processed < self.next_report && processed < self.total {
            return false;
        }
        let percent = if self.total == 0 {
            100.0
        } else {
            (processed as f64 * 100.0 / self.total as f64).min(100.0)
        };
        tracing::info!(
            what = self.what,
            processed,
            total = self.total,
            percent,
            "progress"
        );
        let step = (self.total / 10).max(1);
        self.next_report = (processed / step + 1) * step;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_logs_every_tenth_and_at_the_end() {
        let mut p = Progress::new("cards", 1000);
        let logged: Vec<u64> = (0..=1000).filter(|&n| p.update(n)).collect();
        assert_eq!(
            logged,
            vec![0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
        );
    }

    #[test]
    fn progress_with_uneven_jumps_and_tiny_totals() {
        let mut p = Progress::new("rows", 3);
        let logged: Vec<u64> = [0, 1, 2, 3].into_iter().filter(|&n| p.update(n)).collect();
        assert_eq!(logged, vec![0, 1, 2, 3]);
        let mut p = Progress::new("rows", 100);
        assert!(p.update(0));
        assert!(p.update(55));
        assert!(!p.update(59));
        assert!(p.update(60));
    }
}
