//! `sluice-controller`: the metadata quorum of a Sluice cluster.
//!
//! A Raft-replicated log (on `openraft`) of metadata records (broker registrations, topics,
//! partition assignment, leaders, ISR, leader epochs, configs, producer id blocks) applied
//! by every controller to an identical [`MetadataImage`]. Brokers talk to it through
//! [`Controller`]: `propose` a [`ControllerRequest`], watch the image.
//!
//! Architecture invariant: this crate knows nothing of record batches, partitions' data or
//! the Kafka wire protocol (it only borrows Kafka's error codes).

pub mod control;
pub mod error;
pub mod image;
pub mod placement;
pub mod records;

pub use control::{ControllerRequest, ControllerResponse};
pub use error::{ApiError, ControllerError};
pub use image::MetadataImage;
pub use records::{MetadataBatch, MetadataRecord};
pub mod storage;

/// Raft node id of a controller (Kafka's `node.id`).
pub type NodeId = u64;

/// What applying one raft entry returns to the proposer: its log index (the broker epoch of
/// a RegisterBroker record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyResult {
    pub index: u64,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata quorum.
    pub TypeConfig:
        D = MetadataBatch,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
pub mod config;
mod controller;
mod network;

pub use config::{parse_voters, ControllerConfig, METADATA_DIR_NAME};
pub use controller::{Controller, ControllerMetrics};
