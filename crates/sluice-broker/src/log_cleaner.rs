//! The background log cleaner (Kafka's LogCleaner thread, reduced to one task).
//!
//! Every `log.cleaner.backoff.ms` it looks at every partition whose topic has
//! `cleanup.policy` containing `compact`, picks those that need cleaning (dirty ratio >=
//! `min.cleanable.dirty.ratio`, a dirty record older than `max.compaction.lag.ms`, or a
//! tombstone delete horizon that has passed), dirtiest first, and compacts each in
//! `spawn_blocking`. The log mutex is held only for the snapshot and the final swap; the
//! reading and rewriting happen on immutable rolled segment files (see
//! `sluice_log::cleaner`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::cleaner::{clean, DEFAULT_OFFSET_MAP_BYTES};
use sluice_log::LogError;

use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;

type PartitionKey = (Arc<str>, i32);

/// How long a partition whose cleaning failed (e.g. an undecodable batch) is left alone, so a
/// bad log does not fill the logs every round (Kafka marks such partitions uncleanable).
pub const FAILED_CLEAN_BACKOFF_MS: i64 = 10 * 60 * 1000;

/// What the cleaner remembers between rounds.
#[derive(Debug, Default)]
pub struct CleanerState {
    /// Per partition: the earliest delete horizon of tombstones left by the last clean, so
    /// the partition is cleaned again when it passes even with no new dirty data.
    pending_horizons_ms: HashMap<PartitionKey, i64>,
    /// Partitions whose last clean failed, and when to try again.
    retry_after_ms: HashMap<PartitionKey, i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Runs until shutdown when `log.cleaner.enable` is true.
pub async fn run_log_cleaner(
    replicas: Arc<ReplicaManager>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if !replicas.config().log_cleaner_enable() {
        tracing::info!("log cleaner disabled (log.cleaner.enable=false)");
        return;
    }
    let backoff = Duration::from_millis(replicas.config().log_cleaner_backoff_ms().max(1));
    let mut state = CleanerState::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let manager = Arc::clone(&replicas);
        let taken = std::mem::take(&mut state);
        match tokio::task::spawn_blocking(move || clean_round(&manager, taken, now_ms())).await {
            Ok(left) => state = left,
            Err(error) => tracing::error!(%error, "log cleaner round panicked"),
        }
    }
}

/// One round: cleans every partition that needs it, dirtiest first. Returns what the next
/// round needs to know.
pub fn clean_round(
    replicas: &ReplicaManager,
    mut state: CleanerState,
    now_ms: i64,
) -> CleanerState {
    let mut candidates: Vec<(f64, Arc<Partition>)> = Vec::new();
    for topic in replicas.all_topics() {
        for partition in &topic.partitions {
            if !partition.settings().log.cleanup_compact {
                continue;
            }
            let key = (Arc::clone(&partition.topic), partition.index);
            if state
                .retry_after_ms
                .get(&key)
                .is_some_and(|retry_after| *retry_after > now_ms)
            {
                continue;
            }
            let pending = state.pending_horizons_ms.get(&key).copied();
            match dirtiness(partition, now_ms, pending) {
                Ok(Some(ratio)) => candidates.push((ratio, Arc::clone(partition))),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "cannot inspect log for cleaning")
                }
            }
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ratio, partition) in candidates {
        let key = (Arc::clone(&partition.topic), partition.index);
        match clean_partition(&partition, now_ms, ratio) {
            Ok(horizon) => {
                state.retry_after_ms.remove(&key);
                match horizon {
                    Some(horizon) => state.pending_horizons_ms.insert(key, horizon),
                    None => state.pending_horizons_ms.remove(&key),
                };
            }
            Err(error) => {
                let retry_after_ms = now_ms.saturating_add(FAILED_CLEAN_BACKOFF_MS);
                tracing::error!(topic = %partition.topic, partition = partition.index, %error, retry_after_ms, "cleaning failed; leaving the partition alone for a while");
                state.retry_after_ms.insert(key, retry_after_ms);
            }
        }
    }
    state
}

/// The dirty ratio of a partition that should be cleaned now (1.0+ when forced by a passed
/// tombstone horizon or the max compaction lag), None when it need not be.
fn dirtiness(
    partition: &Partition,
    now_ms: i64,
    pending_horizon_ms: Option<i64>,
) -> Result<Option<f64>, LogError> {
    let snapshot = partition.cleanable_snapshot()?;
    let stats = snapshot.dirty_stats(now_ms)?;
    if !snapshot.should_clean(&stats, now_ms, pending_horizon_ms) {
        return Ok(None);
    }
    Ok(Some(stats.dirty_ratio()))
}

