//! Duplicate suppression for the processing helper: a [`Deduplicator`] remembers the ids of
//! records already handled, so a redelivered record (a consumer restarted before its commit,
//! a producer retry, a replay) is skipped instead of handled twice.
//!
//! The trait separates [`Deduplicator::seen`] from [`Deduplicator::mark`] because the
//! processor must mark an id only after the handler succeeded: marking before would let a
//! record whose handler failed (and that was never parked) be suppressed when it is
//! delivered again, which is a loss.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Why a deduplication store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("dedup store {path}: {source}")]
    Store {
        path: PathBuf,
        source: Box<redb::Error>,
    },
}

/// Remembers which record ids were handled.
pub trait Deduplicator: Send + Sync {
    /// True when `id` was marked before (and is still remembered).
    fn seen(&self, id: &[u8]) -> Result<bool, DedupError>;

    /// Remembers `id` as handled.
    fn mark(&self, id: &[u8]) -> Result<(), DedupError>;

    /// `seen`, then `mark` when it was not: for callers with nothing that can fail in
    /// between. Returns true when `id` was seen before.
    fn check_and_mark(&self, id: &[u8]) -> Result<bool, DedupError> {
        if self.seen(id)? {
            return Ok(true);
        }
        self.mark(id)?;
        Ok(false)
    }
}

/// Where a record's dedup id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKey {
    /// The value of the first header with this name (e.g. `message-id`); records without it
    /// are not deduplicated.
    Header(String),
    /// The record key; keyless records are not deduplicated.
    RecordKey,
}

impl DedupKey {
    /// The id of `record`, if it has one.
    pub fn id_of<'a>(&self, record: &'a crate::record::ConsumerRecord) -> Option<&'a [u8]> {
        match self {
            DedupKey::Header(name) => record.header(name)?.value.as_deref(),
            DedupKey::RecordKey => record.key.as_deref(),
        }
    }
}

/// The default capacity of the dedup stores (ids remembered).
pub const DEDUP_CAPACITY_DEFAULT: usize = 100_000;

/// An in-memory, bounded dedup store: remembers the last `capacity` ids marked and forgets
/// the oldest first. Lost on restart; use [`RedbDedup`] to survive one.
pub struct MemoryDedup {
    capacity: usize,
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    ids: HashMap<Vec<u8>, u64>,
    /// (sequence, id) in marking order; the sequence tells a stale entry (an id marked
    /// again later) from the live one.
    order: VecDeque<(u64, Vec<u8>)>,
    next_sequence: u64,
}

