//! DescribeConfigs (key 32) for topics and this broker.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::config::{is_dynamic, BrokerConfig, BrokerSource, SettingDef, SettingKind};
use crate::topic_config::{effective, ConfigSource, TOPIC_SETTINGS};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// One described setting.
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub def: &'static SettingDef,
    /// (name, value, source), most specific first.
    pub synonyms: Vec<(&'static str, String, i8)>,
}

fn config_type(kind: SettingKind) -> i8 {
    match kind {
        SettingKind::Bool => 1,
        SettingKind::Int { max, .. } if max <= i64::from(i32::MAX) => 3,
        SettingKind::Int { .. } => 5,
        SettingKind::Double { .. } => 6,
        SettingKind::List(_) => 7,
        SettingKind::HostPort
        | SettingKind::Path
        | SettingKind::Choice(_)
        | SettingKind::HostCounts
        | SettingKind::Text
        | SettingKind::Voters => 2,
    }
}

fn source_code(source: BrokerSource) -> i8 {
    match source {
        BrokerSource::DynamicBroker => SOURCE_DYNAMIC_BROKER,
        BrokerSource::DynamicDefault => SOURCE_DYNAMIC_DEFAULT_BROKER,
        BrokerSource::Static => SOURCE_STATIC_BROKER,
        BrokerSource::Default => SOURCE_DEFAULT,
    }
}

/// Every broker layer that sets `name`, most specific first, as synonyms.
fn broker_synonyms(broker: &BrokerConfig, name: &'static str) -> Vec<(&'static str, String, i8)> {
    broker
        .layers(name)
        .into_iter()
        .map(|(value, source)| (name, value.to_string(), source_code(source)))
        .collect()
}

/// The effective settings of a topic, filtered by `keys` when given.
pub fn topic_config_entries(
    broker: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
    keys: Option<&[&str]>,
) -> Vec<ConfigEntry> {
    TOPIC_SETTINGS
        .iter()
        .filter(|s| keys.is_none_or(|keys| keys.contains(&s.def.name)))
        .map(|setting| {
            let (value, source) = effective(setting, overrides, broker);
            let mut synonyms = Vec::new();
            if let Some(topic_value) = overrides.get(setting.def.name) {
                synonyms.push((setting.def.name, topic_value.clone(), SOURCE_TOPIC));
            }
            synonyms.extend(broker_synonyms(broker, setting.broker_synonym));
            ConfigEntry {
                name: setting.def.name,
                value: value.to_string(),
                source: match source {
                    ConfigSource::TopicOverride => SOURCE_TOPIC,
                    ConfigSource::Broker(source) => source_code(source),
                },
                read_only: false,
                def: &setting.def,
                synonyms,
            }
        })
        .collect()
}

fn broker_config_entries(broker: &BrokerConfig, keys: Option<&[&str]>) -> Vec<ConfigEntry> {
    broker
        .describe()
        .filter(|(def, _, _)| keys.is_none_or(|keys| keys.contains(&def.name)))
        .map(|(def, value, source)| ConfigEntry {
            name: def.name,
            value: value.to_string(),
            source: source_code(source),
            // Only dynamic settings can change without a restart.
            read_only: !is_dynamic(def.name),
            def,
            synonyms: broker_synonyms(broker, def.name),
        })
        .collect()
}

pub fn handle(ctx: &RequestContext, request: DescribeConfigsRequest) -> Result<Bytes, ApiError> {
    let broker = &ctx.broker;
    let version = ctx.version();
    let results = request
        .resources
        .iter()
        .map(|resource| {
            // Null or empty: every setting.
            let keys: Option<Vec<&str>> = resource
                .configuration_keys
                .as_ref()
                .filter(|keys| !keys.is_empty())
                .map(|keys| keys.iter().map(|k| k.as_str()).collect());
            let keys = keys.as_deref();
            let name = resource.resource_name.as_str();
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => match broker.replicas.topic(name) {
                    Some(topic) => Ok(topic_config_entries(
                        &broker.config(),
                        &topic.record.configs,
                        keys,
                    )),
                    None => Err((
                        ResponseError::UnknownTopicOrPartition.code(),
                        format!("unknown topic '{name}'"),
                    )),
                },
                RESOURCE_BROKER if name.is_empty() || name == broker.node_id().to_string() => {
                    Ok(broker_config_entries(&broker.config(), keys))
                }
                RESOURCE_BROKER => Err((
                    ResponseError::InvalidRequest.code(),
                    format!("this is broker {}, not broker '{name}'", broker.node_id()),
                )),
                other => Err((
                    ResponseError::InvalidRequest.code(),
                    format!("resource type {other} is not supported"),
                )),
            };
            match entries {
                Ok(entries) => result.with_configs(
                    entries
                        .into_iter()
                        .map(|entry| encode_entry(entry, version, &request))
                        .collect(),
                ),
                Err((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message))),
            }
        })
        .collect();
    ctx.respond(&DescribeConfigsResponse::default().with_results(results))
}

fn encode_entry(
    entry: ConfigEntry,
    version: i16,
    request: &DescribeConfigsRequest,
) -> DescribeConfigsResourceResult {
    let synonyms = if request.include_synonyms {
        entry
            .synonyms
            .iter()
            .map(|(name, value, source)| {
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_static_str(name))
                    .with_value(Some(StrBytes::from_string(value.clone())))
                    .with_source(*source)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(entry.name))
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source)
        .with_synonyms(synonyms);
    if version >= 3 {
        result = result.with_config_type(config_type(entry.def.kind));
        if request.include_documentation {
            result = result.with_documentation(Some(StrBytes::from_static_str(entry.def.doc)));
        }
    }
    result
}
