//! Per-topic settings (Kafka's topic-level names) and their broker-wide synonyms.

use std::collections::BTreeMap;

use sluice_log::LogConfig;

use crate::config::{validate_value, BrokerConfig, ConfigError, SettingDef, SettingKind};

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
        SettingKind::Choice(&["delete"]),
        "Cleanup policy; compaction is not implemented yet."
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
    BrokerOverride,
    Default,
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
    if broker.is_default(setting.broker_synonym) {
        (value, ConfigSource::Default)
    } else {
        (value, ConfigSource::BrokerOverride)
    }
}

fn effective_int(name: &str, overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> i64 {
    let Some(setting) = topic_setting(name) else {
        debug_assert!(false, "unknown topic setting {name}");
        return 0;
    };
    let (value, _) = effective(setting, overrides, broker);
    value.parse().unwrap_or(0)
}

/// The resolved settings of one topic, as the partitions use them.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub flush_messages: i64,
    pub flush_ms: u64,
    pub min_insync_replicas: i32,
}

impl TopicSettings {
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> TopicSettings {
        let int = |name: &str| effective_int(name, overrides, broker);
        TopicSettings {
            log: LogConfig {
                segment_bytes: u64::try_from(int("segment.bytes")).unwrap_or(1 << 30),
                segment_ms: int("segment.ms"),
                index_interval_bytes: u32::try_from(int("index.interval.bytes")).unwrap_or(4096),
                max_batch_bytes: usize::try_from(int("max.message.bytes")).unwrap_or(1_048_588),
            },
            flush_messages: int("flush.messages"),
            flush_ms: u64::try_from(int("flush.ms")).unwrap_or(1000),
            min_insync_replicas: i32::try_from(int("min.insync.replicas")).unwrap_or(1),
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
            ("2048", ConfigSource::BrokerOverride)
        );
    }

    #[test]
    fn unknown_and_bad_topic_configs_are_rejected() {
        assert!(validate_topic_configs([("retention.nope", "1")]).is_err());
        assert!(validate_topic_configs([("segment.bytes", "-5")]).is_err());
        assert!(validate_topic_configs([("cleanup.policy", "compact")]).is_err());
    }
}
