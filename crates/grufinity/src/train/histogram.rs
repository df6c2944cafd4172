//! Value histograms for TensorBoard: the raw form its `add_histogram_raw` takes (min, max,
//! count, sum, sum of squares, bucket right edges and counts).

use serde::Serialize;

/// Buckets per histogram.
pub const BUCKETS: usize = 32;

/// The distribution of one tensor's values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// `weights/blocks.0.mingru.to_hz.weight`, `gates/z/block.0`, ...
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub num: u64,
    pub sum: f64,
    pub sum_squares: f64,
    /// Right edge of each bucket (the last one is `max`).
    pub bucket_limits: Vec<f64>,
    pub bucket_counts: Vec<u64>,
}

impl Histogram {
    /// The histogram of the finite values of `values` in [`BUCKETS`] equal-width buckets
    /// between their minimum and maximum.
    pub fn of(name: impl Into<String>, values: &[f32]) -> Self {
        let finite = || values.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
        let (min, max) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (min, max) = if min <= max { (min, max) } else { (0.0, 0.0) };
        let width = (max - min) / BUCKETS as f64;
        let mut counts = vec![0u64; BUCKETS];
        let (mut num, mut sum, mut sum_squares) = (0u64, 0.0, 0.0);
        for v in finite() {
            let i = if width > 0.0 { (((v - min) / width) as usize).min(BUCKETS - 1) } else { BUCKETS - 1 };
            counts[i] += 1;
            num += 1;
            sum += v;
            sum_squares += v * v;
        }
        let limits = (1..=BUCKETS).map(|i| if i == BUCKETS { max } else { min + width * i as f64 }).collect();
        Self { name: name.into(), min, max, num, sum, sum_squares, bucket_limits: limits, bucket_counts: counts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_finite_value_once() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).chain([f32::NAN, f32::INFINITY]).collect();
        let h = Histogram::of("x", &values);
        assert_eq!(h.num, 1000);
        assert_eq!(h.bucket_counts.iter().sum::<u64>(), 1000);
        assert_eq!((h.min, h.max), (0.0, 1.0));
        assert_eq!(*h.bucket_limits.last().unwrap(), 1.0);
        assert!((h.sum - 500.0).abs() < 1e-3);
        let flat = Histogram::of("c", &[2.0; 5]);
        assert_eq!((flat.num, flat.bucket_counts[BUCKETS - 1]), (5, 5));
    }
}
