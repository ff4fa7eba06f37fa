//! What the SDK's integration tests share: a real broker in-process.

#![allow(dead_code)] // each test binary uses a different part

/// Starts a real broker on an ephemeral port over a fresh data directory, with `extra`
/// settings; returns it, the directory (deleted when dropped) and its bootstrap address.
pub async fn start_broker(
    extra: &[(&str, &str)],
) -> (sluice_broker::RunningBroker, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut pairs = vec![
        ("listeners".to_string(), "127.0.0.1:0".to_string()),
        ("log.dirs".to_string(), dir.path().display().to_string()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = sluice_broker::BrokerConfig::from_pairs(pairs).unwrap();
    let broker = sluice_broker::start(config).await.unwrap();
    let bootstrap = broker.local_addr.to_string();
    (broker, dir, bootstrap)
}
