//! LeaveGroup (key 13): v0-v2 one member id, v3+ a batch of members (static members by
//! group instance id). A leave triggers a rebalance of the rest.

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{ApiError, RequestContext};

/// Bound on the members of one LeaveGroup.
const LEAVE_MEMBERS_MAX: usize = 10_000;

pub fn handle(ctx: &RequestContext, request: LeaveGroupRequest) -> Result<Bytes, ApiError> {
    let group = request.group_id.as_str();
    let response = if ctx.version() >= 3 {
        let members: Vec<(String, Option<String>)> = request
            .members
            .iter()
            .take(LEAVE_MEMBERS_MAX)
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect();
        match ctx.broker.groups.leave(group, &members) {
            Ok(codes) => LeaveGroupResponse::default().with_members(
                request
                    .members
                    .iter()
                    .zip(codes)
                    .map(|(m, code)| {
                        MemberResponse::default()
                            .with_member_id(m.member_id.clone())
                            .with_group_instance_id(m.group_instance_id.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
            Err(code) => LeaveGroupResponse::default().with_error_code(code),
        }
    } else {
        let members = [(request.member_id.to_string(), None)];
        let code = match ctx.broker.groups.leave(group, &members) {
            Ok(codes) => codes.first().copied().unwrap_or(0),
            Err(code) => code,
        };
        LeaveGroupResponse::default().with_error_code(code)
    };
    ctx.respond(&response)
}
