//! One partition on this broker: its log, the high watermark that fetchers wait on, and
//! the group-commit flusher that acks=all producers wait on.
//!
//! Both waits are the same mechanism (Kafka's purgatory, reduced to its essence): a
//! `watch` channel carrying an offset, and a waiter that parks until the offset passes
//! its target or its deadline fires.

use kafka_protocol::ResponseError;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_log::{
    prepare_batch_buf, AppendInfo, BatchBuf, BatchPolicy, Log, LogError, PendingDeletion, Prepared,
    ReadSlice, TimestampOffset,
};
use tokio::sync::{watch, Notify};

use crate::flush::{DataDirSync, FlushMethod};
use crate::topic_config::TopicSettings;

/// The leader epoch of a new partition (the controller starts every partition at 0).
pub const INITIAL_LEADER_EPOCH: i32 = 0;

pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    log: Mutex<Log>,
    settings: Mutex<TopicSettings>,
    /// Offset below which records are visible to consumers (high watermark).
    high_watermark: watch::Sender<i64>,
    /// Offset below which records are on disk.
    synced_offset: watch::Sender<i64>,
    flush_wanted: Notify,
    /// The data directory's shared group commit, for `log.flush.method=syncfs`.
    dir_sync: Arc<DataDirSync>,
    /// Records appended since the last fsync started, for `flush.messages`.
    unsynced_records: AtomicI64,
    /// Bytes appended since the last fsync started, for `log.flush.interval.bytes`.
    unsynced_bytes: AtomicI64,
    /// Set when the partition is deleted or the broker shuts down; stops the flusher.
    closed: watch::Sender<bool>,
    /// Bytes and records in and out, for the metrics endpoint (lock-free counters).
    pub metrics: crate::metrics::PartitionMetrics,
    /// Set when an fsync failed: acks=all waiters get KAFKA_STORAGE_ERROR instead of
    /// waiting for an offset that will never be synced.
    storage_failed: watch::Sender<bool>,
    /// Rate limits for the error lines of failed appends (write, roll) and fsyncs: a full
    /// disk fails every produce, the log should say so once, not thousands of times.
    append_error_log: ErrorLogLimiter,
    fsync_error_log: ErrorLogLimiter,
    /// The partition's leader epoch from the controller's metadata image.
    leader_epoch: AtomicI32,
    /// Whether the image names this broker the partition's leader.
    is_leader: AtomicBool,
}

/// How long one kind of storage error stays quiet after it was logged.
const ERROR_LOG_INTERVAL_MS: i64 = 10_000;

/// Lets one error line through per [`ERROR_LOG_INTERVAL_MS`] and counts the rest.
#[derive(Default)]
struct ErrorLogLimiter {
    last_logged_ms: AtomicI64,
    suppressed: AtomicI64,
}

