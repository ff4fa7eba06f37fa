//! One connection to a Kafka-compatible broker: framing, correlation ids, and API
//! version negotiation with ApiVersions.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted (a broker's fetch.max.bytes default plus slack).
pub const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connection to {address} failed: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error(
        "the broker does not support {api:?} in any version this client speaks ({min}..={max})"
    )]
    UnsupportedApi { api: ApiKey, min: i16, max: i16 },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker answered with a Kafka error code: `name` is Kafka's name for it (e.g.
    /// `UNKNOWN_TOPIC_OR_PARTITION`), `message` the broker's own text when it sent one.
    #[error("{operation}: {name} (error code {code}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        operation: String,
        code: i16,
        name: String,
        message: Option<String>,
    },
    /// The producer was closed: it accepts no more records.
    #[error("the producer is closed")]
    ProducerClosed,
    /// The API was called in a way it does not support (what to do instead is in the text).
    #[error("{0}")]
    InvalidUse(String),
    /// A partition has no committed offset and `auto_offset_reset` is `none`.
    #[error("no committed offset for {0} and auto_offset_reset is none: commit an offset, seek, or use earliest/latest")]
    NoOffset(String),
    /// An offset commit was refused because the group rebalanced; the member rejoins in
    /// its next poll and the partitions' owners re-read from the last successful commit.
    #[error("commit failed because the group rebalanced ({0}); poll again, records since the last commit may be delivered again")]
    CommitFailed(String),
}

/// The client id of connections opened without one (the command line's).
pub const DEFAULT_CLIENT_ID: &str = "sluice-cli";

/// What a negotiated [`Connection`] hands to a pipelined one.
pub struct ConnectionParts {
    pub address: String,
    pub stream: TcpStream,
    pub client_id: StrBytes,
    /// The broker's (min, max) version per API key.
    pub broker_versions: HashMap<i16, (i16, i16)>,
}

/// A connection with negotiated API versions.
pub struct Connection {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
    timeout: Duration,
    /// The broker's (min, max) version per API key.
    broker_versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects and negotiates versions with ApiVersions, as [`DEFAULT_CLIENT_ID`].
    pub async fn connect(address: &str, timeout: Duration) -> Result<Connection, ClientError> {
        Connection::connect_as(address, timeout, DEFAULT_CLIENT_ID).await
    }

    /// Connects as `client_id`: the name the broker sees in every request header (its
    /// logs, quotas and `group describe` show it).
    pub async fn connect_as(
        address: &str,
        timeout: Duration,
        client_id: &str,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout(timeout, format!("a connection to {address}")))?
            .map_err(|source| ClientError::Connect {
                address: address.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            address: address.to_string(),
            stream,
            correlation_id: 0,
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            broker_versions: HashMap::new(),
        };
        connection.negotiate().await?;
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket and the negotiated version ranges, for a
    /// [`crate::pipeline::PipelinedConnection`] that keeps several requests in flight.
    pub fn into_parts(self) -> ConnectionParts {
        ConnectionParts {
            address: self.address,
            stream: self.stream,
            client_id: self.client_id,
            broker_versions: self.broker_versions,
        }
    }

    async fn negotiate(&mut self) -> Result<(), ClientError> {
        // v0 is understood by every broker; it lists every API's range.
        let response = self
            .send_at_version(0, &ApiVersionsRequest::default())
            .await?;
        if response.error_code != 0 {
            return Err(ClientError::Protocol(format!(
                "ApiVersions failed with error code {}",
                response.error_code
            )));
        }
        self.broker_versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// The highest version both this client (`ours`) and the broker speak.
    pub fn version_for(
        &self,
        api: ApiKey,
        ours: std::ops::RangeInclusive<i16>,
    ) -> Result<i16, ClientError> {
        negotiate_version(&self.broker_versions, api, ours)
    }

    /// Sends a request at the best common version within `ours`.
    pub async fn send<R: Request>(
        &mut self,
        ours: std::ops::RangeInclusive<i16>,
        request: &R,
    ) -> Result<(i16, R::Response), ClientError> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown API key {}", R::KEY)))?;
        let version = self.version_for(api, ours)?;
        let response = self.send_at_version(version, request).await?;
        Ok((version, response))
    }

    /// Sends a request at exactly `version` and decodes the response.
    pub async fn send_at_version<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown API key {}", R::KEY)))?;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let encode_error =
            |e: anyhow::Error| ClientError::Protocol(format!("encoding {api:?} v{version}: {e}"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .map_err(encode_error)?;
        request.encode(&mut body, version).map_err(encode_error)?;
        let size = i32::try_from(body.len())
            .map_err(|_| ClientError::Protocol("request too large".to_string()))?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(size);
        frame.extend_from_slice(&body);
        let mut response = tokio::time::timeout(self.timeout, self.round_trip(&frame))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout, format!("{api:?} response")))??;
        let response_header =
            ResponseHeader::decode(&mut response, api.response_header_version(version))
                .map_err(|e| ClientError::Protocol(format!("{api:?} response header: {e}")))?;
        if response_header.correlation_id != correlation_id {
            return Err(ClientError::Protocol(format!(
                "correlation id {} in response, expected {correlation_id}",
                response_header.correlation_id
            )));
        }
        R::Response::decode(&mut response, version)
            .map_err(|e| ClientError::Protocol(format!("{api:?} v{version} response: {e}")))
    }

    async fn round_trip(&mut self, frame: &[u8]) -> Result<Bytes, ClientError> {
        let io = |source| ClientError::Io {
            address: self.address.clone(),
            source,
        };
        self.stream.write_all(frame).await.map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.map_err(io)?;
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| ClientError::Protocol(format!("response size {size}")))?;
        let mut response = vec![0u8; size];
        self.stream.read_exact(&mut response).await.map_err(io)?;
        Ok(Bytes::from(response))
    }
}

/// The highest version of `api` both sides speak: ours, and the broker's from ApiVersions
/// (`broker_versions`: api key -> (min, max)).
pub(crate) fn negotiate_version(
    broker_versions: &HashMap<i16, (i16, i16)>,
    api: ApiKey,
    ours: std::ops::RangeInclusive<i16>,
) -> Result<i16, ClientError> {
    let unsupported = || ClientError::UnsupportedApi {
        api,
        min: *ours.start(),
        max: *ours.end(),
    };
    let (broker_min, broker_max) = *broker_versions.get(&(api as i16)).ok_or_else(unsupported)?;
    let version = broker_max.min(*ours.end());
    if version < broker_min.max(*ours.start()) {
        return Err(unsupported());
    }
    Ok(version)
}
