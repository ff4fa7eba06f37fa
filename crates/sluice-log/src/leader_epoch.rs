//! The leader epoch cache: for each leader epoch the log has data of, the offset of its
//! first batch (Kafka's `LeaderEpochFileCache`, file `leader-epoch-checkpoint`).
//!
//! It answers OffsetForLeaderEpoch (KIP-101, KIP-279, KIP-320): "where does epoch E end
//! in this log?", which a follower asks after a leader change to find where its log
//! diverges from the new leader's, and a consumer asks to check that its position still
//! exists after an unclean leader change. An entry is added when the first batch of a
//! newer epoch is appended; entries past the log end are dropped when the log is cut
//! back, and entries wholly below the log start when it moves up.
//!
//! File format (Kafka's, so tools recognise it): a version line `0`, a count line, then
//! one `epoch start_offset` line per entry, oldest first. It is rewritten atomically on
//! every change, before the batch that needs the new entry is written, so the file never
//! lacks an entry for data on disk (an entry past the log end after a crash is dropped at
//! open).

use std::path::{Path, PathBuf};

use crate::checkpoint::write_atomically;
use crate::LogError;

/// File name of the leader epoch cache inside a partition directory.
pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// Epoch and offset answered when the requested epoch is unknown (Kafka's
/// `UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
const FORMAT_VERSION: &str = "0";

/// The first offset written under one leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Epoch entries, strictly increasing in both epoch and start offset.
#[derive(Debug)]
pub struct LeaderEpochCache {
    dir: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Reads the checkpoint of `dir`. `Ok(None)` when it is missing or unreadable (the
    /// caller rebuilds the entries from the batches): a damaged cache is rebuilt, never
    /// trusted.
    pub fn load(dir: &Path) -> Result<Option<LeaderEpochCache>, LogError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        match parse(&text) {
            Some(entries) => Ok(Some(LeaderEpochCache {
                dir: dir.to_path_buf(),
                entries,
            })),
            None => {
                tracing::warn!(path = %path.display(), "leader epoch checkpoint is malformed; rebuilding it from the log");
                Ok(None)
            }
        }
    }

    /// An empty cache for `dir` (not yet written).
    pub fn empty(dir: &Path) -> LeaderEpochCache {
        LeaderEpochCache {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        }
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|entry| entry.epoch)
    }

    /// Records that `epoch` starts at `start_offset`, in memory. True when that changed
    /// anything (an older or equal epoch changes nothing: batches of a log only carry
    /// epochs that never decrease). Entries at or after `start_offset` are dropped first:
    /// they describe data that is being overwritten.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| latest >= epoch) {
            return false;
        }
        self.entries
            .retain(|entry| entry.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Drops entries that start at or after `end_offset` (the log was cut back to it).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < end_offset);
        self.entries.len() != before
    }

    /// Drops entries wholly below `start_offset` (the log start moved up) and moves the
    /// entry covering it up to it.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let covering = self
            .entries
            .iter()
            .rposition(|entry| entry.start_offset <= start_offset);
        let Some(covering) = covering else {
            return false;
        };
        let changed = covering > 0 || self.entries[covering].start_offset != start_offset;
        self.entries.drain(..covering);
        if let Some(first) = self.entries.first_mut() {
            first.start_offset = start_offset;
        }
        changed
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `requested` and the offset where it
    /// ends (the start of the next epoch, or `log_end_offset` for the latest epoch).
    /// Kafka's answers for the edge cases: a requested epoch newer than every entry, or an
    /// empty cache, is unknown (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`); one older than
    /// every entry ends where the first entry starts.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end_offset);
        }
        let Some(higher) = self
            .entries
            .iter()
            .position(|entry| entry.epoch > requested)
        else {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        };
        let end_offset = self.entries[higher].start_offset;
        match higher.checked_sub(1) {
            Some(floor) => (self.entries[floor].epoch, end_offset),
            None => (requested, end_offset),
        }
    }

    /// Writes the cache atomically.
    pub fn persist(&self) -> Result<(), LogError> {
        let mut text = format!("{FORMAT_VERSION}\n{}\n", self.entries.len());
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        write_atomically(&self.dir, LEADER_EPOCH_CHECKPOINT_FILE, text.as_bytes())?;
        Ok(())
    }
}

