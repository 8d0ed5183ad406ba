//! Summaries of benchmark samples.

/// The `q` quantile (nearest rank) of `samples`, which it sorts; NaN when there are none, so an empty run
/// prints `NaN` rather than stopping the benchmark.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_on_hand_computed_samples() {
        let mut samples = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut samples, 0.5), 3.0);
        assert_eq!(percentile(&mut samples, 0.0), 1.0);
        assert_eq!(percentile(&mut samples, 1.0), 5.0);
        // (5 - 1) * 0.95 = 3.8, nearest rank 4: the fifth value.
        assert_eq!(percentile(&mut samples, 0.95), 5.0);
        let mut hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        // (100 - 1) * 0.99 = 98.01 -> index 98: the value 99.
        assert_eq!(percentile(&mut hundred, 0.99), 99.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
