//! IncrementalAlterConfigs (key 44): SET, DELETE, APPEND and SUBTRACT single settings of a
//! topic or a dynamic broker layer, leaving the others as they are.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::alter_configs::{
    alter_each, apply, current_overrides, handle_alter, invalid_config, invalid_request, target,
    Refusal, Target,
};
use super::{ApiError, RequestContext};
use crate::broker::Broker;
use crate::config::{broker_setting, BrokerConfig, SettingKind};
use crate::topic_config::{effective, topic_setting};

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The kind of a setting of `target`, if the name is known there.
fn setting_kind(target: Target<'_>, key: &str) -> Option<SettingKind> {
    match target {
        Target::Topic(_) => topic_setting(key).map(|s| s.def.kind),
        Target::Broker(_) => broker_setting(key).map(|def| def.kind),
    }
}

/// The value APPEND and SUBTRACT start from: the override, else the effective value.
fn list_base(
    target: Target<'_>,
    key: &str,
    overrides: &BTreeMap<String, String>,
    config: &BrokerConfig,
) -> String {
    if let Some(value) = overrides.get(key) {
        return value.clone();
    }
    match target {
        Target::Topic(_) => topic_setting(key)
            .map(|setting| effective(setting, overrides, config).0.to_string())
            .unwrap_or_default(),
        Target::Broker(_) => config.value(key).unwrap_or("").to_string(),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect()
}

/// Applies one operation to the override set; validation of values comes afterwards.
fn apply_op(
    target: Target<'_>,
    entry: &AlterableConfig,
    overrides: &mut BTreeMap<String, String>,
    config: &BrokerConfig,
) -> Result<(), Refusal> {
    let key = entry.name.as_str();
    let value = entry.value.as_ref().map(|v| v.as_str());
    match entry.config_operation {
        OP_SET => {
            let value = value.ok_or_else(|| invalid_request(format!("null value for `{key}`")))?;
            overrides.insert(key.to_string(), value.to_string());
        }
        OP_DELETE => {
            overrides.remove(key);
        }
        op @ (OP_APPEND | OP_SUBTRACT) => {
            match setting_kind(target, key) {
                Some(SettingKind::List(_)) => {}
                Some(_) => {
                    return Err(invalid_config(format!(
                        "`{key}` is not a list; APPEND and SUBTRACT apply to list settings only"
                    )))
                }
                // Unknown keys are reported by validation with the usual message.
                None => {
                    overrides.insert(key.to_string(), value.unwrap_or("").to_string());
                    return Ok(());
                }
            }
            let value = value.ok_or_else(|| invalid_request(format!("null value for `{key}`")))?;
            let mut words = split_list(&list_base(target, key, overrides, config));
            for word in split_list(value) {
                if op == OP_APPEND {
                    if !words.contains(&word) {
                        words.push(word);
                    }
                } else {
                    words.retain(|existing| *existing != word);
                }
            }
            if words.is_empty() {
                overrides.remove(key);
            } else {
                overrides.insert(key.to_string(), words.join(","));
            }
        }
        other => {
            return Err(invalid_request(format!(
                "unknown config operation {other} for `{key}`"
            )))
        }
    }
    Ok(())
}

fn alter_one(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    entries: &[AlterableConfig],
    validate_only: bool,
) -> Result<(), Refusal> {
    let target = target(broker, resource_type, name)?;
    let mut overrides = current_overrides(broker, target)?;
    let config = broker.config();
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let key = entry.name.as_str();
        if keys.contains(&key) {
            return Err(invalid_request(format!("`{key}` is given twice")));
        }
        keys.push(key);
        apply_op(target, entry, &mut overrides, &config)?;
    }
    apply(broker, target, &overrides, validate_only)
}

pub fn handle(
    ctx: &RequestContext,
    request: IncrementalAlterConfigsRequest,
) -> Result<Bytes, ApiError> {
    handle_alter!(
        ctx,
        request,
        "IncrementalAlterConfigs",
        IncrementalAlterConfigsResponse,
        AlterConfigsResourceResponse
    )
}