impl ErrorLogLimiter {
    /// Returns `Some(suppressed since the last line)` when this error should be logged.
    fn admit(&self, now_ms: i64) -> Option<i64> {
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < ERROR_LOG_INTERVAL_MS {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_logged_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// How an acks=all wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWait {
    Synced,
    /// An fsync failed; the batch may not be on disk (KAFKA_STORAGE_ERROR).
    Failed,
    TimedOut,
}

/// What a fetch of one partition found.
pub struct PartitionRead {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub slice: Option<ReadSlice>,
}

impl Partition {
    pub fn new(
        topic: Arc<str>,
        index: i32,
        log: Log,
        settings: TopicSettings,
        dir_sync: Arc<DataDirSync>,
    ) -> Arc<Partition> {
        let end = log.log_end_offset();
        let synced = log.synced_offset();
        Arc::new(Partition {
            topic,
            index,
            log: Mutex::new(log),
            settings: Mutex::new(settings),
            high_watermark: watch::channel(end).0,
            synced_offset: watch::channel(synced).0,
            flush_wanted: Notify::new(),
            dir_sync,
            unsynced_records: AtomicI64::new(0),
            unsynced_bytes: AtomicI64::new(0),
            closed: watch::channel(false).0,
            metrics: crate::metrics::PartitionMetrics::default(),
            storage_failed: watch::channel(false).0,
            append_error_log: ErrorLogLimiter::default(),
            fsync_error_log: ErrorLogLimiter::default(),
            leader_epoch: AtomicI32::new(INITIAL_LEADER_EPOCH),
            is_leader: AtomicBool::new(false),
        })
    }

    /// Takes leadership and leader epoch from the controller's metadata image.
    pub fn set_leadership(&self, is_leader: bool, leader_epoch: i32) {
        self.leader_epoch.store(leader_epoch, Ordering::SeqCst);
        self.is_leader.store(is_leader, Ordering::SeqCst);
    }

    /// Whether this broker leads the partition (produce and fetch are served only then).
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.lock().clone()
    }

    /// Appends one record batch and publishes the new high watermark; `batch` ends up as
    /// stored (shaped by the topic, with its offset). Durability is separate: see
    /// [`Partition::wait_synced`].
    pub fn append(&self, batch: &mut Vec<u8>, now_ms: i64) -> Result<AppendInfo, LogError> {
        let mut buf = BatchBuf::Owned(std::mem::take(batch));
        let result = self.append_buf(&mut buf, now_ms);
        *batch = buf.into_vec();
        let (info, _) = result?;
        if !info.duplicate {
            sluice_log::rewrite_header(batch, info.base_offset, self.leader_epoch());
        }
        Ok(info)
    }

    /// Appends a batch straight from the produce request's buffer: on the common path
    /// (producer's codec kept, CreateTime, correct maxTimestamp) it is never copied; the
    /// log writes the rewritten header and the rest of `batch` with one vectored write.
    /// Also returns how the batch was prepared (its LogAppendTime, if stamped).
    pub fn append_bytes(
        &self,
        batch: Bytes,
        now_ms: i64,
    ) -> Result<(AppendInfo, Prepared), LogError> {
        self.append_buf(&mut BatchBuf::Shared(batch), now_ms)
    }

    /// The batch is validated and shaped by the topic's settings (codec, timestamp type,
    /// keys on compacted topics) first, outside the log lock: decompression can be slow.
    fn append_buf(
        &self,
        batch: &mut BatchBuf,
        now_ms: i64,
    ) -> Result<(AppendInfo, Prepared), LogError> {
        let (flush_messages, flush_bytes, policy) = {
            let settings = self.settings.lock();
            let policy = BatchPolicy {
                max_batch_bytes: settings.log.max_batch_bytes,
                compression: settings.compression,
                timestamp_type: settings.timestamp_type,
                require_keys: settings.log.cleanup_compact,
            };
            (settings.flush_messages, settings.flush_bytes, policy)
        };
        let prepared = prepare_batch_buf(batch, &policy, now_ms)?;
        let (info, end) = {
            let mut log = self.log.lock();
            let info = match log.append_batch(batch, self.leader_epoch(), now_ms) {
                Ok(info) => info,
                Err(error) => {
                    if let LogError::Io(io) = &error {
                        if let Some(suppressed) = self.append_error_log.admit(now_ms) {
                            tracing::error!(topic = %self.topic, partition = self.index, error = %io, suppressed, "append failed; produce gets KAFKA_STORAGE_ERROR, the log is unchanged");
                        }
                    }
                    return Err(error);
                }
            };
            (info, log.log_end_offset())
        };
        self.high_watermark.send_replace(end);
        if info.duplicate {
            // Nothing was written: the original batch is already counted (or synced).
            return Ok((info, prepared));
        }
        let unsynced = self
            .unsynced_records
            .fetch_add(i64::from(info.records_count), Ordering::Relaxed)
            + i64::from(info.records_count);
        let batch_bytes = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        let unsynced_bytes = self
            .unsynced_bytes
            .fetch_add(batch_bytes, Ordering::Relaxed)
            .saturating_add(batch_bytes);
        if unsynced >= flush_messages || unsynced_bytes >= flush_bytes {
            self.flush_wanted.notify_one();
        }
        Ok((info, prepared))
    }

    /// Forgets idempotent producers idle for `expiration_ms`; returns how many.
    pub fn remove_expired_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.log
            .lock()
            .remove_expired_producers(now_ms, expiration_ms)
    }

