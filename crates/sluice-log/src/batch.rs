//! RecordBatch v2 header parsing and validation.
//!
//! Layout (big-endian): baseOffset i64 [0..8], batchLength i32 [8..12], partitionLeaderEpoch
//! i32 [12..16], magic i8 [16], crc u32 [17..21] (CRC32C of [21..end]), attributes i16
//! [21..23], lastOffsetDelta i32 [23..27], baseTimestamp i64 [27..35], maxTimestamp i64
//! [35..43], producerId i64 [43..51], producerEpoch i16 [51..53], baseSequence i32 [53..57],
//! recordsCount i32 [57..61].

use crate::LogError;

/// Size of the fixed RecordBatch v2 header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the batchLength-counted part: baseOffset and batchLength.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Smallest legal batchLength: the header after the length field, with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32;
/// The only supported magic.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered part of the batch starts.
pub const CRC_START: usize = 21;
const PARTITION_LEADER_EPOCH_START: usize = 12;
/// Attribute bit 3: timestamps are log-append times (all records carry maxTimestamp).
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 1 << 3;

/// The parsed fixed header of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn field<const N: usize>(bytes: &[u8], start: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[start..start + N]);
    out
}

impl BatchHeader {
    /// Parses the first 61 bytes of `bytes`. Checks the length field and the magic, not the
    /// CRC nor whether `bytes` holds the whole batch (it may be only a header read from disk).
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, LogError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(LogError::CorruptBatch(format!(
                "{} bytes is shorter than a batch header ({BATCH_HEADER_BYTES})",
                bytes.len()
            )));
        }
        let header = BatchHeader {
            base_offset: i64::from_be_bytes(field(bytes, 0)),
            batch_length: i32::from_be_bytes(field(bytes, 8)),
            partition_leader_epoch: i32::from_be_bytes(field(bytes, 12)),
            magic: i8::from_be_bytes(field(bytes, 16)),
            crc: u32::from_be_bytes(field(bytes, 17)),
            attributes: i16::from_be_bytes(field(bytes, 21)),
            last_offset_delta: i32::from_be_bytes(field(bytes, 23)),
            base_timestamp: i64::from_be_bytes(field(bytes, 27)),
            max_timestamp: i64::from_be_bytes(field(bytes, 35)),
            producer_id: i64::from_be_bytes(field(bytes, 43)),
            producer_epoch: i16::from_be_bytes(field(bytes, 51)),
            base_sequence: i32::from_be_bytes(field(bytes, 53)),
            records_count: i32::from_be_bytes(field(bytes, 57)),
        };
        if header.batch_length < BATCH_LENGTH_MIN {
            return Err(LogError::CorruptBatch(format!(
                "batchLength {} is below the minimum {BATCH_LENGTH_MIN}",
                header.batch_length
            )));
        }
        if header.magic != MAGIC_V2 {
            return Err(LogError::InvalidBatch(format!(
                "magic {} is not supported (only {MAGIC_V2})",
                header.magic
            )));
        }
        Ok(header)
    }

    /// Total size of the batch in bytes: 12 + batchLength. `parse` guarantees batchLength >= 49.
    pub fn total_size(&self) -> usize {
        let batch_length = usize::try_from(self.batch_length).unwrap_or(0);
        BATCH_LENGTH_PREFIX_BYTES + batch_length
    }

    /// Offset of the last record of the batch (saturating on absurd deltas).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Offset right after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// True when every record of the batch carries `max_timestamp` (LogAppendTime).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// Checks recordsCount >= 1 and lastOffsetDelta == recordsCount - 1.
    pub fn verify_counts(&self) -> Result<(), LogError> {
        if self.records_count < 1 || self.last_offset_delta != self.records_count - 1 {
            return Err(LogError::InvalidBatch(format!(
                "recordsCount {} and lastOffsetDelta {} are inconsistent",
                self.records_count, self.last_offset_delta
            )));
        }
        Ok(())
    }

    /// Checks the CRC32C of `batch[21..total_size]` against the header's crc.
    pub fn verify_crc(&self, batch: &[u8]) -> Result<(), LogError> {
        let covered = batch.get(CRC_START..self.total_size()).ok_or_else(|| {
            LogError::CorruptBatch(format!(
                "batch of {} bytes is shorter than its length field says ({})",
                batch.len(),
                self.total_size()
            ))
        })?;
        let actual_crc = crc32c::crc32c(covered);
        if actual_crc != self.crc {
            return Err(LogError::CorruptBatch(format!(
                "crc mismatch: header says {:#010x}, content has {actual_crc:#010x}",
                self.crc
            )));
        }
        Ok(())
    }
}

/// Validates that `batch` is exactly one well-formed RecordBatch v2 of at most
/// `max_batch_bytes`, and returns its header.
pub fn validate_for_append(batch: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, LogError> {
    let header = BatchHeader::parse(batch)?;
    let total_size = header.total_size();
    if total_size > batch.len() {
        return Err(LogError::CorruptBatch(format!(
            "batchLength says {total_size} bytes but only {} were sent",
            batch.len()
        )));
    }
    if total_size < batch.len() {
        return Err(LogError::InvalidBatch(format!(
            "expected exactly one batch of {total_size} bytes, got {} bytes",
            batch.len()
        )));
    }
    if batch.len() > max_batch_bytes {
        return Err(LogError::BatchTooLarge {
            size: batch.len(),
            max: max_batch_bytes,
        });
    }
    header.verify_crc(batch)?;
    header.verify_counts()?;
    Ok(header)
}

/// Writes baseOffset and partitionLeaderEpoch into the header (both outside the CRC).
pub fn rewrite_header(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES);
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_START..PARTITION_LEADER_EPOCH_START + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch;

    #[test]
    fn parses_a_valid_batch() {
        let bytes = batch(3, 10, 1_000);
        let header = validate_for_append(&bytes, 1 << 20).unwrap();
        assert_eq!(header.total_size(), bytes.len());
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.max_timestamp, 1_000);
        assert_eq!(header.magic, MAGIC_V2);
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_the_crc_valid() {
        let mut bytes = batch(2, 5, 7);
        rewrite_header(&mut bytes, 1234, 9);
        let header = validate_for_append(&bytes, 1 << 20).unwrap();
        assert_eq!(header.base_offset, 1234);
        assert_eq!(header.partition_leader_epoch, 9);
        assert_eq!(header.last_offset(), 1235);
    }

    #[test]
    fn rejects_bad_batches_with_the_right_error() {
        let good = batch(2, 10, 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            validate_for_append(&bad_crc, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        assert!(matches!(
            validate_for_append(&bad_magic, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
        assert!(matches!(
            validate_for_append(&good, good.len() - 1),
            Err(LogError::BatchTooLarge { .. })
        ));
        assert!(matches!(
            validate_for_append(&good[..40], 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        assert!(matches!(
            validate_for_append(&good[..good.len() - 1], 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(matches!(
            validate_for_append(&two, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
        let mut negative_length = good.clone();
        negative_length[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_for_append(&negative_length, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
    }

    #[test]
    fn rejects_inconsistent_record_counts() {
        let mut bytes = batch(3, 1, 0);
        bytes[57..61].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_for_append(&bytes, 1 << 20),
            Err(LogError::InvalidBatch(_))
        ));
    }
}
