//! Sparse offset index of one segment: (relative offset u32 BE, file position u32 BE) entries.
//!
//! Each entry names a batch boundary: the batch starting at `position` has base offset
//! `segment base + relative_offset`. Entries are strictly increasing in both fields. The
//! index is kept in memory and written whole to `<base>.index` at checkpoint time.

/// Bytes per on-disk entry.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// The in-memory sparse offset index.
#[derive(Debug, Clone, Default)]
pub struct OffsetIndex {
    entries: Vec<OffsetIndexEntry>,
}

impl OffsetIndex {
    /// Parses index file bytes. Returns a reason when the file must be rebuilt: size not a
    /// multiple of the entry size, entries not strictly increasing, or a position at or past
    /// `log_size_bytes`.
    pub fn from_bytes(bytes: &[u8], log_size_bytes: u64) -> Result<OffsetIndex, String> {
        if !bytes.len().is_multiple_of(OFFSET_INDEX_ENTRY_BYTES) {
            return Err(format!(
                "size {} is not a multiple of {OFFSET_INDEX_ENTRY_BYTES}",
                bytes.len()
            ));
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let entry = OffsetIndexEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            if u64::from(entry.position) >= log_size_bytes {
                return Err(format!(
                    "entry position {} is past the log end {log_size_bytes}",
                    entry.position
                ));
            }
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
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
        let mut bytes = Vec::with_capacity(self.entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
            bytes.extend_from_slice(&entry.position.to_be_bytes());
        }
        bytes
    }

    /// Appends an entry; it must be past the last one in both fields.
    pub fn push(&mut self, entry: OffsetIndexEntry) {
        debug_assert!(self.entries.last().is_none_or(|last| {
            last.relative_offset < entry.relative_offset && last.position < entry.position
        }));
        self.entries.push(entry);
    }

    /// The last entry whose relative offset is <= `relative_offset`, or the segment start.
    pub fn floor_by_offset(&self, relative_offset: u32) -> OffsetIndexEntry {
        let count = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        self.entry_before(count)
    }

    /// The last entry whose position is <= `position`, or the segment start.
    pub fn floor_by_position(&self, position: u32) -> OffsetIndexEntry {
        let count = self
            .entries
            .partition_point(|entry| entry.position <= position);
        self.entry_before(count)
    }

    fn entry_before(&self, count: usize) -> OffsetIndexEntry {
        match count.checked_sub(1) {
            Some(i) => self.entries[i],
            None => OffsetIndexEntry {
                relative_offset: 0,
                position: 0,
            },
        }
    }

    /// Keeps only entries with position <= `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let count = self
            .entries
            .partition_point(|entry| entry.position <= position);
        self.entries.truncate(count);
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<OffsetIndexEntry> {
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

    fn entry(relative_offset: u32, position: u32) -> OffsetIndexEntry {
        OffsetIndexEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn round_trips_and_floors() {
        let mut index = OffsetIndex::default();
        index.push(entry(0, 0));
        index.push(entry(10, 100));
        index.push(entry(20, 250));
        let parsed = OffsetIndex::from_bytes(&index.to_bytes(), 300).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed.floor_by_offset(15), entry(10, 100));
        assert_eq!(parsed.floor_by_offset(20), entry(20, 250));
        assert_eq!(parsed.floor_by_position(249), entry(10, 100));
        assert_eq!(OffsetIndex::default().floor_by_offset(7), entry(0, 0));
    }

    #[test]
    fn rejects_bad_files() {
        assert!(OffsetIndex::from_bytes(&[0; 7], 100).is_err());
        assert!(OffsetIndex::from_bytes(&[0; 16], 100).is_err());
        let mut index = OffsetIndex::default();
        index.push(entry(1, 10));
        assert!(OffsetIndex::from_bytes(&index.to_bytes(), 10).is_err());
        assert!(OffsetIndex::from_bytes(&index.to_bytes(), 11).is_ok());
    }
}
