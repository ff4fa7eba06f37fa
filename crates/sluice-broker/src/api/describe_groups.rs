//! DescribeGroups (key 15): state, protocol and members (metadata and assignment bytes
//! once the group is Stable). An unknown group is described as Dead with no error, as
//! Kafka does.

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};

/// Bound on the groups of one request.
const GROUPS_MAX: usize = 10_000;

pub fn handle(ctx: &RequestContext, request: DescribeGroupsRequest) -> Result<Bytes, ApiError> {
    let version = ctx.version();
    let groups = request
        .groups
        .iter()
        .take(GROUPS_MAX)
        .map(|id| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            let described = if version >= 3 {
                // No ACLs: every operation is allowed (Kafka's "unknown" when not asked).
                described.with_authorized_operations(if request.include_authorized_operations {
                    0
                } else {
                    i32::MIN
                })
            } else {
                described
            };
            if id.is_empty() {
                return described.with_error_code(ResponseError::InvalidGroupId.code());
            }
            if let Err(code) = ctx.broker.groups.check_coordinator(id.as_str()) {
                return described.with_error_code(code);
            }
            match ctx.broker.groups.describe(id.as_str()) {
                None => described.with_group_state(StrBytes::from_static_str("Dead")),
                Some(d) => described
                    .with_group_state(StrBytes::from_static_str(d.state.name()))
                    .with_protocol_type(StrBytes::from_string(d.protocol_type))
                    .with_protocol_data(StrBytes::from_string(d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|(member, instance, client, host, metadata, assignment)| {
                                let m = DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(member))
                                    .with_client_id(StrBytes::from_string(client))
                                    .with_client_host(StrBytes::from_string(host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(assignment);
                                if version >= 4 {
                                    m.with_group_instance_id(instance.map(StrBytes::from_string))
                                } else {
                                    m
                                }
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    ctx.respond(&DescribeGroupsResponse::default().with_groups(groups))
}
