//! Sluice client SDK: Kafka protocol connections usable against any Kafka-compatible broker.

pub mod admin;
pub mod connection;

pub use admin::Admin;
pub use connection::{ClientError, Connection};
