//! Idempotent-producer state of one partition (Kafka's `ProducerStateManager`, KIP-98
//! without transactions).
//!
//! For every producer id the log remembers its epoch and the metadata of its last
//! [`BATCHES_PER_PRODUCER`] batches. A retried batch (same epoch, same first/last sequence
//! as one of those) is a duplicate: the log writes nothing and answers with the original
//! offsets. Anything else must continue the sequence exactly, or it is refused, so a
//! producer's records are neither duplicated nor reordered by retries.
//!
//! The state is checked under the log lock before offsets are assigned and updated only
//! after the write succeeded. It is persisted as `<offset, 20 digits>.snapshot` files at
//! checkpoints and rebuilt on open from the newest usable snapshot plus the batch headers
//! after it (see `Log::open`).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::Path;

use crate::batch::BatchHeader;
use crate::checkpoint::{sync_dir, write_atomically};
use crate::LogError;

/// How many batches per producer are remembered for duplicate detection. Kafka's producers
/// keep at most 5 requests in flight per partition when idempotence is on, so a retry is
/// always one of the last 5.
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Suffix of producer state snapshot files.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// How many snapshot files are kept (the newest two: the newest may lie beyond the log
/// end recovered after a crash).
pub const SNAPSHOTS_KEPT: usize = 2;

const SNAPSHOT_MAGIC: &[u8; 4] = b"SLPS";
const SNAPSHOT_VERSION: u16 = 1;
/// magic + version + crc + producer count.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 4 + 4;
/// producer id, epoch, batch count.
const PRODUCER_ENTRY_BYTES: usize = 8 + 2 + 1;

/// What the log remembers of one batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// The state of one producer id on this partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first; at most [`BATCHES_PER_PRODUCER`].
    pub batches: VecDeque<BatchMetadata>,
}

impl ProducerEntry {
    fn last_sequence(&self) -> Option<i32> {
        self.batches.back().map(|batch| batch.last_sequence)
    }

    /// Newest batch timestamp: what expiration compares against.
    fn last_timestamp(&self) -> i64 {
        self.batches
            .back()
            .map_or(i64::MIN, |batch| batch.max_timestamp)
    }
}

/// `sequence + delta`, wrapping from i32::MAX to 0 as Kafka's sequences do.
pub fn increment_sequence(sequence: i32, delta: i32) -> i32 {
    if sequence > i32::MAX - delta {
        delta - (i32::MAX - sequence) - 1
    } else {
        sequence + delta
    }
}

/// True when `next` directly follows `last` (with wrap-around).
fn in_sequence(last: i32, next: i32) -> bool {
    next == increment_sequence(last, 1)
}

/// The idempotence fields of a batch, validated.
#[derive(Debug, Clone, Copy)]
struct ProducerFields {
    producer_id: i64,
    epoch: i16,
    first_sequence: i32,
    last_sequence: i32,
}

fn producer_fields(header: &BatchHeader) -> Result<ProducerFields, LogError> {
    if header.base_sequence < 0 {
        return Err(LogError::InvalidBatch(format!(
            "batch of producer {} has baseSequence {}; idempotent batches need a sequence",
            header.producer_id, header.base_sequence
        )));
    }
    if header.producer_epoch < 0 {
        return Err(LogError::InvalidBatch(format!(
            "batch of producer {} has negative epoch {}",
            header.producer_id, header.producer_epoch
        )));
    }
    if header.last_offset_delta < 0 {
        return Err(LogError::InvalidBatch(format!(
            "negative lastOffsetDelta {}",
            header.last_offset_delta
        )));
    }
    Ok(ProducerFields {
        producer_id: header.producer_id,
        epoch: header.producer_epoch,
        first_sequence: header.base_sequence,
        last_sequence: increment_sequence(header.base_sequence, header.last_offset_delta),
    })
}