/// Cleans one partition; returns the earliest tombstone horizon left in it.
fn clean_partition(
    partition: &Partition,
    now_ms: i64,
    dirty_ratio: f64,
) -> Result<Option<i64>, LogError> {
    let snapshot = partition.cleanable_snapshot()?;
    let started = std::time::Instant::now();
    let Some(cleaned) = clean(&snapshot, now_ms, DEFAULT_OFFSET_MAP_BYTES)? else {
        return Ok(None);
    };
    let horizon = cleaned.next_delete_horizon_ms;
    let segments_read = cleaned.segments_read;
    let keys = cleaned.keys_mapped;
    let cleaned_up_to_offset = cleaned.cleaned_up_to_offset;
    let summary = partition.install_cleaned(cleaned)?;
    tracing::info!(
        topic = %partition.topic,
        partition = partition.index,
        dirty_ratio,
        segments_read,
        segments_replaced = summary.segments_replaced,
        segments_skipped = summary.segments_skipped,
        segments_deleted = summary.segments_deleted,
        bytes_before = summary.bytes_before,
        bytes_after = summary.bytes_after,
        records_removed = summary.records_removed,
        keys,
        cleaned_up_to_offset,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted log"
    );
    Ok(horizon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::replica_manager::NewTopic;
    use sluice_log::testing::{keyed_batch, TestCompression};

    fn open(dir: &std::path::Path) -> Arc<ReplicaManager> {
        let config = BrokerConfig::from_pairs([("log.dirs", dir.display().to_string())]).unwrap();
        ReplicaManager::open(config).unwrap()
    }

    fn fill(replicas: &ReplicaManager, topic: &str, policy: &str) -> Arc<Partition> {
        replicas
            .create_topic_blocking(
                &NewTopic {
                    name: topic,
                    partitions: 1,
                    replication_factor: 1,
                    configs: vec![
                        ("cleanup.policy", policy),
                        ("segment.bytes", "14"),
                        ("min.cleanable.dirty.ratio", "0.01"),
                    ],
                },
                false,
            )
            .unwrap();
        let partition = replicas.partition(topic, 0).unwrap();
        for value in ["1", "2", "3", "4"] {
            let mut batch = keyed_batch(&[(Some("k"), Some(value))], 100, TestCompression::None);
            partition.append(&mut batch, 100).unwrap();
        }
        partition.flush().unwrap();
        partition
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_compacts_compacted_topics_only() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = open(dir.path());
        let compacted = fill(&replicas, "compacted", "compact");
        let deleted = fill(&replicas, "deleted", "delete");
        let state = clean_round(&replicas, CleanerState::default(), 1_000);
        assert!(
            state.pending_horizons_ms.is_empty(),
            "no tombstones were written"
        );
        assert!(state.retry_after_ms.is_empty(), "nothing failed");
        // Reads like a consumer: fetch from the log start, batch after batch.
        let records = |partition: &Partition| {
            let mut out = Vec::new();
            let mut offset = partition.log_start_offset();
            while offset < partition.log_end_offset() {
                let slice = partition.read(offset, 1 << 20).unwrap().slice.unwrap();
                let mut bytes = bytes::Bytes::from(slice.read_to_vec().unwrap());
                for set in
                    kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).unwrap()
                {
                    for record in set.records {
                        out.push((record.offset, record.value.unwrap()));
                    }
                }
                offset = slice.next_offset;
            }
            out
        };
        // Offsets 0..=2 are rolled; 2 is the last value of "k" below the active segment (3).
        assert_eq!(
            records(&compacted),
            vec![(2, bytes::Bytes::from("3")), (3, bytes::Bytes::from("4"))]
        );
        assert_eq!(records(&deleted).len(), 4);
        // A second round finds nothing dirty and changes nothing.
        clean_round(&replicas, state, 1_000);
        assert_eq!(records(&compacted).len(), 2);
        replicas.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_that_fails_to_clean_is_left_alone_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = open(dir.path());
        let partition = fill(&replicas, "broken", "compact");
        // Garble the records (not the header) of the first rolled segment: the cleaner
        // cannot parse it, and must neither panic nor retry every round.
        let snapshot = partition.cleanable_snapshot().unwrap();
        let segment = &snapshot.segments[0];
        std::os::unix::fs::FileExt::write_all_at(&*segment.file, &[0x7f; 4], 61).unwrap();
        let state = clean_round(&replicas, CleanerState::default(), 1_000);
        let key: PartitionKey = (Arc::from("broken"), 0);
        assert_eq!(
            state.retry_after_ms.get(&key),
            Some(&(1_000 + FAILED_CLEAN_BACKOFF_MS))
        );
        let state = clean_round(&replicas, state, 2_000);
        assert_eq!(
            state.retry_after_ms.get(&key),
            Some(&(1_000 + FAILED_CLEAN_BACKOFF_MS)),
            "not retried before the backoff"
        );
        assert_eq!(partition.log_end_offset(), 4, "the log is untouched");
        replicas.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offsets_topic_from_an_older_version_becomes_compacted_and_stays_so() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::from_pairs([
            ("log.dirs", dir.path().display().to_string()),
            ("offsets.topic.num.partitions", "1".to_string()),
        ])
        .unwrap();
        let replicas = ReplicaManager::open(config.clone()).unwrap();
        replicas
            .create_topic_blocking(
                &NewTopic {
                    name: crate::group::OFFSETS_TOPIC,
                    partitions: 1,
                    replication_factor: 1,
                    configs: vec![("segment.bytes", "104857600")],
                },
                false,
            )
            .unwrap();
        let is_compacted = |replicas: &ReplicaManager| {
            let topic = replicas.topic(crate::group::OFFSETS_TOPIC).unwrap();
            let policy = topic.record.configs.get("cleanup.policy").cloned();
            let settings = topic.partitions[0].settings();
            (
                policy,
                settings.log.cleanup_compact,
                settings.log.cleanup_delete,
            )
        };
        assert_eq!(is_compacted(&replicas), (None, false, true));
        crate::group::GroupCoordinator::open(Arc::clone(&replicas), &config).unwrap();
        let expected = (Some("compact".to_string()), true, false);
        assert_eq!(is_compacted(&replicas), expected);
        replicas.shutdown();
        drop(replicas);
        let reopened = ReplicaManager::open(config).unwrap();
        assert_eq!(is_compacted(&reopened), expected, "persisted");
        reopened.shutdown();
    }
}
