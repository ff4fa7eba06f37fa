//! One segment: a `.log` file of whole batches plus its in-memory offset and time indexes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint::write_atomically;
use crate::index::{OffsetIndex, OffsetIndexEntry};
use crate::time_index::{TimeIndex, TimeIndexEntry};
use crate::{LogError, TimestampOffset};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// `<base offset, 20 digits>.<suffix>`, Kafka's naming.
pub fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// Parses a `.log` file name back into its base offset.
pub fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()
}

/// Opens a segment file for positional reads and writes.
pub fn open_log_file(path: &Path, create: bool) -> Result<File, LogError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?)
}

/// Writes `head` then `body` at `offset` with `pwritev(2)`, repeating after short writes
/// (one system call in practice).
fn write_all_vectored_at(
    file: &File,
    mut head: &[u8],
    mut body: &[u8],
    mut offset: u64,
) -> std::io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let bufs = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let written = match rustix::io::pwritev(file, &bufs, offset) {
            Ok(written) => written,
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(errno.into()),
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        if written < head.len() {
            head = &head[written..];
        } else {
            body = body.get(written - head.len()..).unwrap_or_default();
            head = &[];
        }
    }
    Ok(())
}

/// A segment of the log. `size_bytes` is the committed end: reads never go past it.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub dir: PathBuf,
    pub file: Arc<File>,
    pub size_bytes: u32,
    /// Offset after the last batch (== base_offset when empty).
    pub next_offset: i64,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Largest batch maxTimestamp and the base offset of the batch holding it.
    pub max_timestamp: Option<TimestampOffset>,
    pub bytes_since_index_entry: u32,
    /// Wall-clock time of the first append since this process created or opened it.
    pub first_append_ms: Option<i64>,
    /// Indexes changed since they were last written.
    pub indexes_dirty: bool,
}

