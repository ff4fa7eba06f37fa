//! Durable raft storage in one directory (`metadata/` under the data dir).
//!
//! Files:
//! - `raft.log`: append-only frames `[payload length u32 LE][crc32c(payload) u32 LE][payload]`,
//!   payload = JSON of a [`LogFrame`] (a raft entry, or the "purged up to" marker that starts
//!   a rewritten log). Appends are fsynced before openraft is told they are durable.
//!   Truncation of conflicting entries cuts the file at the first removed entry. Purging
//!   (after a snapshot) rewrites the file through a temporary file and a rename.
//! - `vote.json`: the last vote, replaced atomically (temporary file, fsync, rename, fsync of
//!   the directory) before any vote is answered.
//! - `committed.json`: the last known commit index, a hint replaced by rename without fsync
//!   (an unreadable one is ignored).
//! - `snapshot.json`: the latest snapshot (meta + metadata image), replaced atomically.
//!
//! Recovery reads `raft.log` front to back and stops at the first frame that is incomplete,
//! too large or fails its CRC: only a torn tail can be damaged (every acknowledged frame was
//! fsynced before anything after it was written), so the file is cut there and nothing
//! acknowledged is lost.
//!
//! Metadata is small: the log entries since the last snapshot are also kept in memory, and
//! all file access is synchronous `std::fs` (like `sluice-log`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::image::MetadataImage;
use crate::{ApplyResult, NodeId, TypeConfig};

/// Largest frame accepted when reading the log; a larger length is a torn or corrupt tail.
pub const LOG_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
const FRAME_HEADER_BYTES: usize = 8;
const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: io::Error,
) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, error)
}

