//! The retention task: every `log.retention.check.interval.ms`, applies `retention.ms` and
//! `retention.bytes` (and deletes segments below a DeleteRecords start) on every partition.
//!
//! The work is blocking file I/O, so each pass runs on the blocking pool; each partition
//! holds its lock only to take segments out of the log and rename their files, the unlink
//! happens after (see `Partition::apply_retention`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::now_ms;
use crate::replica_manager::ReplicaManager;

/// One retention pass over every partition at `now_ms`. Returns the segments deleted.
pub fn apply_retention_all(replicas: &ReplicaManager, now_ms: i64) -> usize {
    let mut deleted = 0;
    for topic in replicas.all_topics() {
        for partition in &topic.partitions {
            match partition.apply_retention(now_ms) {
                Ok(count) => deleted += count,
                Err(error) => {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "retention failed");
                }
            }
        }
    }
    deleted
}

/// Runs retention passes until shutdown.
pub async fn run_retention(replicas: Arc<ReplicaManager>, mut shutdown: watch::Receiver<bool>) {
    let interval =
        Duration::from_millis(replicas.config().log_retention_check_interval_ms().max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let pass = Arc::clone(&replicas);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || apply_retention_all(&pass, now_ms())).await {
            Ok(deleted) if deleted > 0 => {
                tracing::info!(
                    deleted_segments = deleted,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention pass deleted segments"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "retention pass panicked"),
        }
    }
}