/// Per-producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateManager {
    pub fn new() -> ProducerStateManager {
        ProducerStateManager::default()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    pub fn producer(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks a batch with producerId >= 0 before it is written (Kafka's duplicate detection
    /// and `checkProducerEpoch`/`checkSequence`). Returns the original batch when it is a
    /// retry of one of the last five, which must then not be written again.
    pub fn check(&self, header: &BatchHeader) -> Result<Option<BatchMetadata>, LogError> {
        let fields = producer_fields(header)?;
        let Some(entry) = self.producers.get(&fields.producer_id) else {
            // Unknown (new, expired or removed by retention): any sequence is accepted.
            return Ok(None);
        };
        if fields.epoch == entry.epoch {
            if let Some(original) = entry.batches.iter().find(|batch| {
                batch.first_sequence == fields.first_sequence
                    && batch.last_sequence == fields.last_sequence
            }) {
                return Ok(Some(*original));
            }
        }
        if fields.epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: fields.producer_id,
                epoch: fields.epoch,
                current_epoch: entry.epoch,
            });
        }
        if fields.epoch > entry.epoch {
            // A bumped epoch restarts the sequence at 0.
            if fields.first_sequence != 0 {
                return Err(LogError::OutOfOrderSequence {
                    producer_id: fields.producer_id,
                    epoch: fields.epoch,
                    sequence: fields.first_sequence,
                    expected: 0,
                });
            }
            return Ok(None);
        }
        match entry.last_sequence() {
            Some(last) if !in_sequence(last, fields.first_sequence) => {
                Err(LogError::OutOfOrderSequence {
                    producer_id: fields.producer_id,
                    epoch: fields.epoch,
                    sequence: fields.first_sequence,
                    expected: increment_sequence(last, 1),
                })
            }
            _ => Ok(None),
        }
    }

    /// Records a batch that is now in the log (`header.base_offset` is its assigned offset).
    /// Also used to rebuild the state from the log, so it never refuses.
    pub fn update(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 || header.base_sequence < 0 {
            return;
        }
        let last_sequence =
            increment_sequence(header.base_sequence, header.last_offset_delta.max(0));
        let metadata = BatchMetadata {
            first_sequence: header.base_sequence,
            last_sequence,
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER),
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(metadata);
    }

    /// Forgets producers whose newest batch timestamp is at least `expiration_ms` old
    /// (`producer.id.expiration.ms`). Returns how many were removed.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| now_ms.saturating_sub(entry.last_timestamp()) < expiration_ms);
        before - self.producers.len()
    }

    /// Forgets producers whose every remembered batch lies below `log_start_offset`
    /// (their records were deleted by retention), as Kafka does.
    pub fn remove_below(&mut self, log_start_offset: i64) {
        self.producers.retain(|_, entry| {
            entry
                .batches
                .back()
                .is_some_and(|batch| batch.last_offset >= log_start_offset)
        });
    }

    /// Serializes the state: magic, version, CRC32C of the rest, then the producers.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        let mut body = Vec::new();
        body.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let Some(entry) = self.producers.get(id) else {
                continue;
            };
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.epoch.to_be_bytes());
            body.push(entry.batches.len() as u8);
            for batch in &entry.batches {
                body.extend_from_slice(&batch.first_sequence.to_be_bytes());
                body.extend_from_slice(&batch.last_sequence.to_be_bytes());
                body.extend_from_slice(&batch.first_offset.to_be_bytes());
                body.extend_from_slice(&batch.last_offset.to_be_bytes());
                body.extend_from_slice(&batch.max_timestamp.to_be_bytes());
            }
        }
        let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Parses a snapshot; any inconsistency (checksum, length, version) is an error.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<ProducerStateManager, LogError> {
        let corrupt = |reason: &str| LogError::CorruptBatch(format!("producer snapshot: {reason}"));
        if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[0..4] != SNAPSHOT_MAGIC {
            return Err(corrupt("bad magic or too short"));
        }
        let mut reader = Reader { bytes, position: 4 };
        if reader.u16()? != SNAPSHOT_VERSION {
            return Err(corrupt("unknown version"));
        }
        let crc = reader.u32()?;
        if crc32c::crc32c(&bytes[10..]) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let count = reader.u32()? as usize;
        let mut producers = HashMap::with_capacity(count.min(bytes.len() / PRODUCER_ENTRY_BYTES));
        for _ in 0..count {
            let producer_id = reader.i64()?;
            let epoch = reader.i16()?;
            let batch_count = usize::from(reader.u8()?);
            if batch_count > BATCHES_PER_PRODUCER {
                return Err(corrupt("too many batches for one producer"));
            }
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                batches.push_back(BatchMetadata {
                    first_sequence: reader.i32()?,
                    last_sequence: reader.i32()?,
                    first_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                    max_timestamp: reader.i64()?,
                });
            }
            producers.insert(producer_id, ProducerEntry { epoch, batches });
        }
        if reader.position != bytes.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(ProducerStateManager { producers })
    }
}

