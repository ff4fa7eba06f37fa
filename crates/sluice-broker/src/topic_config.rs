//! Per-topic settings (Kafka's topic-level names) and their broker-wide synonyms.

use std::collections::BTreeMap;

use sluice_log::{CompressionType, LogConfig, TimestampType};

use crate::config::{
    validate_value, BrokerConfig, BrokerSource, ConfigError, SettingDef, SettingKind,
    CLEANUP_POLICIES, COMPRESSION_TYPES,
};

/// A topic setting and the broker setting that gives its default.
#[derive(Debug)]
pub struct TopicSettingDef {
    pub def: SettingDef,
    pub broker_synonym: &'static str,
}

const I32_MAX: i64 = i32::MAX as i64;

macro_rules! topic_setting {
    ($name:literal, $synonym:literal, $kind:expr, $doc:literal) => {
        TopicSettingDef {
            def: SettingDef {
                name: $name,
                aliases: &[],
                default: "",
                kind: $kind,
                doc: $doc,
            },
            broker_synonym: $synonym,
        }
    };
}

/// Every topic setting Sluice understands and enforces.
pub static TOPIC_SETTINGS: &[TopicSettingDef] = &[
    topic_setting!(
        "segment.bytes",
        "log.segment.bytes",
        SettingKind::Int {
            min: 14,
            max: I32_MAX
        },
        "Maximum size of one segment file."
    ),
    topic_setting!(
        "segment.ms",
        "log.roll.ms",
        SettingKind::Int {
            min: 1,
            max: i64::MAX
        },
        "Maximum age of the active segment before it rolls."
    ),
    topic_setting!(
        "max.message.bytes",
        "message.max.bytes",
        SettingKind::Int {
            min: 0,
            max: I32_MAX
        },
        "Largest record batch accepted."
    ),
    topic_setting!(
        "index.interval.bytes",
        "log.index.interval.bytes",
        SettingKind::Int {
            min: 0,
            max: I32_MAX
        },
        "Bytes between offset index entries."
    ),
    topic_setting!(
        "flush.messages",
        "log.flush.interval.messages",
        SettingKind::Int {
            min: 1,
            max: i64::MAX
        },
        "Fsync once this many records are unsynced."
    ),
    topic_setting!(
        "flush.ms",
        "log.flush.interval.ms",
        SettingKind::Int {
            min: 1,
            max: i64::MAX
        },
        "Fsync at least this often while records are unsynced."
    ),
    topic_setting!(
        "cleanup.policy",
        "log.cleanup.policy",
        SettingKind::List(CLEANUP_POLICIES),
        "delete (retention by time and size), compact (keep the last record per key), or both."
    ),
    topic_setting!(
        "retention.ms",
        "log.retention.ms",
        SettingKind::Int {
            min: -1,
            max: i64::MAX
        },
        "Segments whose newest record is older than this are deleted (-1: forever)."
    ),
    topic_setting!(
        "retention.bytes",
        "log.retention.bytes",
        SettingKind::Int {
            min: -1,
            max: i64::MAX
        },
        "The oldest segments are deleted while a partition is larger than this (-1: no limit)."
    ),
    topic_setting!(
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        SettingKind::Int {
            min: 0,
            max: i64::MAX
        },
        "How long a tombstone is kept once compaction has reached it."
    ),
    topic_setting!(
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        SettingKind::Int {
            min: 0,
            max: i64::MAX
        },
        "Minimum age of a record before compaction may remove it."
    ),
    topic_setting!(
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        SettingKind::Int {
            min: 1,
            max: i64::MAX
        },
        "Maximum time a record may stay uncompacted."
    ),
    topic_setting!(
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        SettingKind::Double { min: 0.0, max: 1.0 },
        "Share of the log that must be uncleaned before it is compacted."
    ),
    topic_setting!(
        "compression.type",
        "compression.type",
        SettingKind::Choice(COMPRESSION_TYPES),
        "producer keeps batches as the client compressed them; a codec recompresses to it."
    ),
    topic_setting!(
        "message.timestamp.type",
        "log.message.timestamp.type",
        SettingKind::Choice(&["CreateTime", "LogAppendTime"]),
        "CreateTime keeps the producer's timestamps; LogAppendTime stamps the broker's append time."
    ),
    topic_setting!(
        "min.insync.replicas",
        "min.insync.replicas",
        SettingKind::Int {
            min: 1,
            max: I32_MAX
        },
        "Replicas that must be in sync for acks=all."
    ),
    topic_setting!(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        SettingKind::Bool,
        "Whether a replica out of the ISR may lead when no in-sync replica is left (records may be lost)."
    ),
];

pub fn topic_setting(name: &str) -> Option<&'static TopicSettingDef> {
    TOPIC_SETTINGS.iter().find(|s| s.def.name == name)
}

/// Validates topic overrides as given in CreateTopics; returns them normalised.
pub fn validate_topic_configs<'a, I>(pairs: I) -> Result<BTreeMap<String, String>, ConfigError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        let setting = topic_setting(key).ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_string(),
        })?;
        out.insert(key.to_string(), validate_value(&setting.def, key, value)?);
    }
    Ok(out)
}

/// Where an effective topic setting comes from, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicOverride,
    /// No topic override: the broker's value, from the layer that set it.
    Broker(BrokerSource),
}