/// Parses the checkpoint text; `None` if anything about it is off.
fn parse(bytes: &[u8]) -> Option<Vec<EpochEntry>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != FORMAT_VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let line = lines.next()?;
        let mut fields = line.split_whitespace();
        let epoch: i32 = fields.next()?.parse().ok()?;
        let start_offset: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() || epoch < 0 || start_offset < 0 {
            return None;
        }
        if let Some(last) = entries.last() {
            if epoch <= last.epoch || start_offset <= last.start_offset {
                return None;
            }
        }
        entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    if lines.any(|line| !line.trim().is_empty()) {
        return None;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::empty(Path::new("/nonexistent"));
        for &(epoch, start_offset) in entries {
            assert!(cache.assign(epoch, start_offset));
        }
        cache
    }

    fn pairs(cache: &LeaderEpochCache) -> Vec<(i32, i64)> {
        cache
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_keeps_epochs_and_offsets_increasing() {
        let mut c = cache(&[(0, 0), (2, 10)]);
        assert!(!c.assign(2, 15), "same epoch: no new entry");
        assert!(!c.assign(1, 20), "older epoch: ignored");
        assert!(c.assign(5, 30));
        assert_eq!(pairs(&c), [(0, 0), (2, 10), (5, 30)]);
        // A newer epoch starting below existing entries replaces them (overwritten data).
        assert!(c.assign(7, 10));
        assert_eq!(pairs(&c), [(0, 0), (7, 10)]);
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 100), (4, 250)]);
        let leo = 300;
        assert_eq!(
            c.end_offset_for(4, leo),
            (4, 300),
            "latest epoch ends at the log end"
        );
        assert_eq!(c.end_offset_for(3, leo), (3, 250));
        assert_eq!(
            c.end_offset_for(2, leo),
            (1, 100),
            "a gap answers the floor epoch"
        );
        assert_eq!(c.end_offset_for(1, leo), (1, 100));
        assert_eq!(
            c.end_offset_for(0, leo),
            (0, 0),
            "older than all: first start"
        );
        assert_eq!(
            c.end_offset_for(9, leo),
            (-1, -1),
            "newer than all: unknown"
        );
        assert_eq!(c.end_offset_for(-1, leo), (-1, -1));
        assert_eq!(cache(&[]).end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 100), (4, 250)]);
        assert!(c.truncate_from_end(250));
        assert_eq!(pairs(&c), [(1, 0), (3, 100)]);
        assert!(!c.truncate_from_end(500));
        assert!(c.truncate_from_start(120));
        assert_eq!(pairs(&c), [(3, 120)]);
        assert!(!c.truncate_from_start(120));
        assert!(
            !c.truncate_from_start(50),
            "below every entry: nothing to drop"
        );
    }

    #[test]
    fn persists_in_kafkas_format_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LeaderEpochCache::load(dir.path()).unwrap().is_none());
        let mut c = LeaderEpochCache::empty(dir.path());
        c.assign(0, 0);
        c.assign(2, 57);
        c.persist().unwrap();
        let text = std::fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n2\n0 0\n2 57\n");
        let loaded = LeaderEpochCache::load(dir.path()).unwrap().unwrap();
        assert_eq!(pairs(&loaded), [(0, 0), (2, 57)]);
        for damaged in [
            "0\n2\n0 0\n",       // fewer entries than counted
            "1\n0\n",            // unknown version
            "0\n2\n2 57\n0 0\n", // not increasing
            "0\n1\n0 0 9\n",     // extra field
            "0\n1\n-3 0\n",      // negative epoch
            "0\n1\n0 0\n5 9\n",  // more entries than counted
            "\u{0}\u{1}garbage",
        ] {
            std::fs::write(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE), damaged).unwrap();
            assert!(
                LeaderEpochCache::load(dir.path()).unwrap().is_none(),
                "{damaged:?} must not load"
            );
        }
    }
}