impl Segment {
    /// A segment with no batches backed by `file`.
    pub fn empty(dir: &Path, base_offset: i64, file: File) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            size_bytes: 0,
            next_offset: base_offset,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            max_timestamp: None,
            bytes_since_index_entry: 0,
            first_append_ms: None,
            indexes_dirty: true,
        }
    }

    /// Creates a new empty segment file (replacing a stale one with the same name).
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let path = dir.join(file_name(base_offset, LOG_SUFFIX));
        let file = open_log_file(&path, true)?;
        file.set_len(0)?;
        Ok(Segment::empty(dir, base_offset, file))
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Offset relative to the segment base, if it fits the index format.
    pub fn relative_offset(&self, offset: i64) -> Option<u32> {
        offset
            .checked_sub(self.base_offset)
            .and_then(|delta| u32::try_from(delta).ok())
    }

    /// Records a batch that now sits at `position` (appended or found by recovery): index
    /// entries every `index_interval_bytes`, maximum timestamp, sizes and offsets.
    pub fn track_batch(
        &mut self,
        position: u32,
        header: &BatchHeader,
        size_bytes: u32,
        index_interval_bytes: u32,
    ) {
        debug_assert_eq!(position, self.size_bytes);
        // Greater after compaction removed whole batches (offsets are preserved, gaps remain).
        debug_assert!(header.base_offset >= self.next_offset);
        let relative_offset = self.relative_offset(header.base_offset).unwrap_or(u32::MAX);
        self.note_max_timestamp(header);
        if self.bytes_since_index_entry >= index_interval_bytes {
            self.add_index_entries(relative_offset, position);
        }
        self.bytes_since_index_entry = self.bytes_since_index_entry.saturating_add(size_bytes);
        self.size_bytes = position.saturating_add(size_bytes);
        self.next_offset = header.next_offset();
        self.indexes_dirty = true;
    }

    /// Keeps the largest batch maxTimestamp and the base offset of the batch holding it.
    fn note_max_timestamp(&mut self, header: &BatchHeader) {
        if self
            .max_timestamp
            .is_none_or(|max| header.max_timestamp > max.timestamp)
        {
            self.max_timestamp = Some(TimestampOffset {
                timestamp: header.max_timestamp,
                offset: header.base_offset,
            });
        }
    }

    fn add_index_entries(&mut self, relative_offset: u32, position: u32) {
        if self
            .offset_index
            .last()
            .is_none_or(|last| last.position < position && last.relative_offset < relative_offset)
        {
            self.offset_index.push(OffsetIndexEntry {
                relative_offset,
                position,
            });
        }
        if let Some(max) = self.max_timestamp {
            if let Some(max_relative_offset) = self.relative_offset(max.offset) {
                self.time_index.maybe_push(TimeIndexEntry {
                    timestamp_ms: max.timestamp,
                    relative_offset: max_relative_offset,
                });
            }
        }
        self.bytes_since_index_entry = 0;
    }

    /// Appends one validated batch with a single positional write at the committed end.
    pub fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(), LogError> {
        self.append_parts(batch, &[], header, index_interval_bytes, now_ms)
    }

    /// Appends one validated batch given as two consecutive pieces (a rewritten header and
    /// the rest, still in the request buffer) with one vectored positional write.
    pub fn append_parts(
        &mut self,
        head: &[u8],
        body: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let position = self.size_bytes;
        let len = head.len().saturating_add(body.len());
        let size_bytes = u32::try_from(len).map_err(|_| LogError::BatchTooLarge {
            size: len,
            max: u32::MAX as usize,
        })?;
        if let Err(error) = write_all_vectored_at(&self.file, head, body, u64::from(position)) {
            // Cut whatever part of the batch reached the file (the caller checks with
            // `ensure_committed_length` that it worked); nothing in memory moved.
            let _ = self.file.set_len(u64::from(position));
            return Err(LogError::Io(std::io::Error::new(
                error.kind(),
                format!(
                    "could not write {len} bytes to segment {}: {error}",
                    self.base_offset
                ),
            )));
        }
        self.first_append_ms.get_or_insert(now_ms);
        self.track_batch(position, header, size_bytes, index_interval_bytes);
        Ok(())
    }

    /// Makes the file exactly `size_bytes` long again after a failed append (truncating
    /// never needs free space, but the file system may still refuse, e.g. after EIO).
    /// Returns why not when it is not.
    pub fn ensure_committed_length(&self) -> Result<(), String> {
        let committed = u64::from(self.size_bytes);
        match self.file.metadata() {
            Ok(metadata) if metadata.len() == committed => return Ok(()),
            Ok(_) | Err(_) => {}
        }
        self.file
            .set_len(committed)
            .and_then(|()| self.file.metadata())
            .map_err(|error| error.to_string())
            .and_then(|metadata| {
                if metadata.len() == committed {
                    Ok(())
                } else {
                    Err(format!(
                        "segment {} is {} bytes long, expected {committed}",
                        self.base_offset,
                        metadata.len()
                    ))
                }
            })
    }

    /// Best-effort removal of the file a failed [`Segment::create`] may have left (empty,
    /// so a restart would cope, but it must not linger as a stray segment).
    pub fn remove_failed_create(dir: &Path, base_offset: i64) {
        let path = dir.join(file_name(base_offset, LOG_SUFFIX));
        if let Err(error) = fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "could not remove a segment file whose creation failed");
            }
        }
    }

    /// Reads the header of the batch at `position`, never past the committed end.
    pub fn read_header_at(&self, position: u32) -> Result<BatchHeader, LogError> {
        let end = u64::from(position) + BATCH_HEADER_BYTES as u64;
        if end > u64::from(self.size_bytes) {
            return Err(LogError::CorruptBatch(format!(
                "batch header at {position} runs past segment end {}",
                self.size_bytes
            )));
        }
        let mut bytes = [0u8; BATCH_HEADER_BYTES];
        self.file.read_exact_at(&mut bytes, u64::from(position))?;
        let header = BatchHeader::parse(&bytes)?;
        let batch_end = u64::from(position) + header.total_size() as u64;
        if batch_end > u64::from(self.size_bytes) {
            return Err(LogError::CorruptBatch(format!(
                "batch at {position} runs past segment end {}",
                self.size_bytes
            )));
        }
        Ok(header)
    }

    /// Reads the whole batch at `position`.
    pub fn read_batch_at(&self, position: u32, header: &BatchHeader) -> Result<Vec<u8>, LogError> {
        let mut bytes = vec![0u8; header.total_size()];
        self.file.read_exact_at(&mut bytes, u64::from(position))?;
        Ok(bytes)
    }

    /// Position after the batch at `position` with `header`, checked against the segment end.
    fn position_after(&self, position: u32, header: &BatchHeader) -> Result<u32, LogError> {
        u32::try_from(header.total_size())
            .ok()
            .and_then(|size| position.checked_add(size))
            .filter(|end| *end <= self.size_bytes)
            .ok_or_else(|| LogError::CorruptBatch(format!("batch at {position} overflows")))
    }

    /// Walks batch headers from the index floor of `offset` and returns the first batch whose
    /// last offset is >= `offset` (the batch containing it), or None at the segment end.
    pub fn find_batch_ending_at_or_after(
        &self,
        offset: i64,
    ) -> Result<Option<(u32, BatchHeader)>, LogError> {
        let relative_offset = self
            .relative_offset(offset.max(self.base_offset))
            .unwrap_or(u32::MAX);
        let mut position = self.offset_index.floor_by_offset(relative_offset).position;
        while position < self.size_bytes {
            let header = self.read_header_at(position)?;
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            position = self.position_after(position, &header)?;
        }
        Ok(None)
    }

    /// Position where batches with base offset >= `offset_end_exclusive` start (or the
    /// segment end), and the offset after the batches before it.
    pub fn position_of_offset_end(
        &self,
        offset_end_exclusive: i64,
    ) -> Result<(u32, i64), LogError> {
        if offset_end_exclusive >= self.next_offset {
            return Ok((self.size_bytes, self.next_offset));
        }
        match self.find_batch_ending_at_or_after(offset_end_exclusive)? {
            Some((position, header)) if header.base_offset < offset_end_exclusive => Ok((
                self.position_after(position, &header)?,
                header.next_offset(),
            )),
            Some((position, header)) => Ok((position, header.base_offset)),
            None => Ok((self.size_bytes, self.next_offset)),
        }
    }

    /// The last batch boundary in `(start, limit]` reachable from `start`, walking from the
    /// index entry nearest below `limit`; `start` itself when the first batch crosses `limit`.
    /// Also returns the offset after the last included batch.
    pub fn last_boundary_within(
        &self,
        start: u32,
        start_offset: i64,
        limit: u32,
    ) -> Result<(u32, i64), LogError> {
        let floor = self.offset_index.floor_by_position(limit);
        let (mut position, mut next_offset) = if floor.position > start {
            let offset = self
                .base_offset
                .saturating_add(i64::from(floor.relative_offset));
            (floor.position, offset)
        } else {
            (start, start_offset)
        };
        while position < self.size_bytes {
            let header = self.read_header_at(position)?;
            let end = self.position_after(position, &header)?;
            if end > limit {
                break;
            }
            position = end;
            next_offset = header.next_offset();
        }
        Ok((position, next_offset))
    }

    /// Cuts the segment back to the batch boundary `position`, after which the next offset
    /// is `next_offset` (follower truncation); the cut is fsynced. Index entries at or past
    /// the cut go; the largest timestamp is recomputed from the remaining batch headers.
    pub fn truncate_to(&mut self, position: u32, next_offset: i64) -> Result<(), LogError> {
        debug_assert!(position <= self.size_bytes);
        self.file.set_len(u64::from(position))?;
        self.file.sync_all()?;
        self.size_bytes = position;
        self.next_offset = next_offset;
        self.offset_index
            .truncate_to_position(position.saturating_sub(1));
        let relative_end = self.relative_offset(next_offset).unwrap_or(u32::MAX);
        self.time_index.truncate_to_offset(relative_end);
        self.max_timestamp = None;
        let mut at = 0;
        while at < self.size_bytes {
            let header = self.read_header_at(at)?;
            self.note_max_timestamp(&header);
            at = self.position_after(at, &header)?;
        }
        self.bytes_since_index_entry =
            position.saturating_sub(self.offset_index.last().map_or(0, |entry| entry.position));
        self.indexes_dirty = true;
        Ok(())
    }

    /// Writes both index files atomically (temp, fsync, rename, fsync dir) if they changed.
    pub fn write_indexes(&mut self) -> Result<(), LogError> {
        if !self.indexes_dirty {
            return Ok(());
        }
        let index_name = file_name(self.base_offset, INDEX_SUFFIX);
        write_atomically(&self.dir, &index_name, &self.offset_index.to_bytes())?;
        let time_index_name = file_name(self.base_offset, TIME_INDEX_SUFFIX);
        write_atomically(&self.dir, &time_index_name, &self.time_index.to_bytes())?;
        self.indexes_dirty = false;
        Ok(())
    }

    /// Removes the segment's files (indexes first, so a crash midway leaves at worst a log
    /// whose indexes are rebuilt, never orphan indexes); missing files are fine.
    pub fn delete_files(dir: &Path, base_offset: i64) -> Result<(), LogError> {
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
            match fs::remove_file(dir.join(file_name(base_offset, suffix))) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}