/// The effective value of a topic setting: the topic override, else the broker value.
pub fn effective<'a>(
    setting: &TopicSettingDef,
    overrides: &'a BTreeMap<String, String>,
    broker: &'a BrokerConfig,
) -> (&'a str, ConfigSource) {
    if let Some(value) = overrides.get(setting.def.name) {
        return (value, ConfigSource::TopicOverride);
    }
    let value = broker.value(setting.broker_synonym).unwrap_or("");
    (
        value,
        ConfigSource::Broker(broker.source(setting.broker_synonym)),
    )
}

fn effective_str<'a>(
    name: &str,
    overrides: &'a BTreeMap<String, String>,
    broker: &'a BrokerConfig,
) -> &'a str {
    let Some(setting) = topic_setting(name) else {
        debug_assert!(false, "unknown topic setting {name}");
        return "";
    };
    effective(setting, overrides, broker).0
}

fn effective_int(name: &str, overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> i64 {
    effective_str(name, overrides, broker).parse().unwrap_or(0)
}

/// The resolved settings of one topic, as the partitions use them.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub flush_messages: i64,
    pub flush_ms: u64,
    /// Broker-wide (`log.flush.interval.bytes`), no topic override.
    pub flush_bytes: i64,
    /// Broker-wide (`log.flush.method`), no topic override.
    pub flush_method: crate::flush::FlushMethod,
    pub min_insync_replicas: i32,
    /// The codec to store batches in; `None` keeps the producer's (`compression.type=producer`).
    pub compression: Option<CompressionType>,
    pub timestamp_type: TimestampType,
}

impl TopicSettings {
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> TopicSettings {
        let int = |name: &str| effective_int(name, overrides, broker);
        let text = |name: &str| effective_str(name, overrides, broker);
        let cleanup_policy: Vec<&str> = text("cleanup.policy").split(',').collect();
        TopicSettings {
            log: LogConfig {
                segment_bytes: u64::try_from(int("segment.bytes")).unwrap_or(1 << 30),
                segment_ms: int("segment.ms"),
                index_interval_bytes: u32::try_from(int("index.interval.bytes")).unwrap_or(4096),
                max_batch_bytes: usize::try_from(int("max.message.bytes")).unwrap_or(1_048_588),
                retention_ms: int("retention.ms"),
                retention_bytes: int("retention.bytes"),
                cleanup_delete: cleanup_policy.contains(&"delete"),
                cleanup_compact: cleanup_policy.contains(&"compact"),
                delete_retention_ms: int("delete.retention.ms"),
                min_compaction_lag_ms: int("min.compaction.lag.ms"),
                max_compaction_lag_ms: int("max.compaction.lag.ms"),
                min_cleanable_dirty_ratio: text("min.cleanable.dirty.ratio").parse().unwrap_or(0.5),
            },
            flush_messages: int("flush.messages"),
            flush_ms: u64::try_from(int("flush.ms")).unwrap_or(1000),
            flush_bytes: broker.log_flush_interval_bytes(),
            flush_method: crate::flush::FlushMethod::from_config_name(
                broker.value("log.flush.method").unwrap_or_default(),
            )
            .unwrap_or_default(),
            min_insync_replicas: i32::try_from(int("min.insync.replicas")).unwrap_or(1),
            compression: CompressionType::from_config_name(text("compression.type")),
            timestamp_type: TimestampType::from_config_name(text("message.timestamp.type"))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_override_beats_broker_value() {
        let broker = BrokerConfig::from_pairs([("log.segment.bytes", "2048")]).unwrap();
        let overrides = validate_topic_configs([("max.message.bytes", "100")]).unwrap();
        let settings = TopicSettings::resolve(&overrides, &broker);
        assert_eq!(settings.log.segment_bytes, 2048);
        assert_eq!(settings.log.max_batch_bytes, 100);
        let setting = topic_setting("segment.bytes").unwrap();
        assert_eq!(
            effective(setting, &overrides, &broker),
            ("2048", ConfigSource::Broker(BrokerSource::Static))
        );
    }

    #[test]
    fn unknown_and_bad_topic_configs_are_rejected() {
        assert!(validate_topic_configs([("retention.nope", "1")]).is_err());
        assert!(validate_topic_configs([("segment.bytes", "-5")]).is_err());
        assert!(validate_topic_configs([("cleanup.policy", "compact,bogus")]).is_err());
        assert!(validate_topic_configs([("min.cleanable.dirty.ratio", "1.5")]).is_err());
        assert!(validate_topic_configs([("compression.type", "brotli")]).is_err());
    }

    #[test]
    fn retention_compaction_and_codec_settings_resolve() {
        let broker = BrokerConfig::from_pairs([("log.retention.ms", "1000")]).unwrap();
        let overrides = validate_topic_configs([
            ("cleanup.policy", "compact, delete"),
            ("compression.type", "zstd"),
            ("message.timestamp.type", "LogAppendTime"),
        ])
        .unwrap();
        assert_eq!(overrides["cleanup.policy"], "compact,delete");
        let settings = TopicSettings::resolve(&overrides, &broker);
        assert!(settings.log.cleanup_compact && settings.log.cleanup_delete);
        assert_eq!(settings.log.retention_ms, 1000);
        assert_eq!(settings.compression, Some(CompressionType::Zstd));
        assert_eq!(settings.timestamp_type, TimestampType::LogAppendTime);
        let defaults = TopicSettings::resolve(&BTreeMap::new(), &BrokerConfig::default());
        assert!(defaults.log.cleanup_delete && !defaults.log.cleanup_compact);
        assert_eq!(defaults.compression, None);
        assert_eq!(defaults.log.retention_bytes, -1);
    }
}
