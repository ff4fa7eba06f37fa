//! Sluice client SDK: Kafka protocol connections usable against any Kafka-compatible broker.

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod dedup;
pub mod fetcher;
pub mod partitioner;
pub mod pipeline;
pub mod processor;
pub mod producer;
pub mod record;
pub mod topics;

pub use admin::Admin;
pub use connection::{ClientError, Connection};
pub use consumer::{AutoOffsetReset, Consumer, ConsumerOptions, RebalanceListener};
pub use fetcher::{FetchConfig, Fetcher};
pub use pipeline::PipelinedConnection;
pub use processor::{Processor, ProcessorConfig};
pub use producer::{BatchProducer, DeliveryFuture, Producer, ProducerConfig, ProducerOptions};
pub use record::{ConsumerRecord, Header, ProducerRecord, RecordMetadata, TopicPartition};
pub use topics::{ensure_topic, TopicLayout};
