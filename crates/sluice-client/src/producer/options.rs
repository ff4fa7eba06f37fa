//! [`ProducerOptions`]: the producer's limits under the Java client's names and defaults.

use std::time::Duration;

use kafka_protocol::records::Compression;

/// How a [`super::Producer`] batches, retries and limits itself. Every field names the
/// Java client setting it mirrors; the defaults are Kafka 3.x's.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// `client.id`: names this producer in logs.
    pub client_id: String,
    /// `acks`: 0 (no answer), 1 (leader wrote it) or -1 (`all`: every in-sync replica).
    /// Idempotence needs -1; with 0 or 1 it is turned off (as the Java client does when
    /// `enable.idempotence` is not set explicitly).
    pub acks: i16,
    /// `linger.ms`: how long a batch that is not full waits for more records.
    pub linger_ms: u64,
    /// `batch.size`: a partition's batch is sent once it holds this many bytes.
    pub batch_size_bytes: usize,
    /// `max.request.size`: the largest record, and the most batch bytes in one request.
    pub max_request_bytes: usize,
    /// `compression.type`: any codec of RecordBatch v2.
    pub compression: Compression,
    /// `enable.idempotence`: producer id and sequence numbers, so retries never duplicate
    /// or reorder records.
    pub enable_idempotence: bool,
    /// `delivery.timeout.ms`: a record is retried until this long after `send` accepted
    /// it; then its future fails with a timeout.
    pub delivery_timeout_ms: u64,
    /// `retry.backoff.ms`: the first pause before a retry; doubles per attempt ...
    pub retry_backoff_ms: u64,
    /// ... up to `retry.backoff.max.ms`.
    pub retry_backoff_max_ms: u64,
    /// `request.timeout.ms`: how long to wait for one response before the connection is
    /// closed and its requests retried.
    pub request_timeout_ms: u64,
    /// `max.in.flight.requests.per.connection`: requests outstanding per broker
    /// connection (and batches per partition); at most 5 keeps order with idempotence.
    pub max_in_flight_per_connection: usize,
    /// `buffer.memory`: bytes of records accepted but not yet acknowledged; `send` waits
    /// while it is used up (back-pressure) ...
    pub buffer_memory_bytes: usize,
    /// ... at most `max.block.ms`, which also bounds the wait for a topic's metadata.
    pub max_block_ms: u64,
    /// `metadata.max.age.ms`: metadata is refreshed at least this often (new partitions,
    /// moved leaders).
    pub metadata_max_age_ms: u64,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            client_id: "sluice-producer".to_string(),
            acks: -1,
            linger_ms: 5,
            batch_size_bytes: 16_384,
            max_request_bytes: 1_048_576,
            compression: Compression::None,
            enable_idempotence: true,
            delivery_timeout_ms: 120_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
            request_timeout_ms: 30_000,
            max_in_flight_per_connection: 5,
            buffer_memory_bytes: 32 * 1024 * 1024,
            max_block_ms: 60_000,
            metadata_max_age_ms: 300_000,
        }
    }
}

impl ProducerOptions {
    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub(crate) fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn max_block(&self) -> Duration {
        Duration::from_millis(self.max_block_ms)
    }

    /// The pause before retry number `attempt` (1-based): `retry_backoff_ms * 2^(attempt-1)`,
    /// capped at `retry_backoff_max_ms`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        let ms = self
            .retry_backoff_ms
            .saturating_mul(factor)
            .min(self.retry_backoff_max_ms.max(self.retry_backoff_ms));
        Duration::from_millis(ms)
    }

    /// Whether records carry a producer id and sequence numbers: needs acks=all.
    pub(crate) fn idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let options = ProducerOptions::default();
        assert_eq!(options.backoff(1), Duration::from_millis(100));
        assert_eq!(options.backoff(2), Duration::from_millis(200));
        assert_eq!(options.backoff(4), Duration::from_millis(800));
        assert_eq!(options.backoff(5), Duration::from_millis(1_000));
        assert_eq!(options.backoff(60), Duration::from_millis(1_000));
    }

    #[test]
    fn idempotence_needs_acks_all() {
        let mut options = ProducerOptions::default();
        assert!(options.idempotent());
        options.acks = 1;
        assert!(!options.idempotent());
    }
}
