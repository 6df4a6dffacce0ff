//! Summaries of samples: min, percentiles, max, mean. Pure functions, no
//! I/O, so the numbers every benchmark reports are computed one way.
//!
//! Percentiles interpolate linearly between the two nearest ranks (the
//! "linear" method of NumPy and R's type 7): the median of an even number
//! of samples is the mean of the middle two, and p0/p100 are min/max.

use serde::Serialize;

/// What a set of samples looked like. All values in the samples' unit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for no samples (or any NaN among them: nothing sensible to
    /// report).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let sorted = sorted(samples)?;
        let n = sorted.len();
        Some(Summary {
            n,
            min: sorted[0],
            p50: percentile_sorted(&sorted, 50.0),
            p90: percentile_sorted(&sorted, 90.0),
            p99: percentile_sorted(&sorted, 99.0),
            max: sorted[n - 1],
            // n ≤ 2^53 in any benchmark, so the cast is exact.
            mean: sorted.iter().sum::<f64>() / n as f64,
        })
    }
}

fn sorted(samples: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v)
}

/// The `p`-th percentile (0 ≤ p ≤ 100, clamped) of `samples`, or `None` if
/// there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    sorted(samples).map(|s| percentile_sorted(&s, p))
}

/// The median of `samples`, or `None` if there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// `sorted` is non-empty and ascending.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let p = if p.is_nan() {
        50.0
    } else {
        p.clamp(0.0, 100.0)
    };
    let last = sorted.len() - 1;
    // Rank in [0, last]; the casts are of small, non-negative numbers.
    let rank = p / 100.0 * last as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// `candidate / baseline`, or `None` when the baseline is zero or either
/// is missing.
pub fn ratio(candidate: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (candidate, baseline) {
        (Some(c), Some(b)) if b != 0.0 => Some(c / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&xs, 100.0), Some(10.0));
        // rank 0.9 * 9 = 8.1: between 9 and 10.
        let p90 = percentile(&xs, 90.0).unwrap();
        assert!((p90 - 9.1).abs() < 1e-9, "{p90}");
        // Out-of-range p is clamped rather than indexing out of bounds.
        assert_eq!(percentile(&xs, 150.0), Some(10.0));
        assert_eq!(percentile(&xs, -5.0), Some(1.0));
    }

    #[test]
    fn summary_is_order_independent_and_refuses_nan() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.min, s.p50, s.max, s.mean), (5, 1.0, 3.0, 5.0, 3.0));
        assert!(s.p90 <= s.p99 && s.p99 <= s.max);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn percentiles_are_ordered_and_within_the_samples(
            xs in proptest::collection::vec(-1e6f64..1e6, 1..200),
            p in 0.0f64..100.0,
            q in 0.0f64..100.0,
        ) {
            let s = Summary::of(&xs).unwrap();
            proptest::prop_assert!(s.min <= s.p50 && s.p50 <= s.p90);
            proptest::prop_assert!(s.p90 <= s.p99 && s.p99 <= s.max);
            // The mean is a rounded sum: allow a little slack.
            let slack = 1e-9 * s.max.abs().max(s.min.abs()).max(1.0);
            proptest::prop_assert!(s.min - slack <= s.mean && s.mean <= s.max + slack);
            let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
            proptest::prop_assert!(percentile(&xs, lo).unwrap() <= percentile(&xs, hi).unwrap());
        }
    }

    #[test]
    fn ratio_needs_a_nonzero_baseline() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
