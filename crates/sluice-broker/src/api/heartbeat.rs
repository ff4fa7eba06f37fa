//! Heartbeat (key 12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it
//! to rejoin.

use bytes::Bytes;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{ApiError, RequestContext};

pub fn handle(ctx: &RequestContext, request: HeartbeatRequest) -> Result<Bytes, ApiError> {
    let code = ctx.broker.groups.heartbeat(
        request.group_id.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_deref(),
    );
    ctx.respond(&HeartbeatResponse::default().with_error_code(code))
}
