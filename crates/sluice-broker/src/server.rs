//! The Kafka listener: one task pair per connection.
//!
//! The reader turns bytes into request frames and dispatches them *in arrival order*
//! (so two produce requests on one connection are appended in the order they were sent);
//! what a request then waits for (an fsync for acks=all, data for a long-polling fetch)
//! is a future handed to the writer, which awaits those futures in order and writes the
//! responses in order. That gives pipelining without reordering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiError};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::response::{ResponsePart, ResponseParts};
use sluice_log::ReadSlice;

/// Test-only faults on Produce responses, to prove that idempotent producers' retries are
/// deduplicated: the request is executed but the client never learns it was.
/// Off by default; see `test.fault.produce.response.*` in `BROKER_SETTINGS`.
#[derive(Debug)]
pub struct FaultSwitch {
    /// Drop the response of every Nth Produce request (0: never).
    produce_response_drop_every: u64,
    /// Delay every Produce response by this long (zero: no delay).
    produce_response_delay: Duration,
    /// Produce requests seen broker-wide, for `drop_every`.
    produce_requests: AtomicU64,
}

impl FaultSwitch {
    pub fn new(config: &BrokerConfig) -> FaultSwitch {
        let switch = FaultSwitch {
            produce_response_drop_every: config.test_fault_produce_response_drop_every(),
            produce_response_delay: Duration::from_millis(
                config.test_fault_produce_response_delay_ms(),
            ),
            produce_requests: AtomicU64::new(0),
        };
        if switch.produce_response_drop_every > 0 || !switch.produce_response_delay.is_zero() {
            tracing::warn!(
                drop_every = switch.produce_response_drop_every,
                delay_ms = config.test_fault_produce_response_delay_ms(),
                "TEST FAULT SWITCH ON: produce responses will be dropped or delayed"
            );
        }
        switch
    }

    /// Counts one Produce request; true when its response must be dropped.
    fn drop_this_produce_response(&self) -> bool {
        if self.produce_response_drop_every == 0 {
            return false;
        }
        let count = self.produce_requests.fetch_add(1, Ordering::Relaxed) + 1;
        count.is_multiple_of(self.produce_response_drop_every)
    }

    /// Wraps a Produce response so that it is written only after the configured delay.
    fn delay_produce_response(&self, dispatched: Dispatched) -> Dispatched {
        let delay = self.produce_response_delay;
        if delay.is_zero() {
            return dispatched;
        }
        Dispatched::LaterParts(Box::pin(async move {
            let frame = match dispatched {
                Dispatched::Now(frame) => Ok(frame.map(ResponseParts::from)),
                Dispatched::Later(pending) => pending.await.map(|f| f.map(ResponseParts::from)),
                Dispatched::LaterParts(pending) => pending.await,
            };
            tokio::time::sleep(delay).await;
            frame
        }))
    }
}

/// A response frame to write, or nothing (acks=0 produce).
pub type ResponseFrame = Option<bytes::Bytes>;

/// What dispatching a request produced: an answer now, or one to wait for.
pub enum Dispatched {
    Now(ResponseFrame),
    Later(BoxFuture<'static, Result<ResponseFrame, ApiError>>),
    /// A frame with file ranges (Fetch): see [`crate::response`].
    LaterParts(BoxFuture<'static, Result<Option<ResponseParts>, ApiError>>),
}

/// Resolves once the flag turns true (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, then waits for the connections to finish.
pub async fn run_listener(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = Arc::clone(&broker);
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        serve_connection(stream, peer, broker, shutdown).await;
                    });
                }
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = crate::server::stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let _open = broker.metrics.connection_opened();
    tracing::debug!(%peer, "connection opened");
    let (read_half, write_half) = stream.into_split();
    let depth = broker.config().queued_max_requests();
    let (tx, rx) = mpsc::channel(depth);
    let sendfile = broker.config().socket_sendfile_enable();
    let writer = tokio::spawn(write_responses(write_half, rx, peer, sendfile));
    read_requests(read_half, peer, &broker, tx, shutdown).await;
    // The reader dropped its sender: the writer drains what is pending and ends.
    let _ = writer.await;
    tracing::debug!(%peer, "connection closed");
}

