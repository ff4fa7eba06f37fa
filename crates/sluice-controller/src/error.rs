//! Errors of the controller: Kafka error codes for requests the controller refuses, typed
//! errors for everything else.

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

/// A request refused by the controller logic, as the Kafka error code the broker returns to
/// its client (TOPIC_ALREADY_EXISTS, INVALID_REPLICATION_FACTOR, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("kafka error {code}: {message}")]
pub struct ApiError {
    pub code: i16,
    pub message: String,
}

impl ApiError {
    pub fn new(error: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code: error.code(),
            message: message.into(),
        }
    }

    /// The Kafka error this code stands for.
    pub fn kind(&self) -> ResponseError {
        ResponseError::try_from_code(self.code).unwrap_or(ResponseError::UnknownServerError)
    }
}

/// Why [`crate::Controller::propose`] (or start) failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The request was refused with a Kafka error code.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No controller leader could commit the request before the deadline (no quorum, or an
    /// election in progress). The request may still be committed later.
    #[error("no controller leader committed the request within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// This controller is shutting down.
    #[error("controller is shut down")]
    Shutdown,
    #[error("invalid controller configuration: {0}")]
    Config(String),
    #[error("metadata storage error: {0}")]
    Storage(#[from] std::io::Error),
    #[error("raft error: {0}")]
    Raft(String),
}

impl ControllerError {
    /// The Kafka error code a broker should answer its client with.
    pub fn code(&self) -> i16 {
        match self {
            ControllerError::Api(e) => e.code,
            ControllerError::Timeout { .. } => ResponseError::RequestTimedOut.code(),
            ControllerError::Shutdown => ResponseError::NotController.code(),
            _ => ResponseError::UnknownServerError.code(),
        }
    }
}