    /// Asks the flusher for a group commit as soon as possible.
    pub fn request_sync(&self) {
        self.flush_wanted.notify_one();
    }

    /// Waits until every offset below `offset_end` is on disk, or the deadline passes.
    /// Returns whether it is on disk.
    pub async fn wait_synced(&self, offset_end: i64, deadline: tokio::time::Instant) -> bool {
        self.wait_durable(offset_end, deadline).await == SyncWait::Synced
    }

    /// [`Partition::wait_synced`] that also ends (with [`SyncWait::Failed`]) when an fsync
    /// of this partition fails.
    pub async fn wait_durable(&self, offset_end: i64, deadline: tokio::time::Instant) -> SyncWait {
        let mut synced = self.synced_offset.subscribe();
        if *synced.borrow_and_update() >= offset_end {
            return SyncWait::Synced;
        }
        let mut failed = self.storage_failed.subscribe();
        if *failed.borrow_and_update() {
            return SyncWait::Failed;
        }
        self.flush_wanted.notify_one();
        let waited = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                reached = synced.wait_for(|o| *o >= offset_end) => {
                    if reached.is_ok() { SyncWait::Synced } else { SyncWait::TimedOut }
                }
                _ = failed.wait_for(|f| *f) => SyncWait::Failed,
            }
        })
        .await;
        waited.unwrap_or(SyncWait::TimedOut)
    }

    /// A receiver that changes whenever the high watermark moves (for long polling).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    /// The leader epoch of this partition, as the controller's image has it (KIP-320 checks
    /// and the epoch stamped on appended batches).
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::SeqCst)
    }

    /// KIP-320: a request that names the leader epoch it believes current (Fetch v9+,
    /// ListOffsets v4+, OffsetForLeaderEpoch v2+; -1 skips the check) must name ours: an
    /// older one is FENCED_LEADER_EPOCH (the client's metadata is stale), a newer one
    /// UNKNOWN_LEADER_EPOCH (this broker's is).
    pub fn check_leader_epoch(&self, current_leader_epoch: i32) -> Result<(), ResponseError> {
        let ours = self.leader_epoch();
        match current_leader_epoch {
            -1 => Ok(()),
            epoch if epoch < ours => Err(ResponseError::FencedLeaderEpoch),
            epoch if epoch > ours => Err(ResponseError::UnknownLeaderEpoch),
            _ => Ok(()),
        }
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `epoch` in this log and where it
    /// ends (see `sluice_log::LeaderEpochCache::end_offset_for`).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.log.lock().end_offset_for_epoch(epoch)
    }

    /// Locates the bytes of a fetch; the copy happens outside the lock.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<PartitionRead, LogError> {
        let log = self.log.lock();
        let high_watermark = self.high_watermark();
        let slice = log.read(offset, max_bytes, high_watermark)?;
        Ok(PartitionRead {
            high_watermark,
            log_start_offset: log.log_start_offset(),
            slice,
        })
    }

    pub fn find_offset_by_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        self.log.lock().find_offset_by_timestamp(timestamp_ms)
    }

    pub fn max_timestamp(&self) -> Option<TimestampOffset> {
        self.log.lock().max_timestamp()
    }

    /// What the log cleaner may read without the lock (see `sluice_log::cleaner`).
    pub fn cleanable_snapshot(&self) -> Result<sluice_log::cleaner::CleanableSnapshot, LogError> {
        self.log.lock().cleanable_snapshot()
    }

    /// Swaps segments the cleaner rewrote into the log (under the lock, cheap renames).
    pub fn install_cleaned(
        &self,
        cleaned: sluice_log::cleaner::CleanedLog,
    ) -> Result<sluice_log::cleaner::CleanSummary, LogError> {
        self.log.lock().install_cleaned(cleaned)
    }

    pub fn set_settings(&self, settings: TopicSettings) {
        self.log.lock().set_config(settings.log.clone());
        *self.settings.lock() = settings;
    }

    /// One group commit: fsync everything appended so far (outside the lock), then
    /// publish the new synced offset. Batches appended during the fsync wait for the next.
    pub async fn sync_once(&self) -> Result<(), LogError> {
        if *self.storage_failed.borrow() {
            // Once an fsync failed nothing more is ever reported synced: the kernel may have
            // dropped the failed pages, so a later successful fsync proves nothing.
            return Ok(());
        }
        let result = self.sync_inner().await;
        if let Err(error) = &result {
            let reason = format!("fsync failed: {error}");
            self.log.lock().mark_failed(reason);
            self.storage_failed.send_replace(true);
        }
        result
    }

    async fn sync_inner(&self) -> Result<(), LogError> {
        let target = self.log.lock().sync_target();
        if !target.is_needed(*self.synced_offset.borrow()) {
            return Ok(());
        }
        self.unsynced_records.store(0, Ordering::Relaxed);
        self.unsynced_bytes.store(0, Ordering::Relaxed);
        let offset_end = target.offset_end;
        let generation = target.generation;
        let method = self.settings.lock().flush_method;
        let fsync_timer = crate::metrics::FsyncTimer::start();
        match method {
            FlushMethod::Fdatasync => tokio::task::spawn_blocking(move || target.sync())
                .await
                .map_err(|e| LogError::Io(std::io::Error::other(e)))??,
            FlushMethod::Syncfs => self.dir_sync.sync().await?,
        }
        drop(fsync_timer);
        self.log.lock().mark_synced(offset_end, generation);
        self.synced_offset.send_if_modified(|synced| {
            let moved = offset_end > *synced;
            if moved {
                *synced = offset_end;
            }
            moved
        });
        Ok(())
    }

    /// The flusher task: fsyncs when asked (acks=all, `flush.messages`) or every
    /// `flush.ms`, until shutdown.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut closed = self.closed.subscribe();
        loop {
            let flush_ms = self.settings.lock().flush_ms;
            tokio::select! {
                _ = self.flush_wanted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(flush_ms)) => {}
                _ = crate::server::stopped(&mut closed) => return,
            }
            if let Err(error) = self.sync_once().await {
                if let Some(suppressed) = self.fsync_error_log.admit(crate::api::now_ms()) {
                    tracing::error!(topic = %self.topic, partition = self.index, %error, suppressed, "fsync failed; the partition refuses appends (KAFKA_STORAGE_ERROR) until the broker restarts");
                }
            }
        }
    }

    /// Stops the flusher task; pending acks=all waits time out.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Writes the index files and the recovery-point checkpoint.
    pub fn checkpoint(&self) -> Result<(), LogError> {
        self.log.lock().checkpoint()
    }

    /// Fsyncs and checkpoints everything (clean shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        let mut log = self.log.lock();
        log.flush()?;
        // The synced offset, not the log end: after a failed fsync they differ for good.
        let end = log.synced_offset();
        drop(log);
        self.synced_offset.send_if_modified(|synced| {
            let moved = end > *synced;
            if moved {
                *synced = end;
            }
            moved
        });
        Ok(())
    }

    /// Applies retention (see `sluice_log::Log::apply_retention`): the segments leave the
    /// log under the lock, their files are unlinked after it is released. Returns how many
    /// segments were deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        if *self.closed.borrow() {
            // Deleted topic or shutdown: its directory may already be gone.
            return Ok(0);
        }
        let pending = self.log.lock().apply_retention(now_ms)?;
        Ok(self.finish_deletion(pending))
    }

    /// DeleteRecords: moves the log start offset up to `offset` (persisted before this
    /// returns) and deletes the segments entirely below it. Returns the new log start
    /// offset. Beyond the high watermark is OFFSET_OUT_OF_RANGE.
    pub fn delete_records(&self, offset: i64) -> Result<i64, LogError> {
        let (log_start_offset, pending) = {
            let mut log = self.log.lock();
            let high_watermark = self.high_watermark();
            if offset < 0 || offset > high_watermark {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: high_watermark,
                });
            }
            log.delete_records(offset)?
        };
        self.finish_deletion(pending);
        tracing::info!(topic = %self.topic, partition = self.index, log_start_offset, "log start offset moved by DeleteRecords");
        Ok(log_start_offset)
    }

    /// Logs and unlinks segments already out of the log (outside the lock). An unlink
    /// failure leaves a `*.deleted` file that the next open removes.
    fn finish_deletion(&self, pending: PendingDeletion) -> usize {
        for segment in &pending.segments {
            tracing::info!(topic = %self.topic, partition = self.index, base_offset = segment.base_offset, next_offset = segment.next_offset, size_bytes = segment.size_bytes, reason = %segment.reason, "deleting segment");
        }
        let count = pending.segments.len();
        if let Err(error) = pending.unlink() {
            tracing::warn!(topic = %self.topic, partition = self.index, %error, "could not unlink deleted segment files; the next start removes them");
        }
        count
    }

    /// Removes the partition's directory; the partition must no longer be reachable.
    pub fn delete(self: Arc<Self>) -> Result<(), LogError> {
        match Arc::try_unwrap(self) {
            Ok(partition) => partition.log.into_inner().delete(),
            Err(shared) => {
                // A request still holds it: delete the files, the handle dies with it.
                let dir = shared.log.lock().dir().to_path_buf();
                std::fs::remove_dir_all(&dir).map_err(LogError::Io)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::BrokerConfig;

    fn partition(dir: &std::path::Path) -> Arc<Partition> {
        let settings = TopicSettings::resolve(&BTreeMap::new(), &BrokerConfig::default());
        let log = Log::open(&dir.join("t-0"), settings.log.clone()).unwrap();
        let dir_sync = Arc::new(DataDirSync::open(dir).unwrap());
        Partition::new(Arc::from("t"), 0, log, settings, dir_sync)
    }

    #[test]
    fn error_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = ErrorLogLimiter::default();
        assert_eq!(limiter.admit(1_000), Some(0));
        assert_eq!(limiter.admit(1_001), None);
        assert_eq!(limiter.admit(1_000 + ERROR_LOG_INTERVAL_MS - 1), None);
        assert_eq!(limiter.admit(1_000 + ERROR_LOG_INTERVAL_MS), Some(2));
        assert_eq!(limiter.admit(1_000 + ERROR_LOG_INTERVAL_MS + 1), None);
    }

    #[tokio::test]
    async fn a_failed_fsync_ends_acks_all_waits_with_failed_and_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition(dir.path());
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(partition.wait_durable(0, far).await, SyncWait::Synced);
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        assert_eq!(partition.wait_durable(1, soon).await, SyncWait::TimedOut);

        let waiter = {
            let partition = Arc::clone(&partition);
            tokio::spawn(async move { partition.wait_durable(1, far).await })
        };
        tokio::task::yield_now().await;
        // What `sync_once` does when the fsync fails.
        partition.log.lock().mark_failed("fsync failed: test");
        partition.storage_failed.send_replace(true);
        assert_eq!(waiter.await.unwrap(), SyncWait::Failed);
        assert_eq!(partition.wait_durable(1, far).await, SyncWait::Failed);
        assert!(!partition.wait_synced(1, far).await);
        // Later syncs never report anything synced again.
        partition.sync_once().await.unwrap();
        assert_eq!(*partition.synced_offset.borrow(), 0);
        assert!(partition.log.lock().failure().is_some());
    }
}
