//! A connection that keeps several requests in flight. Kafka answers the requests of one
//! connection in the order they were sent, so responses are matched to a FIFO of pending
//! requests (and their correlation ids checked) by one reader task. Producers and fetchers
//! share it from several tasks: a request is written and queued under one lock, so the
//! order on the wire is the order of the queue.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};

use crate::connection::{
    negotiate_version, ClientError, Connection, ConnectionParts, DEFAULT_CLIENT_ID,
    RESPONSE_BYTES_MAX,
};

/// A request written to the socket whose response has not arrived yet.
struct Waiting {
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
    /// Released when the response arrives: bounds the requests in flight.
    _permit: OwnedSemaphorePermit,
}

/// A connection with up to `max_in_flight` requests outstanding.
pub struct PipelinedConnection {
    address: String,
    writer: Mutex<OwnedWriteHalf>,
    waiting: mpsc::UnboundedSender<Waiting>,
    in_flight: Arc<Semaphore>,
    correlation_id: AtomicI32,
    client_id: StrBytes,
    timeout: Duration,
    broker_versions: HashMap<i16, (i16, i16)>,
    reader: tokio::task::JoinHandle<()>,
}

/// The response of one pipelined request, decoded when awaited.
pub struct PendingResponse<T> {
    receiver: oneshot::Receiver<Result<Bytes, ClientError>>,
    api: ApiKey,
    version: i16,
    timeout: Duration,
    response: PhantomData<T>,
}

impl<T: Decodable> PendingResponse<T> {
    /// Waits for the response (at most the connection's timeout) and decodes it.
    pub async fn wait(self) -> Result<T, ClientError> {
        let (api, version) = (self.api, self.version);
        let mut body = tokio::time::timeout(self.timeout, self.receiver)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout, format!("{api:?} response")))?
            .map_err(|_| ClientError::Protocol("the connection closed".to_string()))??;
        T::decode(&mut body, version)
            .map_err(|e| ClientError::Protocol(format!("{api:?} v{version} response: {e}")))
    }
}

impl PipelinedConnection {
    /// Connects, negotiates versions and starts the response reader.
    pub async fn connect(
        address: &str,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<PipelinedConnection, ClientError> {
        Self::connect_as(address, timeout, max_in_flight, DEFAULT_CLIENT_ID).await
    }

    /// [`PipelinedConnection::connect`] as `client_id`.
    pub async fn connect_as(
        address: &str,
        timeout: Duration,
        max_in_flight: usize,
        client_id: &str,
    ) -> Result<PipelinedConnection, ClientError> {
        let connection = Connection::connect_as(address, timeout, client_id).await?;
        Ok(PipelinedConnection::from_connection(
            connection,
            timeout,
            max_in_flight,
        ))
    }

    /// Takes over a negotiated connection.
    pub fn from_connection(
        connection: Connection,
        timeout: Duration,
        max_in_flight: usize,
    ) -> PipelinedConnection {
        let ConnectionParts {
            address,
            stream,
            client_id,
            broker_versions,
        } = connection.into_parts();
        let (read_half, write_half) = stream.into_split();
        let (waiting, queue) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_responses(address.clone(), read_half, queue));
        PipelinedConnection {
            address,
            writer: Mutex::new(write_half),
            waiting,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            // The negotiating connection used small ids; start far from them.
            correlation_id: AtomicI32::new(1 << 20),
            client_id,
            timeout,
            broker_versions,
            reader,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The highest version both this client (`ours`) and the broker speak.
    pub fn version_for(
        &self,
        api: ApiKey,
        ours: std::ops::RangeInclusive<i16>,
    ) -> Result<i16, ClientError> {
        negotiate_version(&self.broker_versions, api, ours)
    }

    fn frame<R: Request>(
        &self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        request: &R,
    ) -> Result<Bytes, ClientError> {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let encode_error =
            |e: anyhow::Error| ClientError::Protocol(format!("encoding {api:?} v{version}: {e}"));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, api.request_header_version(version))
            .map_err(encode_error)?;
        request.encode(&mut frame, version).map_err(encode_error)?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| ClientError::Protocol("request too large".to_string()))?;
        frame[0..4].copy_from_slice(&size.to_be_bytes());
        Ok(frame.freeze())
    }

