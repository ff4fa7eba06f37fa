//! The Sluice broker: Kafka protocol listener, request handlers and the partitions of
//! this node. The only crate where the storage engine and the network meet.

/// Shared with the `sluice` binary and the fuzz harness, which both install it.
pub mod alloc_guard;
pub mod api;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod flush;
pub mod fuzzing;
pub mod group;
pub mod http;
pub mod log_cleaner;
pub mod metadata_store;
pub mod metrics;
pub mod partition;
pub mod replica_fetcher;
pub mod replica_manager;
pub mod replication;
pub mod response;
pub mod retention;
pub mod server;
pub mod topic_config;

pub use broker::{start, Broker, RunningBroker, StartError};
pub use config::{BrokerConfig, ConfigError};
