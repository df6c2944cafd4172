//! The crate's own seedable random numbers (SplitMix64).
//!
//! Burn's backends keep one random generator per process, shared by every model and thread;
//! what depends on a seed (initial weights, sampling, stream offsets) draws from here instead,
//! so a seed gives the same numbers whatever else runs in the process and on every backend.

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, fast, seedable random generator (SplitMix64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(1);
        (splitmix(self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller; one of the pair is used, keeping the position simple).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform(); // (0, 1]: ln stays finite
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// The generator's position, to save it.
    pub fn position(&self) -> u64 {
        self.0
    }

    /// A generator at a saved [`position`](Self::position).
    pub fn at_position(position: u64) -> Self {
        Self(position)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut rng = Rng::new(3);
        let xs: Vec<f64> = (0..200_000).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean}, var {var}");
    }
}
