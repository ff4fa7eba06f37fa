//! Sparse time index of one segment: (timestamp i64 BE, relative offset u32 BE) entries.
//!
//! An entry `(t, o)` says: the largest timestamp among all batches appended to the segment
//! when the entry was written is `t`, first reached in the batch with base offset
//! `segment base + o`. Entries are appended next to offset index entries when the maximum
//! grew, so both fields are strictly increasing.

/// Bytes per on-disk entry.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// The in-memory sparse time index.
#[derive(Debug, Clone, Default)]
pub struct TimeIndex {
    entries: Vec<TimeIndexEntry>,
}

impl TimeIndex {
    /// Parses time index file bytes; returns a reason when it must be rebuilt.
    pub fn from_bytes(bytes: &[u8]) -> Result<TimeIndex, String> {
        if !bytes.len().is_multiple_of(TIME_INDEX_ENTRY_BYTES) {
            return Err(format!(
                "size {} is not a multiple of {TIME_INDEX_ENTRY_BYTES}",
                bytes.len()
            ));
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&chunk[0..8]);
            let entry = TimeIndexEntry {
                timestamp_ms: i64::from_be_bytes(timestamp),
                relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            if let Some(last) = index.entries.last() {
                if entry.timestamp_ms <= last.timestamp_ms
                    || entry.relative_offset <= last.relative_offset
                {
                    return Err(format!("entries are not monotonic at {entry:?}"));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }

    /// Serializes all entries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.timestamp_ms.to_be_bytes());
            bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        bytes
    }

    /// Appends `entry` if its timestamp is larger than the last one's.
    pub fn maybe_push(&mut self, entry: TimeIndexEntry) {
        if self
            .entries
            .last()
            .is_some_and(|last| last.timestamp_ms >= entry.timestamp_ms)
        {
            return;
        }
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|last| last.relative_offset < entry.relative_offset));
        self.entries.push(entry);
    }

    /// Relative offset from which a search for the first timestamp >= `timestamp_ms` may start:
    /// the offset of the last entry whose timestamp is below the target (every batch indexed
    /// up to it is below the target), or 0.
    pub fn search_start(&self, timestamp_ms: i64) -> u32 {
        let count = self
            .entries
            .partition_point(|entry| entry.timestamp_ms < timestamp_ms);
        match count.checked_sub(1) {
            Some(i) => self.entries[i].relative_offset,
            None => 0,
        }
    }

    /// Keeps only entries with relative offset < `relative_offset_end`.
    pub fn truncate_to_offset(&mut self, relative_offset_end: u32) {
        let count = self
            .entries
            .partition_point(|entry| entry.relative_offset < relative_offset_end);
        self.entries.truncate(count);
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<TimeIndexEntry> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timestamp_ms: i64, relative_offset: u32) -> TimeIndexEntry {
        TimeIndexEntry {
            timestamp_ms,
            relative_offset,
        }
    }

    #[test]
    fn keeps_only_growing_maxima_and_searches() {
        let mut index = TimeIndex::default();
        index.maybe_push(entry(100, 0));
        index.maybe_push(entry(100, 3));
        index.maybe_push(entry(200, 5));
        assert_eq!(index.len(), 2);
        let parsed = TimeIndex::from_bytes(&index.to_bytes()).unwrap();
        assert_eq!(parsed.search_start(50), 0);
        assert_eq!(parsed.search_start(150), 0);
        assert_eq!(parsed.search_start(201), 5);
        assert!(TimeIndex::from_bytes(&[0; 13]).is_err());
        assert!(TimeIndex::from_bytes(&[0; 24]).is_err());
    }
}