impl MemoryDedup {
    /// A store remembering up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> MemoryDedup {
        MemoryDedup {
            capacity: capacity.max(1),
            state: Mutex::new(MemoryState::default()),
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        lock(&self.state).ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryDedup {
    fn default() -> Self {
        MemoryDedup::new(DEDUP_CAPACITY_DEFAULT)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the maps consistent (every update is a
    // single insert or remove), so the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Deduplicator for MemoryDedup {
    fn seen(&self, id: &[u8]) -> Result<bool, DedupError> {
        Ok(lock(&self.state).ids.contains_key(id))
    }

    fn mark(&self, id: &[u8]) -> Result<(), DedupError> {
        let mut state = lock(&self.state);
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        state.ids.insert(id.to_vec(), sequence);
        state.order.push_back((sequence, id.to_vec()));
        while state.ids.len() > self.capacity {
            let Some((sequence, oldest)) = state.order.pop_front() else {
                break;
            };
            if state.ids.get(&oldest) == Some(&sequence) {
                state.ids.remove(&oldest);
            }
        }
        // Stale entries of re-marked ids would otherwise pile up in `order`.
        if state.order.len() > self.capacity.saturating_mul(2) {
            let MemoryState { ids, order, .. } = &mut *state;
            order.retain(|(sequence, id)| ids.get(id) == Some(sequence));
        }
        Ok(())
    }
}

/// Settings of a [`RedbDedup`] store.
#[derive(Debug, Clone)]
pub struct RedbDedupConfig {
    /// Ids remembered at most; the oldest are forgotten first.
    pub capacity: usize,
    /// Ids older than this are forgotten (`None`: only the capacity bounds the store).
    pub retention_ms: Option<u64>,
    /// fsync every mark (true) or let redb persist marks eventually (faster; a crash may
    /// forget the last marks, which only risks a duplicate, never a loss).
    pub sync_each_mark: bool,
}

impl Default for RedbDedupConfig {
    fn default() -> Self {
        RedbDedupConfig {
            capacity: DEDUP_CAPACITY_DEFAULT,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            sync_each_mark: true,
        }
    }
}

/// id -> (sequence, marked at ms since the epoch)
const IDS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("ids");
/// sequence -> id, in marking order, for evicting the oldest.
const ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("order");

/// A durable dedup store in one file (the embedded `redb` database): survives restarts of
/// the process, bounded by a capacity and an age.
pub struct RedbDedup {
    path: PathBuf,
    db: Database,
    config: RedbDedupConfig,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl RedbDedup {
    /// Opens the store at `path`, creating it when missing.
    pub fn open(path: impl AsRef<Path>, config: RedbDedupConfig) -> Result<RedbDedup, DedupError> {
        let path = path.as_ref().to_path_buf();
        let store_error = |source: redb::Error| DedupError::Store {
            path: path.clone(),
            source: Box::new(source),
        };
        let db = Database::create(&path).map_err(|e| store_error(e.into()))?;
        // Create the tables so that reads of a fresh store find them.
        let txn = db.begin_write().map_err(|e| store_error(e.into()))?;
        txn.open_table(IDS).map_err(|e| store_error(e.into()))?;
        txn.open_table(ORDER).map_err(|e| store_error(e.into()))?;
        txn.commit().map_err(|e| store_error(e.into()))?;
        Ok(RedbDedup { path, db, config })
    }

    fn error(&self, source: impl Into<redb::Error>) -> DedupError {
        DedupError::Store {
            path: self.path.clone(),
            source: Box::new(source.into()),
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> Result<u64, DedupError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let ids = txn.open_table(IDS).map_err(|e| self.error(e))?;
        ids.len().map_err(|e| self.error(e))
    }

    pub fn is_empty(&self) -> Result<bool, DedupError> {
        Ok(self.len()? == 0)
    }

    fn expired(&self, marked_at_ms: u64, now_ms: u64) -> bool {
        self.config
            .retention_ms
            .is_some_and(|retention| now_ms.saturating_sub(marked_at_ms) > retention)
    }
}

impl Deduplicator for RedbDedup {
    fn seen(&self, id: &[u8]) -> Result<bool, DedupError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let ids = txn.open_table(IDS).map_err(|e| self.error(e))?;
        let found = ids.get(id).map_err(|e| self.error(e))?;
        Ok(found.is_some_and(|entry| !self.expired(entry.value().1, now_ms())))
    }

    fn mark(&self, id: &[u8]) -> Result<(), DedupError> {
        let now = now_ms();
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        if !self.config.sync_each_mark {
            txn.set_durability(Durability::Eventual);
        }
        {
            let mut ids = txn.open_table(IDS).map_err(|e| self.error(e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| self.error(e))?;
            let sequence = order
                .last()
                .map_err(|e| self.error(e))?
                .map_or(0, |(last, _)| last.value() + 1);
            let previous = ids
                .insert(id, (sequence, now))
                .map_err(|e| self.error(e))?
                .map(|old| old.value().0);
            if let Some(previous) = previous {
                order.remove(previous).map_err(|e| self.error(e))?;
            }
            order.insert(sequence, id).map_err(|e| self.error(e))?;
            // Evict the oldest beyond the capacity or the retention.
            loop {
                let over_capacity =
                    ids.len().map_err(|e| self.error(e))? > self.config.capacity.max(1) as u64;
                let Some((oldest_sequence, oldest_id)) = order
                    .first()
                    .map_err(|e| self.error(e))?
                    .map(|(s, i)| (s.value(), i.value().to_vec()))
                else {
                    break;
                };
                let marked_at = ids
                    .get(oldest_id.as_slice())
                    .map_err(|e| self.error(e))?
                    .map_or(0, |entry| entry.value().1);
                if !over_capacity && !self.expired(marked_at, now) {
                    break;
                }
                order.remove(oldest_sequence).map_err(|e| self.error(e))?;
                ids.remove(oldest_id.as_slice())
                    .map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// Dedup ids being processed right now. A record whose id another lane is handling waits
/// for it and only then asks the store, which the first one marked if it handled the
/// record: without this two records with one id on different keys (or partitions) could
/// both pass `seen` and both be handled.
#[derive(Default)]
pub(crate) struct InFlightIds {
    ids: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds an id until dropped.
pub(crate) struct InFlightId {
    owner: Arc<InFlightIds>,
    id: Vec<u8>,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl InFlightIds {
    /// Waits until no other holder has `id`, then holds it.
    pub(crate) async fn claim(self: &Arc<Self>, id: &[u8]) -> InFlightId {
        let lock = {
            let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(ids.entry(id.to_vec()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        InFlightId {
            owner: Arc::clone(self),
            id: id.to_vec(),
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for InFlightId {
    fn drop(&mut self) {
        self.guard = None;
        let mut ids = self
            .owner
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under this lock: two references (the map's and ours) mean
        // nobody else waits for the id.
        if Arc::strong_count(&self.lock) == 2 {
            ids.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_dedup_remembers_marked_ids_and_evicts_the_oldest() {
        let dedup = MemoryDedup::new(3);
        assert!(!dedup.seen(b"a").unwrap());
        dedup.mark(b"a").unwrap();
        assert!(dedup.seen(b"a").unwrap());
        assert!(!dedup.check_and_mark(b"b").unwrap());
        assert!(dedup.check_and_mark(b"b").unwrap());
        dedup.mark(b"c").unwrap();
        dedup.mark(b"d").unwrap();
        assert_eq!(dedup.len(), 3);
        assert!(!dedup.seen(b"a").unwrap(), "oldest evicted");
        assert!(dedup.seen(b"b").unwrap());
        assert!(dedup.seen(b"d").unwrap());
    }

    #[test]
    fn memory_dedup_re_marking_refreshes_an_id() {
        let dedup = MemoryDedup::new(2);
        dedup.mark(b"a").unwrap();
        dedup.mark(b"b").unwrap();
        dedup.mark(b"a").unwrap();
        dedup.mark(b"c").unwrap();
        assert!(dedup.seen(b"a").unwrap());
        assert!(!dedup.seen(b"b").unwrap());
        for i in 0..100u32 {
            dedup.mark(b"x").unwrap();
            dedup.mark(&i.to_be_bytes()).unwrap();
        }
        assert_eq!(dedup.len(), 2);
        assert!(lock(&dedup.state).order.len() <= 4);
    }

    #[test]
    fn redb_dedup_survives_reopening_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.redb");
        let config = RedbDedupConfig {
            capacity: 3,
            retention_ms: None,
            sync_each_mark: true,
        };
        {
            let dedup = RedbDedup::open(&path, config.clone()).unwrap();
            assert!(dedup.is_empty().unwrap());
            for id in [b"a", b"b", b"c", b"d"] {
                assert!(!dedup.check_and_mark(id).unwrap());
            }
            dedup.mark(b"b").unwrap();
            dedup.mark(b"e").unwrap();
        }
        let dedup = RedbDedup::open(&path, config).unwrap();
        assert_eq!(dedup.len().unwrap(), 3);
        assert!(!dedup.seen(b"a").unwrap());
        assert!(
            !dedup.seen(b"c").unwrap(),
            "c is the oldest after b was re-marked"
        );
        assert!(dedup.seen(b"b").unwrap());
        assert!(dedup.seen(b"d").unwrap());
        assert!(dedup.seen(b"e").unwrap());
    }

    #[test]
    fn redb_dedup_forgets_ids_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let dedup = RedbDedup::open(
            dir.path().join("dedup.redb"),
            RedbDedupConfig {
                capacity: 10,
                retention_ms: Some(0),
                sync_each_mark: false,
            },
        )
        .unwrap();
        dedup.mark(b"old").unwrap();
        // Marked at least 1 ms ago once the clock moved on.
        std::thread::sleep(Duration::from_millis(5));
        assert!(!dedup.seen(b"old").unwrap());
        dedup.mark(b"new").unwrap();
        assert_eq!(dedup.len().unwrap(), 1, "the expired id was evicted");
    }

    #[tokio::test]
    async fn a_claimed_id_makes_the_next_claim_wait_and_is_forgotten_when_free() {
        let ids = Arc::new(InFlightIds::default());
        let first = ids.claim(b"m-1").await;
        let other = ids.claim(b"m-2").await;
        let second = ids.claim(b"m-1");
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "the same id waits"
        );
        drop(first);
        let second = second.await;
        assert_eq!(ids.len(), 2);
        drop(second);
        drop(other);
        assert_eq!(ids.len(), 0, "free ids are forgotten");
    }
}
