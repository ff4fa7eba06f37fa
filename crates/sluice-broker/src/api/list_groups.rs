//! ListGroups (key 16): every group with its protocol type; v4+ filters by state.

use bytes::Bytes;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{ApiError, RequestContext};

pub fn handle(ctx: &RequestContext, request: ListGroupsRequest) -> Result<Bytes, ApiError> {
    let filter: Vec<String> = if ctx.version() >= 4 {
        request
            .states_filter
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    let groups = ctx
        .broker
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| {
            filter.is_empty() || filter.contains(&state.name().to_ascii_lowercase())
        })
        .map(|(id, protocol_type, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(protocol_type));
            if ctx.version() >= 4 {
                g.with_group_state(StrBytes::from_static_str(state.name()))
            } else {
                g
            }
        })
        .collect();
    ctx.respond(&ListGroupsResponse::default().with_groups(groups))
}
