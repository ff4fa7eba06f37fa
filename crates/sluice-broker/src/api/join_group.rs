//! JoinGroup (key 11). The answer waits until the rebalance's join phase completes;
//! from v4 an unknown member first gets MEMBER_ID_REQUIRED with its id (KIP-394).

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::group::{JoinOutcome, JoinRequest, JoinResult};
use crate::server::Dispatched;

pub fn handle(ctx: RequestContext, request: JoinGroupRequest) -> Result<Dispatched, ApiError> {
    let version = ctx.version();
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: ctx
            .header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: ctx.peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let outcome = ctx.broker.groups.join(request.group_id.as_str(), join);
    match outcome {
        JoinOutcome::Now(result) => Ok(Dispatched::Now(Some(respond(&ctx, result)?))),
        JoinOutcome::Later(rx) => {
            let member_id = request.member_id.to_string();
            let mut shutdown = ctx.broker.shutdown_signal();
            Ok(Dispatched::Later(Box::pin(async move {
                let result = tokio::select! {
                    result = rx => result.unwrap_or_else(|_| {
                        JoinResult::error(ResponseError::UnknownMemberId.code(), &member_id)
                    }),
                    _ = crate::server::stopped(&mut shutdown) => {
                        JoinResult::error(ResponseError::CoordinatorNotAvailable.code(), &member_id)
                    }
                };
                respond(&ctx, result).map(Some)
            })))
        }
    }
}

fn respond(ctx: &RequestContext, result: JoinResult) -> Result<bytes::Bytes, ApiError> {
    let version = ctx.version();
    let members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let m = JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(id))
                .with_metadata(metadata);
            if version >= 5 {
                m.with_group_instance_id(instance.map(StrBytes::from_string))
            } else {
                m
            }
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(members);
    // Before v7 the protocol name is a non-null string.
    let protocol = result.protocol.map(StrBytes::from_string);
    if version >= 7 {
        response = response
            .with_protocol_type(result.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(protocol);
    } else {
        response = response.with_protocol_name(Some(protocol.unwrap_or_default()));
    }
    if result.error == 0 {
        tracing::debug!(group_member = %response.member_id.as_str(), generation = response.generation_id, "join answered");
    }
    ctx.respond(&response)
}
