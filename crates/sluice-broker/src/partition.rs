//! One partition on this broker: its log, the high watermark that fetchers wait on, and
//! the group-commit flusher that acks=all producers wait on.
//!
//! Both waits are the same mechanism (Kafka's purgatory, reduced to its essence): a
//! `watch` channel carrying an offset, and a waiter that parks until the offset passes
//! its target or its deadline fires.
//!
//! Replication: the controller's image makes this broker the partition's leader or a
//! follower ([`Partition::apply_registration`]). A leader publishes as high watermark the
//! smallest log end offset over the ISR (see `crate::replication`), learnt from the
//! followers' fetches ([`Partition::record_follower_fetch`]); an acks=all produce waits
//! until the high watermark passes its batch *and* the batch is fsynced here. A follower
//! appends what it fetched from the leader, unchanged ([`Partition::append_as_follower`]),
//! and cuts its log back where it diverges ([`Partition::truncate_to`]).

use kafka_protocol::ResponseError;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_controller::image::PartitionRegistration;
use sluice_log::{
    prepare_batch_buf, AppendInfo, BatchBuf, BatchPolicy, FollowerAppend, Log, LogError,
    PendingDeletion, Prepared, ReadSlice, TimestampOffset,
};
use tokio::sync::{watch, Notify};

use crate::flush::{DataDirSync, FlushMethod};
use crate::replication::{IsrChange, ReplicaSet, Transition};
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
    /// The log end offset (follower fetches wait on it).
    log_end: watch::Sender<i64>,
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
    /// Role, ISR and (on the leader) the followers' progress.
    replication: Mutex<ReplicaSet>,
    /// Bumped whenever role or ISR change: acks=all waits re-check them.
    replication_changed: watch::Sender<u64>,
    /// `replica.lag.time.max.ms`, from the broker configuration.
    replica_lag_max_ms: AtomicI64,
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
    /// Replicated to the ISR (the high watermark passed it) and on this broker's disk.
    Synced,
    /// An fsync failed; the batch may not be on disk (KAFKA_STORAGE_ERROR).
    Failed,
    TimedOut,
    /// This broker no longer leads the partition (NOT_LEADER_OR_FOLLOWER): the batch may
    /// or may not survive on the new leader, the producer retries.
    NotLeader,
    /// Replicated, but the ISR is below `min.insync.replicas`
    /// (NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    NotEnoughReplicas,
}

/// `replica.lag.time.max.ms` until the broker sets it (Kafka's default).
const REPLICA_LAG_MAX_MS_DEFAULT: i64 = 30_000;
/// How long an AlterPartition may stay unanswered before the leader asks again.
const ISR_CHANGE_RETRY_MS: i64 = 5_000;

/// What a fetch of one partition found.
pub struct PartitionRead {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub slice: Option<ReadSlice>,
}

impl Partition {
    /// A partition of broker `node_id`, neither leader nor follower until
    /// [`Partition::apply_registration`]. Its high watermark starts where the log's
    /// checkpoint left it (the log start without one).
    pub fn new(
        topic: Arc<str>,
        index: i32,
        node_id: i32,
        log: Log,
        settings: TopicSettings,
        dir_sync: Arc<DataDirSync>,
    ) -> Arc<Partition> {
        let end = log.log_end_offset();
        let synced = log.synced_offset();
        let high_watermark = log
            .checkpointed_high_watermark()
            .unwrap_or(log.log_start_offset());
        Arc::new(Partition {
            topic,
            index,
            log: Mutex::new(log),
            settings: Mutex::new(settings),
            high_watermark: watch::channel(high_watermark).0,
            log_end: watch::channel(end).0,
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
            replication: Mutex::new(ReplicaSet::new(node_id)),
            replication_changed: watch::channel(0).0,
            replica_lag_max_ms: AtomicI64::new(REPLICA_LAG_MAX_MS_DEFAULT),
        })
    }

