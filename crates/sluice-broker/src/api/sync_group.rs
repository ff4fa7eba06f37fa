//! SyncGroup (key 14). The leader's assignments are stored and every member gets its
//! own (empty bytes if the leader gave it none); followers wait for the leader.

use bytes::Bytes;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::group::{SyncOutcome, SyncResult};
use crate::server::Dispatched;

pub fn handle(ctx: RequestContext, request: SyncGroupRequest) -> Result<Dispatched, ApiError> {
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let outcome = ctx.broker.groups.sync(
        request.group_id.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_deref(),
        request.protocol_type.as_deref(),
        request.protocol_name.as_deref(),
        assignments,
    );
    match outcome {
        SyncOutcome::Now(result) => Ok(Dispatched::Now(Some(respond(&ctx, result)?))),
        SyncOutcome::Later(rx) => {
            let mut shutdown = ctx.broker.shutdown_signal();
            Ok(Dispatched::Later(Box::pin(async move {
                let result = tokio::select! {
                    result = rx => result.unwrap_or_else(|_| {
                        SyncResult::error(ResponseError::RebalanceInProgress.code())
                    }),
                    _ = crate::server::stopped(&mut shutdown) => {
                        SyncResult::error(ResponseError::CoordinatorNotAvailable.code())
                    }
                };
                respond(&ctx, result).map(Some)
            })))
        }
    }
}

fn respond(ctx: &RequestContext, result: SyncResult) -> Result<Bytes, ApiError> {
    let mut response = SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_assignment(result.assignment);
    if ctx.version() >= 5 {
        response = response
            .with_protocol_type(result.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(result.protocol.map(StrBytes::from_string));
    }
    ctx.respond(&response)
}
