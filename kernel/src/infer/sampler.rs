//! Picks the next token from logits: greedy, or temperature with top-k and top-p, after a
//! repetition penalty; seeded, so a run repeats exactly.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::matmul::softmax;
use crate::rand::SplitMix64;

/// How to sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (arg-max); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 keeps all).
    pub top_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already seen; 1.0 is off.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub penalty_window: usize,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, penalty_window: 64, seed: 0 }
    }
}

/// A seeded sampler. Its scratch (one candidate per vocabulary entry) is the caller's, so a
/// batch of sequences shares one (see [`super::State::sample`]).
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    random: SplitMix64,
}

impl Sampler {
    /// A sampler.
    pub fn new(config: SamplerConfig) -> Self {
        Self { config, random: SplitMix64::new(config.seed) }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Chooses a token from `logits` (modified in place), given the tokens so far, using
    /// `candidates` as scratch (it grows to the vocabulary once, when its capacity is less).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], candidates: &mut Vec<(u32, f32)>) -> u32 {
        let config = self.config;
        if config.repetition_penalty != 1.0 && config.repetition_penalty > 0.0 {
            let recent = &history[history.len().saturating_sub(config.penalty_window)..];
            for (index, &token) in recent.iter().enumerate() {
                // Penalise each distinct token once.
                if recent[..index].contains(&token) {
                    continue;
                }
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = if *logit > 0.0 {
                        *logit / config.repetition_penalty
                    } else {
                        *logit * config.repetition_penalty
                    };
                }
            }
        }
        if config.temperature <= 0.0 || !config.temperature.is_finite() {
            return argmax(logits);
        }
        logits.iter_mut().for_each(|logit| *logit /= config.temperature);
        softmax(logits);

        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(index, &probability)| (index as u32, probability)));
        let by_probability = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut keep = candidates.len();
        if config.top_k > 0 && config.top_k < keep {
            candidates.select_nth_unstable_by(config.top_k - 1, by_probability);
            keep = config.top_k;
        }
        let kept = &mut candidates[..keep];
        kept.sort_unstable_by(by_probability);
        if config.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (index, candidate) in kept.iter().enumerate() {
                cumulative += candidate.1;
                if cumulative >= config.top_p {
                    keep = index + 1;
                    break;
                }
            }
        }
        let kept = &candidates[..keep];
        let total: f32 = kept.iter().map(|candidate| candidate.1).sum();
        let target = self.random.next_f32() * total;
        let mut cumulative = 0.0;
        for candidate in kept {
            cumulative += candidate.1;
            if target < cumulative {
                return candidate.0;
            }
        }
        kept.last().map_or(0, |candidate| candidate.0)
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_penalty_and_truncation() {
        let mut sampler = Sampler::new(SamplerConfig::default());
        assert_eq!(sampler.sample(&mut [0.1, 3.0, 2.9, -1.0], &[], &mut Vec::new()), 1);
        let penalised = SamplerConfig { repetition_penalty: 1.5, ..SamplerConfig::default() };
        assert_eq!(Sampler::new(penalised).sample(&mut [0.1, 3.0, 2.9, -1.0], &[1], &mut Vec::new()), 2);

        let top_one = SamplerConfig { temperature: 1.0, top_k: 1, seed: 9, ..SamplerConfig::default() };
        let mut sampler = Sampler::new(top_one);
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut [0.1, 3.0, 2.9, -1.0], &[], &mut Vec::new()), 1);
        }
        let nucleus = SamplerConfig { temperature: 1.0, top_p: 0.5, seed: 9, ..SamplerConfig::default() };
        let mut sampler = Sampler::new(nucleus);
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut [0.0, 5.0, 0.0, 0.0], &[], &mut Vec::new()), 1);
        }
    }

    #[test]
    fn seeded_sampling_repeats_and_covers() {
        let config = SamplerConfig { temperature: 1.0, seed: 42, ..SamplerConfig::default() };
        let draw = || {
            let mut sampler = Sampler::new(config);
            (0..200).map(|_| sampler.sample(&mut [1.0, 1.0, 1.0], &[], &mut Vec::new())).collect::<Vec<_>>()
        };
        let first = draw();
        assert_eq!(first, draw());
        for token in 0..3 {
            assert!(first.contains(&token));
        }
    }
}
