//! Exponential backoff with jitter between the attempts of a failing record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a failing record is retried before it is dead-lettered.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Handler attempts per record, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt (`retry.backoff.ms`).
    pub retry_backoff_ms: u64,
    /// Growth of the wait per further attempt.
    pub backoff_multiplier: f64,
    /// Cap of the wait (`retry.backoff.max.ms`).
    pub retry_backoff_max_ms: u64,
    /// Random spread of each wait, as a fraction (0.2: ±20%, as Kafka's clients), so that
    /// records failing together do not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            retry_backoff_ms: 100,
            backoff_multiplier: 2.0,
            retry_backoff_max_ms: 10_000,
            jitter: 0.2,
        }
    }
}

impl RetryConfig {
    /// The wait after failed attempt number `attempt` (1-based), before jitter.
    pub fn base_backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let millis = self.retry_backoff_ms as f64 * self.backoff_multiplier.max(1.0).powi(exponent);
        let capped = millis.min(self.retry_backoff_max_ms as f64).max(0.0);
        Duration::from_micros((capped * 1000.0) as u64)
    }

    /// The wait after failed attempt number `attempt`, with jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.base_backoff(attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        // Uniform in [1 - jitter, 1 + jitter].
        let factor = 1.0 + jitter * (2.0 * unit_random() - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// A uniform number in [0, 1) from a process-wide splitmix64 sequence (jitter needs no
/// cryptographic randomness, only different values per caller).
fn unit_random() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    if seed == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        STATE.store(nanos | 1, Ordering::Relaxed);
        seed = nanos;
    }
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let config = RetryConfig {
            max_attempts: 10,
            retry_backoff_ms: 100,
            backoff_multiplier: 2.0,
            retry_backoff_max_ms: 1_000,
            jitter: 0.0,
        };
        let waits: Vec<u128> = (1..=6).map(|a| config.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let config = RetryConfig {
            jitter: 0.2,
            ..RetryConfig::default()
        };
        let waits: Vec<Duration> = (0..200).map(|_| config.backoff(2)).collect();
        for wait in &waits {
            assert!(*wait >= Duration::from_millis(160) && *wait <= Duration::from_millis(240));
        }
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "jitter varies: {}", distinct.len());
    }
}
