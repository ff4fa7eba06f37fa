//! Dead letters: a record whose handler failed on every attempt is published to a
//! dead-letter topic with its original key, value and headers plus `sluice.dlq.*` headers
//! saying where it came from and why it failed, so the partition moves on and the record
//! can be inspected and replayed later (`sluice dlq replay`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::connection::ClientError;
use crate::record::{ConsumerRecord, Header, ProducerRecord, RecordMetadata};

pub const DLQ_TOPIC_HEADER: &str = "sluice.dlq.topic";
pub const DLQ_PARTITION_HEADER: &str = "sluice.dlq.partition";
pub const DLQ_OFFSET_HEADER: &str = "sluice.dlq.offset";
pub const DLQ_ATTEMPTS_HEADER: &str = "sluice.dlq.attempts";
pub const DLQ_ERROR_HEADER: &str = "sluice.dlq.error";
pub const DLQ_FAILED_AT_HEADER: &str = "sluice.dlq.failed.at.ms";
/// The prefix of every header the processor adds to a dead letter.
pub const DLQ_HEADER_PREFIX: &str = "sluice.dlq.";
/// The default dead-letter topic is the record's topic plus this suffix.
pub const DLQ_TOPIC_SUFFIX: &str = ".dlq";

/// A boxed, sendable future (the dead-letter sink is used as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes dead letters; the SDK's Producer implements it, tests use an adapter on the
/// low-level producer. The record counts as done only once `publish` returned Ok, so an
/// implementation must return only after the broker acknowledged the write.
pub trait DeadLetterSink: Send + Sync {
    fn publish(&self, record: ProducerRecord)
        -> BoxFuture<'_, Result<RecordMetadata, ClientError>>;
}

/// The SDK producer parks dead letters: `publish` returns once the broker acknowledged the
/// record (with the producer's acks, `all` by default).
impl DeadLetterSink for crate::Producer {
    fn publish(
        &self,
        record: ProducerRecord,
    ) -> BoxFuture<'_, Result<RecordMetadata, ClientError>> {
        Box::pin(async move { self.send(record).await?.await })
    }
}

/// Which topic a dead letter goes to.
#[derive(Clone)]
pub enum DeadLetterTopic {
    /// The record's topic plus a suffix (default `.dlq`).
    Suffix(String),
    /// One topic for every record.
    Fixed(String),
    /// Chosen per record.
    Function(Arc<dyn Fn(&ConsumerRecord) -> String + Send + Sync>),
}

impl Default for DeadLetterTopic {
    fn default() -> Self {
        DeadLetterTopic::Suffix(DLQ_TOPIC_SUFFIX.to_string())
    }
}

impl std::fmt::Debug for DeadLetterTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterTopic::Suffix(suffix) => write!(f, "Suffix({suffix:?})"),
            DeadLetterTopic::Fixed(topic) => write!(f, "Fixed({topic:?})"),
            DeadLetterTopic::Function(_) => write!(f, "Function(..)"),
        }
    }
}

impl DeadLetterTopic {
    pub fn topic_for(&self, record: &ConsumerRecord) -> String {
        match self {
            DeadLetterTopic::Suffix(suffix) => format!("{}{suffix}", record.topic),
            DeadLetterTopic::Fixed(topic) => topic.clone(),
            DeadLetterTopic::Function(choose) => choose(record),
        }
    }
}

fn is_dlq_header(header: &Header) -> bool {
    header.key.starts_with(DLQ_HEADER_PREFIX)
}

/// The dead letter of `record`: original key, value and headers (minus `sluice.dlq.*`
/// headers of an earlier dead-lettering), plus the `sluice.dlq.*` headers. The partition is
/// left to the producer's partitioner (by key, so a key's dead letters stay in order).
pub fn dead_letter_record(
    record: &ConsumerRecord,
    dlq_topic: String,
    attempts: u32,
    error: &str,
    failed_at_ms: i64,
) -> ProducerRecord {
    let mut headers: Vec<Header> = record
        .headers
        .iter()
        .filter(|h| !is_dlq_header(h))
        .cloned()
        .collect();
    let text = |key: &str, value: String| Header::new(key, Bytes::from(value));
    headers.push(text(DLQ_TOPIC_HEADER, record.topic.clone()));
    headers.push(text(DLQ_PARTITION_HEADER, record.partition.to_string()));
    headers.push(text(DLQ_OFFSET_HEADER, record.offset.to_string()));
    headers.push(text(DLQ_ATTEMPTS_HEADER, attempts.to_string()));
    headers.push(text(DLQ_ERROR_HEADER, error.to_string()));
    headers.push(text(DLQ_FAILED_AT_HEADER, failed_at_ms.to_string()));
    ProducerRecord {
        topic: dlq_topic,
        partition: None,
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        timestamp_ms: None,
    }
}

/// Where a dead letter came from and why, read from its `sluice.dlq.*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempts: u32,
    pub error: String,
    pub failed_at_ms: i64,
}

