//! DeleteGroups (key 42): NON_EMPTY_GROUP while it has members, GROUP_ID_NOT_FOUND if
//! unknown; else its offsets and metadata get tombstones.

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::{ApiError, RequestContext};

/// Bound on the groups of one request.
const GROUPS_MAX: usize = 10_000;

pub fn handle(ctx: &RequestContext, request: DeleteGroupsRequest) -> Result<Bytes, ApiError> {
    let results = request
        .groups_names
        .iter()
        .take(GROUPS_MAX)
        .map(|id| {
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(ctx.broker.groups.delete_group(id.as_str()))
        })
        .collect();
    ctx.respond(&DeleteGroupsResponse::default().with_results(results))
}
