//! The one error type of the storage engine; the broker maps it to Kafka error codes.

/// Everything that can go wrong in the log. Each variant maps to one Kafka error code at the edge.
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    /// A disk error (KAFKA_STORAGE_ERROR).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// CRC mismatch, bad length, lying sizes (CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// Wrong magic, not exactly one batch, inconsistent counts (INVALID_RECORD).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// Records that break a topic rule, e.g. a keyless record on a compacted topic
    /// (INVALID_RECORD); `batch_indexes` are the offending records' positions in the batch,
    /// for the Produce response's `record_errors` (KIP-467).
    #[error("{message}")]
    InvalidRecords {
        message: String,
        batch_indexes: Vec<i32>,
    },
    /// The batch is larger than `max_batch_bytes` (MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    /// The requested offset is outside `[log_start_offset, log_end_offset]` (OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// An idempotent producer's batch does not continue its sequence
    /// (OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id} epoch {epoch}: sequence {sequence} is out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        expected: i32,
    },
    /// An idempotent producer wrote with an epoch older than the current one: a zombie
    /// (INVALID_PRODUCER_EPOCH).
    #[error(
        "producer {producer_id}: epoch {epoch} is older than the current epoch {current_epoch}"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
}
