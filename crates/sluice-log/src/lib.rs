//! Sluice storage engine: the segmented, append-only log of one partition.
//!
//! Segments hold Kafka RecordBatch v2 bytes exactly as the client sent them; a leader's
//! log only rewrites baseOffset and partitionLeaderEpoch (outside the CRC), and a follower
//! (`Log::append_as_follower`) stores the leader's bytes unchanged. Files per partition
//! directory follow Kafka: `<base offset, 20 digits>.log`, `.index`, `.timeindex`, and a
//! `recovery-point` checkpoint. On open every batch at or after the recovery point is checked
//! (length, magic, offsets never going backwards, CRC32C) and a torn or corrupt tail is
//! truncated.
//!
//! Architecture invariant: this crate never touches a socket and knows nothing of tokio or
//! the Kafka request layer. All I/O is synchronous `std::fs`.
#![forbid(unsafe_code)]

mod batch;
mod checkpoint;
pub mod cleaner;
mod compression;
mod error;
pub mod fuzzing;
mod index;
mod leader_epoch;
mod log;
mod producer_state;
mod records;
mod recovery;
mod retention;
mod segment;
mod time_index;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use batch::{rewrite_header, validate_for_append, BatchHeader, BATCH_HEADER_BYTES, MAGIC_V2};
pub use checkpoint::{
    write_atomically, HIGH_WATERMARK_FILE, LOG_START_OFFSET_FILE, RECOVERY_POINT_FILE,
};
pub use compression::{CompressionType, TimestampType, ATTRIBUTE_COMPRESSION_MASK};
pub use error::LogError;
pub use leader_epoch::{
    EpochEntry, LeaderEpochCache, LEADER_EPOCH_CHECKPOINT_FILE, UNDEFINED_EPOCH,
    UNDEFINED_EPOCH_OFFSET,
};
pub use log::{AppendInfo, FollowerAppend, Log, LogConfig, ReadSlice, SyncTarget, TimestampOffset};
pub use producer_state::{
    increment_sequence, BatchMetadata, ProducerEntry, ProducerStateManager, BATCHES_PER_PRODUCER,
};
pub use records::{
    compress, decompress, decompressed_limit_bytes, prepare_batch, prepare_batch_buf, walk_records,
    BatchBuf, BatchPolicy, Prepared, RecordsSummary, DECOMPRESSED_BYTES_CAP,
    DECOMPRESSED_BYTES_FLOOR, DECOMPRESSION_RATIO_LIMIT, KEYLESS_ON_COMPACTED_MESSAGE,
};
pub use recovery::RecoveryReport;
pub use retention::{DeletedSegment, DeletionReason, PendingDeletion};
