//! Choosing the next token from logits: greedy, or temperature with top-k / top-p, seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{FocusError, Result};

/// How the next token is chosen. `temperature == 0` is greedy (argmax, first index on ties).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (`None`: all).
    pub top_p: Option<f32>,
    /// Seed of the random generator (same seed, same tokens).
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    /// Sampling at `temperature` with an optional top-p, seeded.
    pub fn sampled(temperature: f32, top_p: Option<f32>, seed: u64) -> Self {
        Self {
            temperature,
            top_k: None,
            top_p,
            seed,
        }
    }
}

/// A stateful sampler (it owns the random generator).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// Builds a sampler; rejects negative or non-finite temperatures and `top_p` outside `(0, 1]`.
    pub fn new(config: SamplingConfig) -> Result<Self> {
        if !config.temperature.is_finite() || config.temperature < 0.0 {
            return Err(FocusError::InvalidConfig {
                field: "temperature",
                reason: format!("must be finite and >= 0, got {}", config.temperature),
            });
        }
        if let Some(p) = config.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(FocusError::InvalidConfig {
                field: "top_p",
                reason: format!("must be in (0, 1], got {p}"),
            });
        }
        if config.top_k == Some(0) {
            return Err(FocusError::InvalidConfig {
                field: "top_k",
                reason: "must be at least 1".into(),
            });
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self { config, rng })
    }

    /// Chooses a token id from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if self.config.temperature == 0.0 {
            return argmax(logits);
        }
        let mut ranked: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .collect();
        if ranked.is_empty() {
            return Err(FocusError::Sampling("no finite logits".into()));
        }
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.config.top_k {
            ranked.truncate(k);
        }
        let t = self.config.temperature as f64;
        let max = ranked[0].1 as f64;
        let mut probs: Vec<f64> = ranked
            .iter()
            .map(|&(_, l)| ((l as f64 - max) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            if draw < *p {
                return Ok(ranked[i].0 as u32);
            }
            draw -= p;
        }
        Ok(ranked[probs.len() - 1].0 as u32)
    }
}

/// Index of the largest logit (the first one on ties); NaNs are ignored.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or_else(|| FocusError::Sampling("no finite logits".into()))
}

/// Negative log-likelihood of `target` under `logits` (log-softmax in f64).
pub fn nll(logits: &[f32], target: u32) -> Result<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let logit = logits
        .get(target as usize)
        .ok_or(FocusError::TokenOutOfVocab {
            id: target,
            position: 0,
            vocab: logits.len(),
        })?;
    Ok(log_sum - *logit as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert!(argmax(&[]).is_err());
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits = [0.0, 5.0, 4.9, -3.0];
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..50).map(|_| s.sample(&logits).unwrap()).collect()
        };
        let mut s = Sampler::new(cfg).unwrap();
        let b: Vec<u32> = (0..50).map(|_| s.sample(&logits).unwrap()).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t == 1 || t == 2));
        assert!(a.contains(&1) && a.contains(&2));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(SamplingConfig::sampled(1.0, Some(1e-6), 3)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0]).unwrap(), 1);
        }
    }

    #[test]
    fn bad_sampling_configs_are_rejected() {
        assert!(Sampler::new(SamplingConfig::sampled(-1.0, None, 0)).is_err());
        assert!(Sampler::new(SamplingConfig::sampled(1.0, Some(1.5), 0)).is_err());
    }

    #[test]
    fn nll_is_log_softmax() {
        let v = nll(&[0.0, 0.0], 1).unwrap();
        assert!((v - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