/// A record without valid `sluice.dlq.*` headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    #[error("not a dead letter: header {0} is missing")]
    MissingHeader(&'static str),
    #[error("dead-letter header {header} has an invalid value {value:?}")]
    InvalidHeader { header: &'static str, value: String },
}

fn header_text(headers: &[Header], key: &'static str) -> Result<String, DeadLetterError> {
    let header = headers
        .iter()
        .rev()
        .find(|h| h.key == key)
        .ok_or(DeadLetterError::MissingHeader(key))?;
    let value = header.value.as_deref().unwrap_or_default();
    String::from_utf8(value.to_vec()).map_err(|_| DeadLetterError::InvalidHeader {
        header: key,
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

fn header_number<T: std::str::FromStr>(
    headers: &[Header],
    key: &'static str,
) -> Result<T, DeadLetterError> {
    let text = header_text(headers, key)?;
    text.parse().map_err(|_| DeadLetterError::InvalidHeader {
        header: key,
        value: text,
    })
}

impl DeadLetterInfo {
    /// Parses the `sluice.dlq.*` headers (the last of each name wins).
    pub fn from_headers(headers: &[Header]) -> Result<DeadLetterInfo, DeadLetterError> {
        Ok(DeadLetterInfo {
            topic: header_text(headers, DLQ_TOPIC_HEADER)?,
            partition: header_number(headers, DLQ_PARTITION_HEADER)?,
            offset: header_number(headers, DLQ_OFFSET_HEADER)?,
            attempts: header_number(headers, DLQ_ATTEMPTS_HEADER)?,
            error: header_text(headers, DLQ_ERROR_HEADER)?,
            failed_at_ms: header_number(headers, DLQ_FAILED_AT_HEADER)?,
        })
    }
}

/// The dead-letter headers of a record read from a dead-letter topic.
pub fn dead_letter_headers(record: &ConsumerRecord) -> Result<DeadLetterInfo, DeadLetterError> {
    DeadLetterInfo::from_headers(&record.headers)
}

/// The record to produce to replay a dead letter: to its original topic (or `to_topic`),
/// with its key, value and original headers (the `sluice.dlq.*` ones stripped). The
/// partition is left to the partitioner, which puts a keyed record back on its key's
/// partition. Fails when `to_topic` is `None` and the record names no original topic.
pub fn replay_record(
    dlq_record: &ConsumerRecord,
    to_topic: Option<&str>,
) -> Result<ProducerRecord, DeadLetterError> {
    let topic = match to_topic {
        Some(topic) => topic.to_string(),
        None => header_text(&dlq_record.headers, DLQ_TOPIC_HEADER)?,
    };
    Ok(ProducerRecord {
        topic,
        partition: None,
        key: dlq_record.key.clone(),
        value: dlq_record.value.clone(),
        headers: dlq_record
            .headers
            .iter()
            .filter(|h| !is_dlq_header(h))
            .cloned()
            .collect(),
        timestamp_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".to_string(),
            partition: 2,
            offset: 41,
            timestamp_ms: 1_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![
                Header::new("message-id", "m-1"),
                Header {
                    key: "empty".to_string(),
                    value: None,
                },
            ],
        }
    }

    fn as_consumed(record: ProducerRecord, partition: i32, offset: i64) -> ConsumerRecord {
        ConsumerRecord {
            topic: record.topic,
            partition,
            offset,
            timestamp_ms: 2_000,
            key: record.key,
            value: record.value,
            headers: record.headers,
        }
    }

    #[test]
    fn dead_letter_headers_round_trip_and_replay_restores_the_original() {
        let topic = DeadLetterTopic::default().topic_for(&original());
        assert_eq!(topic, "orders.dlq");
        let letter = dead_letter_record(&original(), topic, 3, "boom: ü", 1_700_000_000_123);
        assert_eq!(letter.headers.len(), 8);
        let consumed = as_consumed(letter, 0, 7);
        let info = dead_letter_headers(&consumed).unwrap();
        assert_eq!(
            info,
            DeadLetterInfo {
                topic: "orders".to_string(),
                partition: 2,
                offset: 41,
                attempts: 3,
                error: "boom: ü".to_string(),
                failed_at_ms: 1_700_000_000_123,
            }
        );
        let replay = replay_record(&consumed, None).unwrap();
        assert_eq!(replay.topic, "orders");
        assert_eq!(replay.key, original().key);
        assert_eq!(replay.value, original().value);
        assert_eq!(replay.headers, original().headers);
        assert_eq!(
            replay_record(&consumed, Some("other")).unwrap().topic,
            "other"
        );
    }

    #[test]
    fn a_dead_letter_dead_lettered_again_keeps_one_set_of_dlq_headers() {
        let first = dead_letter_record(&original(), "orders.dlq".into(), 3, "a", 1);
        let consumed = as_consumed(first, 0, 0);
        let second = dead_letter_record(&consumed, "orders.dlq.dlq".into(), 1, "b", 2);
        assert_eq!(
            second.headers.iter().filter(|h| is_dlq_header(h)).count(),
            6
        );
        let info = DeadLetterInfo::from_headers(&second.headers).unwrap();
        assert_eq!(
            (info.topic.as_str(), info.error.as_str()),
            ("orders.dlq", "b")
        );
    }

    #[test]
    fn parsing_rejects_missing_and_invalid_headers() {
        assert_eq!(
            dead_letter_headers(&original()),
            Err(DeadLetterError::MissingHeader(DLQ_TOPIC_HEADER))
        );
        assert_eq!(
            replay_record(&original(), None),
            Err(DeadLetterError::MissingHeader(DLQ_TOPIC_HEADER))
        );
        let mut letter = dead_letter_record(&original(), "d".into(), 3, "e", 5);
        for header in &mut letter.headers {
            if header.key == DLQ_OFFSET_HEADER {
                header.value = Some(Bytes::from_static(b"forty"));
            }
        }
        assert!(matches!(
            DeadLetterInfo::from_headers(&letter.headers),
            Err(DeadLetterError::InvalidHeader {
                header: DLQ_OFFSET_HEADER,
                ..
            })
        ));
        let topic = DeadLetterTopic::Function(Arc::new(|r: &ConsumerRecord| {
            format!("dead-{}", r.partition)
        }));
        assert_eq!(topic.topic_for(&original()), "dead-2");
        assert_eq!(
            DeadLetterTopic::Fixed("x".into()).topic_for(&original()),
            "x"
        );
    }
}
