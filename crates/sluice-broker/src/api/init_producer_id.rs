//! InitProducerId (key 22): gives an idempotent producer its id (KIP-98).
//!
//! Without a transactional id Kafka hands out a fresh producer id with epoch 0 on every
//! call, ignoring any id/epoch the client passes (KIP-360 bumps only matter for
//! transactional ids); we do the same. Ids come from blocks the controller quorum hands
//! this broker (`AllocateProducerIds`, committed in the metadata log), so they are never
//! reused across restarts or brokers.
//!
//! Transactions are not supported: a non-null transactional id is answered with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), the error Kafka gives a client that may not
//! use that transactional id. It is fatal in every client (librdkafka, Java, kafka-python),
//! so the application gets a clear error at `init_transactions()` instead of retrying until
//! a timeout.

use bytes::Bytes;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};

pub async fn handle(
    ctx: &RequestContext,
    request: InitProducerIdRequest,
) -> Result<Bytes, ApiError> {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = if let Some(transactional_id) = &request.transactional_id {
        tracing::info!(transactional_id = %transactional_id.as_str(), "InitProducerId for a transactional id refused: transactions are not supported");
        response.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else {
        match ctx.broker.replicas.allocate_producer_id().await {
            Ok(producer_id) => {
                tracing::debug!(producer_id, "allocated a producer id");
                response
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(0)
            }
            Err(error) => {
                tracing::error!(%error, "cannot reserve producer ids");
                response.with_error_code(ResponseError::CoordinatorNotAvailable.code())
            }
        }
    };
    ctx.respond(&response)
}
