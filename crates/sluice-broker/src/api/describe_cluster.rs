//! DescribeCluster (key 60): the brokers of the cluster (unfenced, from the controller's
//! image) and its controller.

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};

/// KIP-919: endpoint type 1 asks for brokers, 2 for controllers.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn handle(ctx: &RequestContext, request: DescribeClusterRequest) -> Result<Bytes, ApiError> {
    let broker = &ctx.broker;
    let brokers = super::metadata::live_brokers(broker)
        .into_iter()
        .map(|(id, host, port, rack)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
                .with_rack(rack.map(StrBytes::from_string))
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id().to_string()))
        .with_controller_id(BrokerId(broker.node_id()))
        .with_brokers(brokers);
    if ctx.version() >= 1 {
        response = response.with_endpoint_type(request.endpoint_type);
        if request.endpoint_type != ENDPOINT_TYPE_BROKERS {
            response = response
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "only the broker endpoint type is served",
                )))
                .with_brokers(Vec::new());
        }
    }
    ctx.respond(&response)
}