/// Why a connection is closed by the broker.
#[derive(Debug)]
enum CloseReason {
    PeerClosed,
    Shutdown,
    Fatal(String),
}

async fn read_requests(
    mut reader: OwnedReadHalf,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    tx: mpsc::Sender<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let frame_bytes_max = broker.config().socket_request_max_bytes();
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, frame_bytes_max) => frame,
            _ = crate::server::stopped(&mut shutdown) => Err(CloseReason::Shutdown),
        };
        let is_produce = matches!(&frame, Ok(frame) if frame.len() >= 2
            && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16);
        let outcome = match frame {
            Ok(frame) => dispatch_frame(broker, frame, peer).await,
            Err(reason) => Err(reason),
        };
        let outcome = match outcome {
            Ok(dispatched) if is_produce => {
                if broker.faults.drop_this_produce_response() {
                    // The batches are written already; wait for the acks=all fsync too so
                    // the retry finds the original durable, then hang up without answering.
                    if let Dispatched::Later(pending) = dispatched {
                        let _ = pending.await;
                    }
                    tracing::warn!(%peer, "test fault: produce executed, response dropped, closing connection");
                    return;
                }
                Ok(broker.faults.delay_produce_response(dispatched))
            }
            other => other,
        };
        match outcome {
            Ok(dispatched) => {
                if tx.send(dispatched).await.is_err() {
                    return; // writer gone: socket broken
                }
            }
            Err(CloseReason::PeerClosed) | Err(CloseReason::Shutdown) => return,
            Err(CloseReason::Fatal(reason)) => {
                tracing::warn!(%peer, %reason, "closing connection");
                return;
            }
        }
    }
}

async fn read_frame(
    reader: &mut OwnedReadHalf,
    frame_bytes_max: usize,
) -> Result<BytesMut, CloseReason> {
    let mut size_bytes = [0u8; 4];
    match reader.read_exact(&mut size_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(CloseReason::PeerClosed)
        }
        Err(e) => return Err(CloseReason::Fatal(format!("read failed: {e}"))),
    }
    let size = i32::from_be_bytes(size_bytes);
    // api key, api version and correlation id are the least a request header holds.
    const HEADER_BYTES_MIN: i32 = 8;
    if size < HEADER_BYTES_MIN {
        return Err(CloseReason::Fatal(format!("invalid request size {size}")));
    }
    let size = size as usize; // positive i32: fits
    if size > frame_bytes_max {
        return Err(CloseReason::Fatal(format!(
            "request size {size} exceeds socket.request.max.bytes {frame_bytes_max}"
        )));
    }
    let mut frame = BytesMut::zeroed(size);
    match reader.read_exact(&mut frame).await {
        Ok(_) => Ok(frame),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(CloseReason::Fatal(
            format!("connection closed inside a {size}-byte request"),
        )),
        Err(e) => Err(CloseReason::Fatal(format!("read failed: {e}"))),
    }
}

async fn dispatch_frame(
    broker: &Arc<Broker>,
    frame: BytesMut,
    peer: SocketAddr,
) -> Result<Dispatched, CloseReason> {
    let started = std::time::Instant::now();
    let mut frame = frame.freeze();
    let mut peek = &frame[..];
    let api_key_raw = peek.get_i16();
    let api_version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Err(CloseReason::Fatal(format!("unknown API key {api_key_raw}")));
    };
    if !api::is_supported(api_key, api_version) {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer an unknown ApiVersions version with v0 and our ranges.
            return Ok(Dispatched::Now(Some(
                api::api_versions::unsupported_version_response(correlation_id),
            )));
        }
        return Err(CloseReason::Fatal(format!(
            "unsupported version {api_version} of {api_key:?}"
        )));
    }
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| CloseReason::Fatal(format!("bad {api_key:?} request header: {e}")))?;
    match api::dispatch(broker, api_key, header, frame, Some(peer)).await {
        Ok(dispatched) => Ok(broker.metrics.track_request(api_key, started, dispatched)),
        Err(ApiError::Decode(reason)) => Err(CloseReason::Fatal(format!(
            "bad {api_key:?} v{api_version} request: {reason}"
        ))),
        Err(ApiError::Close(reason)) => Err(CloseReason::Fatal(reason)),
        Err(ApiError::Encode(reason)) => {
            tracing::error!(?api_key, api_version, %reason, "could not encode a response");
            Err(CloseReason::Fatal("internal error".to_string()))
        }
    }
}