    /// Takes role, leader epoch and ISR from the controller's metadata image. A broker that
    /// becomes leader records where its epoch starts in the log (OffsetForLeaderEpoch
    /// answers followers with it) and publishes what the ISR already has.
    pub fn apply_registration(
        &self,
        registration: &PartitionRegistration,
        replica_lag_max_ms: i64,
        now_ms: i64,
    ) -> Transition {
        self.replica_lag_max_ms
            .store(replica_lag_max_ms, Ordering::Relaxed);
        let mut log = self.log.lock();
        let mut replication = self.replication.lock();
        let before = (replication.isr().to_vec(), replication.leader_epoch());
        let transition = replication.apply(registration, log.log_end_offset(), now_ms);
        if transition == Transition::BecameLeader {
            if let Err(error) = log.assign_epoch_start(registration.leader_epoch) {
                tracing::error!(topic = %self.topic, partition = self.index, %error, "cannot record the start of the leader epoch");
            }
        }
        // Changed under the log lock: a follower write checks them under it too (see
        // `check_follower`), so a fetch answered before a leader change cannot land after.
        self.leader_epoch
            .store(registration.leader_epoch, Ordering::SeqCst);
        self.is_leader
            .store(replication.is_leader(), Ordering::SeqCst);
        drop(log);
        let changed = (replication.isr().to_vec(), replication.leader_epoch()) != before;
        drop(replication);
        if transition != Transition::Unchanged || changed {
            self.replication_changed
                .send_modify(|generation| *generation += 1);
            self.advance_high_watermark(now_ms);
        }
        transition
    }

    /// The ISR as the image has it.
    pub fn isr(&self) -> Vec<i32> {
        self.replication.lock().isr().to_vec()
    }

    /// (replicas, ISR members) as the image has them, for the metrics.
    pub fn replica_counts(&self) -> (usize, usize) {
        let replication = self.replication.lock();
        (replication.replicas().len(), replication.isr().len())
    }

    /// Publishes the high watermark the ISR allows (leader only; it never goes back).
    fn advance_high_watermark(&self, now_ms: i64) {
        let log_end = *self.log_end.borrow();
        let current = self.high_watermark();
        let lag_max_ms = self.replica_lag_max_ms.load(Ordering::Relaxed);
        let candidate = self
            .replication
            .lock()
            .high_watermark(current, log_end, now_ms, lag_max_ms);
        if let Some(candidate) = candidate {
            self.high_watermark.send_if_modified(|mark| {
                let moved = candidate > *mark;
                if moved {
                    *mark = candidate;
                }
                moved
            });
        }
    }

    /// A follower fetched at `fetch_offset` (it has everything below): may move the high
    /// watermark, and returns the ISR change to ask for when the follower just caught up
    /// (already noted as in flight: see [`Partition::isr_change_failed`]). False in the
    /// first field when `replica` is not a follower of this leader.
    pub fn record_follower_fetch(
        &self,
        replica: i32,
        fetch_offset: i64,
        now_ms: i64,
    ) -> (bool, Option<IsrChange>) {
        let log_end = *self.log_end.borrow();
        let known = self
            .replication
            .lock()
            .record_fetch(replica, fetch_offset, log_end, now_ms);
        if !known {
            return (false, None);
        }
        self.advance_high_watermark(now_ms);
        let high_watermark = self.high_watermark();
        let mut replication = self.replication.lock();
        let change = replication.expansion(replica, high_watermark, now_ms, ISR_CHANGE_RETRY_MS);
        if let Some(change) = &change {
            replication.isr_change_sent(change, now_ms);
        }
        (true, change)
    }

    /// The ISR without followers that lag (`replica.lag.time.max.ms`), when there are any
    /// (noted as in flight).
    pub fn isr_shrink(&self, now_ms: i64) -> Option<IsrChange> {
        let log_end = *self.log_end.borrow();
        let lag_max_ms = self.replica_lag_max_ms.load(Ordering::Relaxed);
        let mut replication = self.replication.lock();
        let change = replication.shrink(log_end, now_ms, lag_max_ms, ISR_CHANGE_RETRY_MS);
        if let Some(change) = &change {
            replication.isr_change_sent(change, now_ms);
        }
        change
    }

    /// The controller refused (or did not answer) an ISR change: it may be asked again.
    pub fn isr_change_failed(&self, change: &IsrChange) {
        self.replication.lock().isr_change_failed(change);
    }

    /// Whether the ISR has at least `min.insync.replicas` members (acks=all may append).
    pub fn has_min_isr(&self) -> Result<(), (usize, i32)> {
        let min = self.settings.lock().min_insync_replicas;
        let isr = self.replication.lock().isr().len();
        if i64::try_from(isr).unwrap_or(i64::MAX) >= i64::from(min) {
            Ok(())
        } else {
            Err((isr, min))
        }
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
        if info.duplicate {
            // Nothing was written: the original batch is already counted (or synced).
            return Ok((info, prepared));
        }
        self.log_end.send_replace(end);
        self.advance_high_watermark(now_ms);
        self.count_unsynced(
            i64::from(info.records_count),
            batch.len(),
            flush_messages,
            flush_bytes,
        );
        Ok((info, prepared))
    }