    fn io_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            address: self.address.clone(),
            source,
        }
    }

    /// Writes a request at `version` and returns its pending response. Waits while
    /// `max_in_flight` requests are outstanding. Not cancel-safe: dropping the future
    /// while it writes leaves a partial frame on the connection.
    pub async fn submit<R: Request>(
        &self,
        version: i16,
        request: &R,
    ) -> Result<PendingResponse<R::Response>, ClientError> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown API key {}", R::KEY)))?;
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Protocol("the connection closed".to_string()))?;
        let correlation_id = self.correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.frame(api, version, correlation_id, request)?;
        let (reply, receiver) = oneshot::channel();
        let mut writer = self.writer.lock().await;
        // Queued before the write so the reader always finds it.
        self.waiting
            .send(Waiting {
                correlation_id,
                api,
                version,
                reply,
                _permit: permit,
            })
            .map_err(|_| ClientError::Protocol("the connection closed".to_string()))?;
        writer
            .write_all(&frame)
            .await
            .map_err(|e| self.io_error(e))?;
        drop(writer);
        Ok(PendingResponse {
            receiver,
            api,
            version,
            timeout: self.timeout,
            response: PhantomData,
        })
    }

    /// Writes a request the broker does not answer (Produce with acks=0).
    pub async fn submit_without_response<R: Request>(
        &self,
        version: i16,
        request: &R,
    ) -> Result<(), ClientError> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown API key {}", R::KEY)))?;
        let correlation_id = self.correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.frame(api, version, correlation_id, request)?;
        let mut writer = self.writer.lock().await;
        writer.write_all(&frame).await.map_err(|e| self.io_error(e))
    }
}

impl Drop for PipelinedConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads response frames in order and hands each to the oldest waiting request. On an
/// error every waiting request gets it (their senders are dropped: "connection closed").
async fn read_responses(
    address: String,
    mut reader: OwnedReadHalf,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(waiting) = queue.recv().await {
        let result = read_one(&address, &mut reader, &waiting).await;
        let failed = result.is_err();
        let _ = waiting.reply.send(result);
        if failed {
            return;
        }
    }
}

async fn read_one(
    address: &str,
    reader: &mut OwnedReadHalf,
    waiting: &Waiting,
) -> Result<Bytes, ClientError> {
    let io = |source| ClientError::Io {
        address: address.to_string(),
        source,
    };
    let size = reader.read_i32().await.map_err(io)?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= RESPONSE_BYTES_MAX)
        .ok_or_else(|| ClientError::Protocol(format!("response size {size}")))?;
    // Filled straight from the socket, without zeroing first.
    let mut response = BytesMut::with_capacity(size);
    let mut frame = (&mut *reader).take(size as u64);
    while response.len() < size {
        if frame.read_buf(&mut response).await.map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    let mut response = response.freeze();
    let api = waiting.api;
    let header =
        ResponseHeader::decode(&mut response, api.response_header_version(waiting.version))
            .map_err(|e| ClientError::Protocol(format!("{api:?} response header: {e}")))?;
    if header.correlation_id != waiting.correlation_id {
        return Err(ClientError::Protocol(format!(
            "correlation id {} in response, expected {}",
            header.correlation_id, waiting.correlation_id
        )));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use tokio::net::TcpListener;

    /// A broker stand-in that answers ApiVersions requests in order, echoing correlation ids.
    async fn answer_api_versions(listener: TcpListener, count: usize) {
        let (mut stream, _) = listener.accept().await.unwrap();
        for _ in 0..count {
            let size = stream.read_i32().await.unwrap();
            let mut body = BytesMut::zeroed(size as usize);
            stream.read_exact(&mut body).await.unwrap();
            let mut body = body.freeze();
            let header = RequestHeader::decode(&mut body, 1).unwrap();
            let response = ApiVersionsResponse::default().with_api_keys(vec![
                kafka_protocol::messages::api_versions_response::ApiVersion::default()
                    .with_api_key(ApiKey::ApiVersions as i16)
                    .with_min_version(0)
                    .with_max_version(3),
            ]);
            let mut frame = BytesMut::new();
            frame.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut frame, 0)
                .unwrap();
            response.encode(&mut frame, 0).unwrap();
            let size = (frame.len() - 4) as i32;
            frame[0..4].copy_from_slice(&size.to_be_bytes());
            stream.write_all(&frame).await.unwrap();
        }
    }

    #[tokio::test]
    async fn pipelined_requests_get_their_own_responses_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = 20;
        let server = tokio::spawn(answer_api_versions(listener, requests + 1));
        let connection = PipelinedConnection::connect(&address, Duration::from_secs(5), 4)
            .await
            .unwrap();
        assert_eq!(
            connection.version_for(ApiKey::ApiVersions, 0..=2).unwrap(),
            2
        );
        let mut pending = Vec::new();
        for _ in 0..4 {
            pending.push(
                connection
                    .submit(0, &ApiVersionsRequest::default())
                    .await
                    .unwrap(),
            );
        }
        for response in pending {
            let response: ApiVersionsResponse = response.wait().await.unwrap();
            assert_eq!(response.api_keys.len(), 1);
        }
        for _ in 4..requests {
            let response = connection
                .submit(0, &ApiVersionsRequest::default())
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
            assert_eq!(response.api_keys[0].max_version, 3);
        }
        server.await.unwrap();
    }
}
