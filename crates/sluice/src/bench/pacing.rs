//! Fixed-rate pacing and the coordinated-omission correction.
//!
//! With a target rate each message has an *intended send time*: message `i` of a sender
//! running at `rate` messages per second is due `i / rate` seconds after the start. The
//! sender never sends early; when it falls behind (the broker is slow, in-flight requests
//! are full) it sends the overdue messages at once, and every latency is measured from the
//! message's intended send time, not from when it actually went out. A stall therefore
//! shows up in the latency of every message that should have been sent during it, as it
//! would for a real client producing at that rate (intended-time accounting, the same
//! correction `hdrhistogram`'s `record_correct` approximates after the fact).

use std::time::{Duration, Instant};

/// The schedule of one sender at a fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    rate_msgs_per_sec: f64,
}

impl Pacer {
    /// `None` for rate 0 (as fast as possible).
    pub fn new(start: Instant, rate_msgs_per_sec: f64) -> Option<Pacer> {
        (rate_msgs_per_sec > 0.0 && rate_msgs_per_sec.is_finite()).then_some(Pacer {
            start,
            rate_msgs_per_sec,
        })
    }

    /// Offset of message `index`'s intended send time from the start.
    pub fn offset_of(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate_msgs_per_sec)
    }

    /// When message `index` is due.
    pub fn intended(&self, index: u64) -> Instant {
        self.start + self.offset_of(index)
    }
}

/// The rate of each of `senders` sharing `total_rate` messages per second.
pub fn rate_per_sender(total_rate: f64, senders: usize) -> f64 {
    if senders == 0 {
        return 0.0;
    }
    total_rate / senders as f64
}

/// How many of `total` messages sender `index` of `senders` sends (the first ones take the
/// remainder).
pub fn share_of(total: u64, senders: usize, index: usize) -> u64 {
    let senders = senders.max(1) as u64;
    let index = index as u64;
    total / senders + u64::from(index < total % senders)
}

/// Records per batch so that a batch holds about `batch_bytes` of values (at least one).
pub fn records_per_batch(batch_bytes: usize, message_bytes: usize) -> usize {
    (batch_bytes / message_bytes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_at_the_rate() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 1_000.0).unwrap();
        assert_eq!(pacer.offset_of(0), Duration::ZERO);
        assert_eq!(pacer.offset_of(500), Duration::from_millis(500));
        assert_eq!(pacer.intended(2_000), start + Duration::from_secs(2));
        let slow = Pacer::new(start, 0.5).unwrap();
        assert_eq!(slow.offset_of(3), Duration::from_secs(6));
    }

    #[test]
    fn rate_zero_means_unpaced() {
        assert!(Pacer::new(Instant::now(), 0.0).is_none());
        assert!(Pacer::new(Instant::now(), f64::INFINITY).is_none());
    }

    #[test]
    fn senders_split_the_rate_and_the_count() {
        assert_eq!(rate_per_sender(50_000.0, 4), 12_500.0);
        assert_eq!(rate_per_sender(50_000.0, 0), 0.0);
        let shares: Vec<u64> = (0..3).map(|i| share_of(10, 3, i)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(shares.iter().sum::<u64>(), 10);
        assert_eq!(share_of(2, 4, 3), 0);
    }

    #[test]
    fn batches_hold_at_least_one_record() {
        assert_eq!(records_per_batch(16_384, 1_024), 16);
        assert_eq!(records_per_batch(16_384, 100), 163);
        assert_eq!(records_per_batch(100, 1_024), 1);
        assert_eq!(records_per_batch(100, 0), 100);
    }
}