    /// Counts appended data for `flush.messages` / `log.flush.interval.bytes` and wakes
    /// the flusher when either is reached.
    fn count_unsynced(&self, records: i64, bytes: usize, flush_messages: i64, flush_bytes: i64) {
        let unsynced = self
            .unsynced_records
            .fetch_add(records, Ordering::Relaxed)
            .saturating_add(records);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let unsynced_bytes = self
            .unsynced_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if unsynced >= flush_messages || unsynced_bytes >= flush_bytes {
            self.flush_wanted.notify_one();
        }
    }

    /// A follower stores what it fetched from the leader as it is (offsets, epochs, bytes)
    /// and takes the leader's high watermark, capped at its own log end.
    /// `leader_epoch` is the epoch the fetch was made under: when this broker has since
    /// become leader, or follows a newer epoch, nothing is written (the answer is stale).
    pub fn append_as_follower(
        &self,
        records: &[u8],
        leader_high_watermark: i64,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<FollowerAppend, LogError> {
        let (flush_messages, flush_bytes) = {
            let settings = self.settings.lock();
            (settings.flush_messages, settings.flush_bytes)
        };
        let (appended, end) = {
            let mut log = self.log.lock();
            self.check_follower(leader_epoch)?;
            let appended = log.append_as_follower(records, now_ms);
            (appended, log.log_end_offset())
        };
        self.log_end.send_replace(end);
        self.high_watermark
            .send_replace(leader_high_watermark.clamp(0, end));
        let appended = appended?;
        if appended.batches > 0 {
            self.count_unsynced(
                appended.records_count,
                appended.bytes,
                flush_messages,
                flush_bytes,
            );
        }
        Ok(appended)
    }

    /// Cuts the log back so nothing at or after `offset` remains (a follower whose log
    /// diverges from its leader's); returns the new log end. Offsets below the cut are no
    /// longer known synced or visible beyond it.
    /// Refused, as [`Partition::append_as_follower`], when no longer a follower of
    /// `leader_epoch`.
    pub fn truncate_to(&self, offset: i64, leader_epoch: i32) -> Result<i64, LogError> {
        let mut log = self.log.lock();
        self.check_follower(leader_epoch)?;
        let result = log.truncate_to(offset);
        self.after_cut(&log);
        result
    }

    /// Empties the log to start at `offset` (a follower entirely behind the leader's log
    /// start); refused when no longer a follower of `leader_epoch`.
    pub fn reset_to(&self, offset: i64, leader_epoch: i32) -> Result<(), LogError> {
        let mut log = self.log.lock();
        self.check_follower(leader_epoch)?;
        let result = log.reset_to(offset);
        self.after_cut(&log);
        result
    }

    /// A follower write must come from a fetch made under the current leader epoch, while
    /// this broker follows. Called with the log lock held (role and epoch change under it).
    fn check_follower(&self, leader_epoch: i32) -> Result<(), LogError> {
        if self.is_leader() || self.leader_epoch() != leader_epoch {
            return Err(LogError::InvalidBatch(format!(
                "stale fetch answer of leader epoch {leader_epoch}: this broker now {} epoch {}",
                if self.is_leader() { "leads" } else { "follows" },
                self.leader_epoch()
            )));
        }
        Ok(())
    }

    fn after_cut(&self, log: &Log) {
        let end = log.log_end_offset();
        self.log_end.send_replace(end);
        self.high_watermark.send_if_modified(|mark| {
            let moved = *mark > end;
            if moved {
                *mark = end;
            }
            moved
        });
        // Synced offsets past the cut would let a later append at those offsets look
        // durable before its fsync.
        self.synced_offset.send_replace(log.synced_offset());
    }

    /// The newest leader epoch in the log (-1 when empty): a follower's lastFetchedEpoch.
    pub fn latest_epoch(&self) -> i32 {
        self.log
            .lock()
            .leader_epochs()
            .last()
            .map_or(-1, |entry| entry.epoch)
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

    /// [`Partition::wait_synced`] with the reason a wait ended early: an fsync of this
    /// partition failed, this broker stopped leading, or the ISR fell below
    /// `min.insync.replicas` by the time the batch was replicated.
    pub async fn wait_durable(&self, offset_end: i64, deadline: tokio::time::Instant) -> SyncWait {
        let mut synced = self.synced_offset.subscribe();
        let mut replicated = self.high_watermark.subscribe();
        let mut failed = self.storage_failed.subscribe();
        let mut changed = self.replication_changed.subscribe();
        let mut asked_for_sync = false;
        loop {
            if *failed.borrow_and_update() {
                return SyncWait::Failed;
            }
            changed.borrow_and_update();
            if !self.is_leader() {
                return SyncWait::NotLeader;
            }
            let is_synced = *synced.borrow_and_update() >= offset_end;
            let is_replicated = *replicated.borrow_and_update() >= offset_end;
            if is_synced && is_replicated {
                return match self.has_min_isr() {
                    Ok(()) => SyncWait::Synced,
                    Err(_) => SyncWait::NotEnoughReplicas,
                };
            }
            if !is_synced && !asked_for_sync {
                self.flush_wanted.notify_one();
                asked_for_sync = true;
            }
            let woken = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = synced.changed() => {}
                    _ = replicated.changed() => {}
                    _ = failed.changed() => {}
                    _ = changed.changed() => {}
                }
            })
            .await;
            if woken.is_err() {
                return SyncWait::TimedOut;
            }
        }
    }

    /// A receiver that changes whenever the high watermark moves (for long polling).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// A receiver that changes whenever the log end moves (follower fetches wait on it).
    pub fn subscribe_log_end(&self) -> watch::Receiver<i64> {
        self.log_end.subscribe()
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        *self.log_end.borrow()
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

    /// Locates the bytes of a consumer's fetch (below the high watermark); the copy
    /// happens outside the lock.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<PartitionRead, LogError> {
        self.read_below(offset, max_bytes, false)
    }

    /// Locates the bytes of a follower's fetch: up to the log end.
    pub fn read_for_replica(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<PartitionRead, LogError> {
        self.read_below(offset, max_bytes, true)
    }

    fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        to_log_end: bool,
    ) -> Result<PartitionRead, LogError> {
        let log = self.log.lock();
        let high_watermark = self.high_watermark();
        let limit = if to_log_end {
            log.log_end_offset()
        } else {
            high_watermark
        };
        let slice = log.read(offset, max_bytes, limit)?;
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

    /// Writes the index files, the recovery point and the high watermark checkpoints.
    pub fn checkpoint(&self) -> Result<(), LogError> {
        let mut log = self.log.lock();
        log.set_high_watermark(self.high_watermark());
        log.checkpoint()
    }

    /// Fsyncs and checkpoints everything (clean shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        let mut log = self.log.lock();
        log.set_high_watermark(self.high_watermark());
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

    /// Partition `t-0` of broker 1, led by broker 1 with the given ISR.
    fn partition_with_isr(dir: &std::path::Path, isr: &[i32], min_isr: &str) -> Arc<Partition> {
        let configs = BTreeMap::from([("min.insync.replicas".to_string(), min_isr.to_string())]);
        let settings = TopicSettings::resolve(&configs, &BrokerConfig::default());
        let log = Log::open(&dir.join("t-0"), settings.log.clone()).unwrap();
        let dir_sync = Arc::new(DataDirSync::open(dir).unwrap());
        let partition = Partition::new(Arc::from("t"), 0, 1, log, settings, dir_sync);
        partition.apply_registration(&registration(1, 0, 0, isr), 10_000, 0);
        partition
    }

    fn partition(dir: &std::path::Path) -> Arc<Partition> {
        partition_with_isr(dir, &[1], "1")
    }

    fn registration(
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) -> PartitionRegistration {
        PartitionRegistration {
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader,
            leader_epoch,
            partition_epoch,
        }
    }

    fn one_record_batch() -> Vec<u8> {
        sluice_log::testing::batch(1, 8, 1)
    }

    #[tokio::test]
    async fn acks_all_waits_until_every_isr_member_fetched_past_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition_with_isr(dir.path(), &[1, 2, 3], "2");
        tokio::spawn(Arc::clone(&partition).run_flusher());
        let mut batch = one_record_batch();
        let info = partition.append(&mut batch, 1).unwrap();
        assert_eq!(
            partition.high_watermark(),
            0,
            "followers have not fetched it"
        );
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let waiter = {
            let partition = Arc::clone(&partition);
            tokio::spawn(async move { partition.wait_durable(info.last_offset + 1, far).await })
        };
        assert_eq!(partition.record_follower_fetch(2, 1, 2), (true, None));
        assert_eq!(partition.high_watermark(), 0, "follower 3 is still behind");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(partition.record_follower_fetch(3, 1, 3), (true, None));
        assert_eq!(partition.high_watermark(), 1);
        assert_eq!(waiter.await.unwrap(), SyncWait::Synced);
        // A broker that is no replica of the partition is not taken as a follower.
        assert_eq!(partition.record_follower_fetch(9, 1, 4), (false, None));
    }

    #[tokio::test]
    async fn acks_all_ends_when_leadership_moves_or_the_isr_shrinks_below_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition_with_isr(dir.path(), &[1, 2], "2");
        tokio::spawn(Arc::clone(&partition).run_flusher());
        assert_eq!(partition.has_min_isr(), Ok(()));
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut batch = one_record_batch();
        partition.append(&mut batch, 1).unwrap();
        let waiter = {
            let partition = Arc::clone(&partition);
            tokio::spawn(async move { partition.wait_durable(1, far).await })
        };
        tokio::task::yield_now().await;
        // The controller drops follower 2 from the ISR: the batch is committed by the
        // leader alone, below min.insync.replicas.
        partition.apply_registration(&registration(1, 0, 1, &[1]), 10_000, 5);
        assert_eq!(waiter.await.unwrap(), SyncWait::NotEnoughReplicas);
        assert_eq!(partition.has_min_isr(), Err((1, 2)));

        let mut batch = one_record_batch();
        partition.append(&mut batch, 6).unwrap();
        let waiter = {
            let partition = Arc::clone(&partition);
            tokio::spawn(async move { partition.wait_durable(2, far).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            partition.apply_registration(&registration(2, 1, 2, &[2]), 10_000, 7),
            Transition::BecameFollower { leader: 2 }
        );
        assert_eq!(waiter.await.unwrap(), SyncWait::NotLeader);
    }

    #[tokio::test]
    async fn a_follower_copies_the_leader_and_a_cut_forgets_what_was_synced_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let leader = partition_with_isr(dir.path(), &[1], "1");
        for _ in 0..3 {
            let mut batch = one_record_batch();
            leader.append(&mut batch, 1).unwrap();
        }
        let read = leader.read_for_replica(0, 1 << 20).unwrap();
        let bytes = read.slice.unwrap().read_to_vec().unwrap();

        let follower_dir = tempfile::tempdir().unwrap();
        let settings = TopicSettings::resolve(&BTreeMap::new(), &BrokerConfig::default());
        let log = Log::open(&follower_dir.path().join("t-0"), settings.log.clone()).unwrap();
        let dir_sync = Arc::new(DataDirSync::open(follower_dir.path()).unwrap());
        let follower = Partition::new(Arc::from("t"), 0, 2, log, settings, dir_sync);
        follower.apply_registration(&registration(1, 0, 0, &[1, 2]), 10_000, 0);
        assert!(!follower.is_leader());
        // An answer fetched under another leader epoch is not written.
        assert!(follower.append_as_follower(&bytes, 2, 7, 1).is_err());
        assert_eq!(follower.log_end_offset(), 0);
        let appended = follower.append_as_follower(&bytes, 2, 0, 1).unwrap();
        assert_eq!((appended.first_offset, appended.last_offset), (0, 2));
        assert_eq!(follower.log_end_offset(), 3);
        assert_eq!(
            follower.high_watermark(),
            2,
            "the leader's mark, capped at the log end"
        );
        follower.sync_once().await.unwrap();
        assert_eq!(*follower.synced_offset.borrow(), 3);
        assert!(follower.truncate_to(1, 7).is_err());
        assert_eq!(follower.truncate_to(1, 0).unwrap(), 1);
        assert_eq!(follower.log_end_offset(), 1);
        assert_eq!(follower.high_watermark(), 1);
        assert_eq!(*follower.synced_offset.borrow(), 1);
        // Once it leads, a late answer of the fetcher is refused.
        follower.apply_registration(&registration(2, 1, 1, &[2]), 10_000, 2);
        assert!(follower.append_as_follower(&bytes, 3, 1, 3).is_err());
        assert!(follower.truncate_to(0, 1).is_err());
        assert_eq!(follower.log_end_offset(), 1);
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