/// Big-endian reads that fail instead of panicking on a short file.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], LogError> {
        let end = self
            .position
            .checked_add(N)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(LogError::CorruptBatch(
                "producer snapshot: truncated".to_string(),
            ));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.position..end]);
        self.position = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, LogError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn i16(&mut self) -> Result<i16, LogError> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, LogError> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, LogError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

/// `<offset, 20 digits>.snapshot`.
pub fn snapshot_file_name(offset: i64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Offsets of the snapshot files in `dir`, ascending.
pub fn list_snapshots(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(offset) = entry?
            .file_name()
            .to_str()
            .and_then(parse_snapshot_file_name)
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes the snapshot of the state at `offset` atomically and deletes all but the newest
/// [`SNAPSHOTS_KEPT`].
pub fn write_snapshot(
    dir: &Path,
    offset: i64,
    state: &ProducerStateManager,
) -> Result<(), LogError> {
    write_atomically(dir, &snapshot_file_name(offset), &state.to_snapshot_bytes())?;
    let offsets = list_snapshots(dir)?;
    let excess = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    for old in &offsets[..excess] {
        fs::remove_file(dir.join(snapshot_file_name(*old)))?;
    }
    if excess > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

/// What loading snapshots found.
#[derive(Debug, Default)]
pub struct LoadedSnapshot {
    /// The state and the offset it covers up to (exclusive), when one was usable.
    pub state: Option<(i64, ProducerStateManager)>,
    /// Snapshots deleted because they lay beyond the log end (after a truncation).
    pub deleted_beyond_log_end: usize,
    /// Snapshots that did not parse and were deleted.
    pub corrupt: usize,
}

/// Deletes snapshots above `log_end_offset`, then loads the newest one that parses,
/// deleting corrupt ones on the way.
pub fn load_snapshot(dir: &Path, log_end_offset: i64) -> Result<LoadedSnapshot, LogError> {
    let mut loaded = LoadedSnapshot::default();
    let offsets = list_snapshots(dir)?;
    for &offset in offsets.iter().filter(|offset| **offset > log_end_offset) {
        tracing::warn!(dir = %dir.display(), snapshot = offset, log_end_offset, "deleting producer snapshot beyond the log end");
        fs::remove_file(dir.join(snapshot_file_name(offset)))?;
        loaded.deleted_beyond_log_end += 1;
    }
    for &offset in offsets
        .iter()
        .rev()
        .filter(|offset| **offset <= log_end_offset)
    {
        let path = dir.join(snapshot_file_name(offset));
        let parsed = fs::read(&path)
            .map_err(LogError::from)
            .and_then(|bytes| ProducerStateManager::from_snapshot_bytes(&bytes));
        match parsed {
            Ok(state) => {
                loaded.state = Some((offset, state));
                break;
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), snapshot = offset, %error, "producer snapshot unusable; deleting it");
                fs::remove_file(&path)?;
                loaded.corrupt += 1;
            }
        }
    }
    if loaded.deleted_beyond_log_end + loaded.corrupt > 0 {
        sync_dir(dir)?;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests;
