//! One module per Kafka API: `handle(request) -> response`.
//!
//! [`SUPPORTED_APIS`] is the single list of what this broker implements; ApiVersions
//! advertises exactly it and the listener refuses anything outside it.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::broker::Broker;
use crate::server::Dispatched;

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod elect_leaders;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

/// Every API this broker implements, with the version range that is implemented and
/// tested end to end.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::ElectLeaders, 0, 2),
];

pub fn is_supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED_APIS
        .iter()
        .any(|(key, min, max)| *key == api_key && (*min..=*max).contains(&version))
}

/// Why a request could not be answered; either closes the connection.
#[derive(Debug)]
pub enum ApiError {
    /// The client sent bytes that are not a valid request of that version.
    Decode(String),
    /// A response could not be encoded: a bug of ours, logged as an error.
    Encode(String),
    /// The protocol says to close the connection (an acks=0 produce that failed).
    Close(String),
}

/// The request being handled: its header and version.
pub struct RequestContext {
    pub broker: Arc<Broker>,
    pub header: RequestHeader,
    pub api_key: ApiKey,
    /// The client's address (group members' client_host).
    pub peer: Option<std::net::SocketAddr>,
}

impl RequestContext {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    /// Encodes a complete response frame: size prefix, response header, body.
    pub fn respond<R: Encodable>(&self, body: &R) -> Result<Bytes, ApiError> {
        encode_frame(
            self.api_key,
            self.version(),
            self.header.correlation_id,
            body,
        )
    }
}

pub fn encode_frame<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, ApiError> {
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encode_error = |e: anyhow::Error| ApiError::Encode(format!("{api_key:?} v{version}: {e}"));
    let size = header.compute_size(header_version).map_err(encode_error)?
        + body.compute_size(version).map_err(encode_error)?;
    let size_prefix =
        i32::try_from(size).map_err(|_| ApiError::Encode(format!("response of {size} bytes")))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size_prefix);
    header
        .encode(&mut buf, header_version)
        .map_err(encode_error)?;
    body.encode(&mut buf, version).map_err(encode_error)?;
    debug_assert_eq!(buf.len(), 4 + size, "computed size disagrees with encoding");
    Ok(buf.freeze())
}

fn decode<R: Decodable>(body: &mut Bytes, api_key: ApiKey, version: i16) -> Result<R, ApiError> {
    R::decode(body, version).map_err(|e| ApiError::Decode(format!("{api_key:?}: {e}")))
}

/// Decodes the request body and runs its handler.
pub async fn dispatch(
    broker: &Arc<Broker>,
    api_key: ApiKey,
    header: RequestHeader,
    mut body: Bytes,
    peer: Option<std::net::SocketAddr>,
) -> Result<Dispatched, ApiError> {
    let version = header.request_api_version;
    let ctx = RequestContext {
        broker: Arc::clone(broker),
        header,
        api_key,
        peer,
    };
    let now = |frame: Bytes| Ok(Dispatched::Now(Some(frame)));
    match api_key {
        ApiKey::ApiVersions => now(api_versions::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::Metadata => {
            now(metadata::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::CreateTopics => {
            now(create_topics::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::DeleteTopics => {
            now(delete_topics::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::CreatePartitions => {
            now(create_partitions::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::DescribeConfigs => now(describe_configs::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::AlterConfigs => now(alter_configs::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::IncrementalAlterConfigs => now(incremental_alter_configs::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::DescribeCluster => now(describe_cluster::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::OffsetForLeaderEpoch => now(offset_for_leader_epoch::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::ListOffsets => now(list_offsets::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::FindCoordinator => now(find_coordinator::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::Heartbeat => now(heartbeat::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::LeaveGroup => now(leave_group::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::OffsetFetch => now(offset_fetch::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::ListGroups => now(list_groups::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::DescribeGroups => now(describe_groups::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::DeleteGroups => now(delete_groups::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::OffsetDelete => now(offset_delete::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::DeleteRecords => now(delete_records::handle(
            &ctx,
            decode(&mut body, api_key, version)?,
        )?),
        ApiKey::ElectLeaders => {
            now(elect_leaders::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::InitProducerId => {
            now(init_producer_id::handle(&ctx, decode(&mut body, api_key, version)?).await?)
        }
        ApiKey::JoinGroup => join_group::handle(ctx, decode(&mut body, api_key, version)?),
        ApiKey::SyncGroup => sync_group::handle(ctx, decode(&mut body, api_key, version)?),
        ApiKey::OffsetCommit => offset_commit::handle(ctx, decode(&mut body, api_key, version)?),
        ApiKey::Produce => produce::handle(ctx, decode(&mut body, api_key, version)?),
        ApiKey::Fetch => Ok(fetch::handle(ctx, decode(&mut body, api_key, version)?)),
        other => Err(ApiError::Decode(format!("{other:?} is not implemented"))),
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
