//! FindCoordinator (key 10): on a single node every group's coordinator is this node.
//! v4+ batches keys (`coordinator_keys`); transaction coordinators do not exist yet
//! (key type 1 gets COORDINATOR_NOT_AVAILABLE).

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};

const KEY_TYPE_GROUP: i8 = 0;

pub fn handle(ctx: &RequestContext, request: FindCoordinatorRequest) -> Result<Bytes, ApiError> {
    let (host, port) = ctx.broker.config().advertised();
    let node = BrokerId(ctx.broker.node_id());
    let answer = |key: &StrBytes| -> (i16, Option<&'static str>) {
        if request.key_type != KEY_TYPE_GROUP {
            return (
                ResponseError::CoordinatorNotAvailable.code(),
                Some("transaction coordinators are not supported yet"),
            );
        }
        if key.is_empty() {
            return (ResponseError::InvalidRequest.code(), Some("empty group id"));
        }
        (0, None)
    };
    let response = if ctx.version() >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (code, message) = answer(key);
                let c = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_static_str));
                if code == 0 {
                    c.with_node_id(node)
                        .with_host(StrBytes::from_string(host.clone()))
                        .with_port(i32::from(port))
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (code, message) = answer(&request.key);
        let mut r = FindCoordinatorResponse::default().with_error_code(code);
        if ctx.version() >= 1 {
            r = r.with_error_message(message.map(StrBytes::from_static_str));
        }
        if code == 0 {
            r.with_node_id(node)
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        } else {
            r.with_node_id(BrokerId(-1)).with_port(-1)
        }
    };
    ctx.respond(&response)
}