/// Writes responses in request order. `sendfile`: file ranges go from the page cache to
/// the socket with `sendfile(2)`; otherwise they are read with `pread` in chunks of
/// [`PREAD_CHUNK_BYTES`] and written like any bytes.
async fn write_responses(
    writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Dispatched>,
    peer: SocketAddr,
    sendfile: bool,
) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(dispatched) = rx.recv().await {
        let frame = match dispatched {
            Dispatched::Now(frame) => Ok(frame.map(ResponseParts::from)),
            Dispatched::Later(pending) => pending.await.map(|f| f.map(ResponseParts::from)),
            Dispatched::LaterParts(pending) => pending.await,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(%peer, ?error, "request failed; closing connection");
                break;
            }
        };
        if let Some(frame) = frame {
            if let Err(error) = write_frame(&mut writer, frame, sendfile).await {
                tracing::warn!(%peer, %error, "response write failed; closing connection");
                return;
            }
        }
        if rx.is_empty() {
            if let Err(error) = writer.flush().await {
                tracing::debug!(%peer, %error, "write failed");
                return;
            }
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Bytes buffered before a socket write (responses of pipelined requests coalesce).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of a file range read per `pread` when `sendfile` is off: the memory a response
/// costs is bounded by this, not by the fetch size.
const PREAD_CHUNK_BYTES: usize = 64 * 1024;
/// Largest count passed to one `sendfile` call (Linux moves at most 0x7ffff000 anyway).
const SENDFILE_CALL_BYTES_MAX: usize = 1 << 30;

/// Writes one frame's parts in order. Buffered bytes are flushed before a file range so
/// that `sendfile`, which bypasses the buffer, keeps the order.
async fn write_frame(
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: ResponseParts,
    sendfile: bool,
) -> std::io::Result<()> {
    let mut chunk = Vec::new();
    for part in frame.into_parts() {
        match part {
            ResponsePart::Bytes(bytes) => writer.write_all(&bytes).await?,
            ResponsePart::File(slice) if sendfile => {
                writer.flush().await?;
                send_file_range(writer.get_ref().as_ref(), &slice).await?;
            }
            ResponsePart::File(slice) => {
                let mut position = slice.position;
                let mut remaining = slice.len;
                while remaining > 0 {
                    let len = remaining.min(PREAD_CHUNK_BYTES);
                    chunk.resize(len, 0);
                    std::os::unix::fs::FileExt::read_exact_at(&*slice.file, &mut chunk, position)?;
                    writer.write_all(&chunk).await?;
                    position += len as u64;
                    remaining -= len;
                }
            }
        }
    }
    Ok(())
}

/// Sends a file range to the socket with non-blocking `sendfile(2)`, waiting for write
/// readiness on EAGAIN and continuing after short writes. The range's file may have been
/// unlinked by retention since the fetch located it: the open descriptor still reads it.
/// A file that ends inside the range (it cannot: segments only grow while open, and the
/// range is below the high watermark) is an error, since the frame could not be completed.
async fn send_file_range(stream: &TcpStream, slice: &ReadSlice) -> std::io::Result<()> {
    let mut offset = slice.position;
    let mut remaining = slice.len;
    while remaining > 0 {
        stream.writable().await?;
        let count = remaining.min(SENDFILE_CALL_BYTES_MAX);
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, &*slice.file, Some(&mut offset), count)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "segment file ended {remaining} bytes short of the fetched range at {}",
                        slice.position
                    ),
                ))
            }
            Ok(sent) => remaining = remaining.saturating_sub(sent),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