fn json_error(error: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// One frame of `raft.log`.
#[derive(Debug, Serialize, Deserialize)]
enum LogFrame {
    Entry(Entry<TypeConfig>),
    /// Entries up to and including this id were purged (first frame of a rewritten log).
    Purged(LogId<NodeId>),
}

/// The borrowed twin of [`LogFrame`], serialized identically (same variant names), so that
/// appending does not have to clone entries.
#[derive(Serialize)]
enum LogFrameRef<'a> {
    Entry(&'a Entry<TypeConfig>),
    Purged(&'a LogId<NodeId>),
}

fn encode_frame(frame: &LogFrameRef<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(frame).map_err(json_error)?;
    if payload.len() > LOG_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "log frame of {} bytes exceeds {LOG_FRAME_BYTES_MAX}",
                payload.len()
            ),
        ));
    }
    let length =
        u32::try_from(payload.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Decode frames from `bytes`; returns them with their start offsets, and the length of the
/// valid prefix (everything after it is a torn tail).
///
/// A frame whose checksum is right but whose payload does not decode is not a torn write:
/// it was written whole by a program that understood it (a newer version, or a bug). Cutting
/// it could drop committed entries, so that is an error and the node refuses to start.
fn decode_frames(bytes: &[u8]) -> io::Result<(Vec<(u64, LogFrame)>, usize)> {
    let mut frames = Vec::new();
    let mut position = 0;
    while bytes.len() - position >= FRAME_HEADER_BYTES {
        let header = &bytes[position..position + FRAME_HEADER_BYTES];
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = position + FRAME_HEADER_BYTES;
        if length > LOG_FRAME_BYTES_MAX || bytes.len() - start < length {
            break;
        }
        let payload = &bytes[start..start + length];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let frame = serde_json::from_slice::<LogFrame>(payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "metadata log frame at byte {position} has a valid checksum but cannot be \
                     decoded (written by a newer version?): {e}"
                ),
            )
        })?;
        frames.push((position as u64, frame));
        position = start + length;
    }
    Ok((frames, position))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` atomically with `bytes`: temporary file, fsync, rename, fsync directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path without a directory"))?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// Replace `path` by rename but without fsync: for `committed.json`, which is only a hint
/// (it lets a restarted node apply committed entries before it hears from a leader). It is
/// written on every commit, so two fsyncs each time would be pure cost; if it is lost or
/// torn by a power failure, [`read_committed_hint`] treats it as absent and the node learns
/// the commit index from the leader as usual.
fn write_hint(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

fn read_committed_hint(path: &Path) -> Option<LogId<NodeId>> {
    match read_json_file::<Option<LogId<NodeId>>>(path) {
        Ok(committed) => committed.flatten(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable committed index hint");
            None
        }
    }
}

fn read_json_file<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(json_error),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

struct LogInner {
    dir: PathBuf,
    file: File,
    file_len_bytes: u64,
    /// Entries after the last purge, with the file offset of their frame.
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogInner {
    fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (frames, valid_len) = decode_frames(&bytes)?;
        if valid_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = valid_len,
                torn_bytes = bytes.len() - valid_len,
                "cutting the torn tail of the metadata log"
            );
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for (offset, frame) in frames {
            match frame {
                LogFrame::Entry(entry) => {
                    // A later entry at the same index replaces an earlier one only if the
                    // file was not cut on truncation (it always is); keep the newest anyway.
                    let index = entry.log_id.index;
                    entries.split_off(&index);
                    entries.insert(index, (entry, offset));
                }
                LogFrame::Purged(log_id) => {
                    entries = entries.split_off(&(log_id.index + 1));
                    last_purged = Some(log_id);
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            file_len_bytes: valid_len as u64,
            entries,
            last_purged,
            vote: read_json_file(&dir.join(VOTE_FILE))?,
            committed: read_committed_hint(&dir.join(COMMITTED_FILE)),
        })
    }

    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut buffer = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = self.file_len_bytes + buffer.len() as u64;
            encode_frame(&LogFrameRef::Entry(&entry), &mut buffer)?;
            placed.push((entry, offset));
        }
        self.file.write_all(&buffer)?;
        self.file.sync_data()?;
        self.file_len_bytes += buffer.len() as u64;
        for (entry, offset) in placed {
            self.entries.insert(entry.log_id.index, (entry, offset));
        }
        Ok(())
    }

    /// Remove entries at `index` and after, from memory and from the file.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        // The file is cut first: memory changes only once the disk agrees.
        if let Some((_, (_, offset))) = self.entries.range(index..).next() {
            let offset = *offset;
            self.file.set_len(offset)?;
            self.file.sync_all()?;
            self.file_len_bytes = offset;
        }
        self.entries.split_off(&index);
        Ok(())
    }

    /// Forget entries up to and including `log_id`; rewrite the log without them.
    fn purge(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        let mut buffer = Vec::new();
        encode_frame(&LogFrameRef::Purged(&log_id), &mut buffer)?;
        let mut offsets = Vec::new();
        for (index, (entry, _)) in self.entries.range(log_id.index + 1..) {
            offsets.push((*index, buffer.len() as u64));
            encode_frame(&LogFrameRef::Entry(entry), &mut buffer)?;
        }
        let path = self.dir.join(LOG_FILE);
        write_atomic(&path, &buffer)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.file_len_bytes = buffer.len() as u64;
        self.entries = self.entries.split_off(&(log_id.index + 1));
        for (index, offset) in offsets {
            if let Some(slot) = self.entries.get_mut(&index) {
                slot.1 = offset;
            }
        }
        self.last_purged = Some(log_id);
        Ok(())
    }
}

/// The raft log and vote store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Open (or create) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Mutex::new(LogInner::open(dir)?)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A poisoned lock means a panic while holding it; the data is still the last
        // consistent state because every mutation finishes its I/O before touching memory.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Indexes of the entries held (for tests and diagnostics).
    pub fn entry_indexes(&self) -> Vec<u64> {
        self.lock().entries.keys().copied().collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.lock();
        let last_log_id = inner
            .entries
            .values()
            .next_back()
            .map(|(entry, _)| entry.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, json_error(e)))?;
        write_atomic(&inner.dir.join(VOTE_FILE), &bytes)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(&committed)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, json_error(e)))?;
        write_hint(&inner.dir.join(COMMITTED_FILE), &bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self.lock().append(entries);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "metadata log append failed");
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.lock()
            .truncate(log_id.index)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.lock()
            .purge(log_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: MetadataImage,
}

struct StateMachineInner {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<StoredSnapshot>,
    image_sender: watch::Sender<Arc<MetadataImage>>,
}

/// The state machine: applies metadata records to the image and publishes each new image.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<StateMachineInner>>,
}

impl StateMachineStore {
    /// Open the state machine in `dir`, starting from the stored snapshot if there is one.
    pub fn open(dir: &Path) -> io::Result<(Self, watch::Receiver<Arc<MetadataImage>>)> {
        std::fs::create_dir_all(dir)?;
        let snapshot: Option<StoredSnapshot> = read_json_file(&dir.join(SNAPSHOT_FILE))?;
        let (image, last_applied, membership) = match &snapshot {
            Some(s) => (
                s.image.clone(),
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            ),
            None => (MetadataImage::default(), None, StoredMembership::default()),
        };
        let (image_sender, receiver) = watch::channel(Arc::new(image.clone()));
        let inner = StateMachineInner {
            dir: dir.to_path_buf(),
            image,
            last_applied,
            membership,
            snapshot,
            image_sender,
        };
        Ok((
            Self {
                inner: Arc::new(Mutex::new(inner)),
            },
            receiver,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, StateMachineInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut inner = self.lock();
        let snapshot_id = match inner.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_string(),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id,
            },
            image: inner.image.clone(),
        };
        let write_error = |e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let file_bytes = serde_json::to_vec(&stored).map_err(|e| write_error(json_error(e)))?;
        write_atomic(&inner.dir.join(SNAPSHOT_FILE), &file_bytes).map_err(write_error)?;
        let data = serde_json::to_vec(&stored.image).map_err(|e| write_error(json_error(e)))?;
        let meta = stored.meta.clone();
        inner.snapshot = Some(stored);
        tracing::info!(last_log_id = ?meta.last_log_id, "metadata snapshot written");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for record in &batch.records {
                        inner.image.apply(index, record);
                    }
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            inner.image.last_applied_index = index;
            inner.last_applied = Some(entry.log_id);
            results.push(ApplyResult { index });
        }
        let image = Arc::new(inner.image.clone());
        inner.image_sender.send_replace(image);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let read_error = |e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        };
        let image: MetadataImage =
            serde_json::from_slice(snapshot.get_ref()).map_err(|e| read_error(json_error(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image,
        };
        let mut inner = self.lock();
        let write_error = |e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| write_error(json_error(e)))?;
        write_atomic(&inner.dir.join(SNAPSHOT_FILE), &bytes).map_err(write_error)?;
        inner.image = stored.image.clone();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        let image = Arc::new(inner.image.clone());
        inner.image_sender.send_replace(image);
        tracing::info!(last_log_id = ?meta.last_log_id, "installed metadata snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.lock();
        let Some(stored) = &inner.snapshot else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&stored.image)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, json_error(e)))?;
        Ok(Some(Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::records::{ConfigResource, MetadataBatch, MetadataRecord};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(MetadataBatch::new(vec![MetadataRecord::Config {
                resource: ConfigResource::ClusterDefault,
                name: format!("k{index}"),
                value: Some(term.to_string()),
            }])),
        }
    }

    fn open(dir: &Path) -> LogInner {
        LogInner::open(dir).unwrap()
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append((1..=5).map(|i| entry(1, i)).collect()).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(
            log.entries.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(log.entries[&3].0.log_id, entry(1, 3).log_id);
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append((1..=3).map(|i| entry(1, i)).collect()).unwrap();
        let full = log.file_len_bytes;
        let third_start = log.entries[&3].1;
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let bytes = std::fs::read(&path).unwrap();
        // Cut the last frame at every byte: the first two entries always survive.
        for cut in third_start..full {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let log = open(dir.path());
            assert_eq!(
                log.entries.keys().copied().collect::<Vec<_>>(),
                vec![1, 2],
                "cut at {cut}"
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), third_start);
        }
        // A flipped byte in the last payload fails its CRC.
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 2;
        corrupt[last] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        let mut log = open(dir.path());
        assert_eq!(log.entries.len(), 2);
        // Appending after the cut works and survives a reopen.
        log.append(vec![entry(2, 3)]).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.entries[&3].0.log_id, entry(2, 3).log_id);
    }

    #[test]
    fn truncation_removes_conflicting_entries_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append((1..=5).map(|i| entry(1, i)).collect()).unwrap();
        log.truncate(3).unwrap();
        log.append(vec![entry(2, 3), entry(2, 4)]).unwrap();
        drop(log);
        let log = open(dir.path());
        let ids: Vec<_> = log.entries.values().map(|(e, _)| e.log_id).collect();
        assert_eq!(
            ids,
            vec![
                entry(1, 1).log_id,
                entry(1, 2).log_id,
                entry(2, 3).log_id,
                entry(2, 4).log_id
            ]
        );
    }

    #[test]
    fn purge_rewrites_the_log_and_remembers_the_purged_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append((1..=6).map(|i| entry(1, i)).collect()).unwrap();
        log.purge(entry(1, 4).log_id).unwrap();
        log.append(vec![entry(1, 7)]).unwrap();
        // Truncation after a purge cuts at the right place of the rewritten file.
        log.truncate(7).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.last_purged, Some(entry(1, 4).log_id));
        assert_eq!(log.entries.keys().copied().collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn undecodable_frame_with_valid_checksum_refuses_to_open_instead_of_cutting() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(vec![entry(1, 1)]).unwrap();
        drop(log);
        // A whole frame from a "newer version": a record type this build does not know.
        let payload = br#"{"Entry":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":2},"payload":{"Normal":{"version":9,"records":[{"type":"FromTheFuture"}]}}}}"#;
        let mut frame = Vec::new();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let len_before = bytes.len();
        bytes.extend_from_slice(&frame);
        std::fs::write(&path, &bytes).unwrap();
        let err = LogInner::open(dir.path())
            .err()
            .expect("must refuse to open");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            std::fs::metadata(&path).unwrap().len() > len_before as u64,
            "nothing was cut"
        );
    }

    #[tokio::test]
    async fn vote_and_committed_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let vote = Vote::new(3, 2);
        store.save_vote(&vote).await.unwrap();
        store
            .save_committed(Some(entry(3, 9).log_id))
            .await
            .unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            store.read_committed().await.unwrap(),
            Some(entry(3, 9).log_id)
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, None);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever it accepts is a prefix.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            // (An undecodable frame with a valid checksum is an error, not a panic.)
            let Ok((frames, valid)) = decode_frames(&bytes) else {
                return Ok(());
            };
            proptest::prop_assert!(valid <= bytes.len());
            proptest::prop_assert!(frames.len() <= bytes.len() / FRAME_HEADER_BYTES);
        }

        /// Valid frames followed by garbage (a torn or overwritten tail): every whole frame
        /// before the garbage is kept, in order.
        #[test]
        fn valid_prefix_survives_any_tail(
            count in 0u64..8,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut bytes = Vec::new();
            for index in 1..=count {
                encode_frame(&LogFrameRef::Entry(&entry(1, index)), &mut bytes).unwrap();
            }
            let valid_len = bytes.len();
            bytes.extend_from_slice(&tail);
            let (frames, valid) = decode_frames(&bytes).unwrap();
            proptest::prop_assert!(valid >= valid_len);
            let indexes: Vec<u64> = frames
                .iter()
                .filter_map(|(_, f)| match f {
                    LogFrame::Entry(e) => Some(e.log_id.index),
                    LogFrame::Purged(_) => None,
                })
                .take(count as usize)
                .collect();
            proptest::prop_assert_eq!(indexes, (1..=count).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn torn_committed_hint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(COMMITTED_FILE), b"{\"leader_id\":").unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn state_machine_snapshot_restores_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, mut receiver) = StateMachineStore::open(dir.path()).unwrap();
        let results = sm.apply(vec![entry(1, 1), entry(1, 2)]).await.unwrap();
        assert_eq!(
            results,
            vec![ApplyResult { index: 1 }, ApplyResult { index: 2 }]
        );
        assert!(receiver.has_changed().unwrap());
        let image = receiver.borrow_and_update().clone();
        assert_eq!(image.last_applied_index, 2);
        assert_eq!(image.configs[&ConfigResource::ClusterDefault].len(), 2);
        let snapshot = sm.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(entry(1, 2).log_id));
        // Reopen: the image comes back from the snapshot.
        let (mut reopened, receiver) = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(*receiver.borrow().as_ref(), *image);
        let (applied, _) = reopened.applied_state().await.unwrap();
        assert_eq!(applied, Some(entry(1, 2).log_id));
        // Installing the snapshot on another node gives the same image.
        let other_dir = tempfile::tempdir().unwrap();
        let (mut other, other_receiver) = StateMachineStore::open(other_dir.path()).unwrap();
        let current = reopened.get_current_snapshot().await.unwrap().unwrap();
        other
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(*other_receiver.borrow().as_ref(), *image);
    }
}
