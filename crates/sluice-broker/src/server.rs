//! The Kafka listener: one task pair per connection.
//!
//! The reader turns bytes into request frames and dispatches them *in arrival order*
//! (so two produce requests on one connection are appended in the order they were sent);
//! what a request then waits for (an fsync for acks=all, data for a long-polling fetch)
//! is a future handed to the writer, which awaits those futures in order and writes the
//! responses in order. That gives pipelining without reordering.
//!
//! Limits (all configuration, see `BROKER_SETTINGS`):
//! - `max.connections`, `max.connections.per.ip` (+ `.overrides`): checked at accept; a
//!   connection over a limit is accepted and closed at once, so the listener never stalls
//!   and the peer sees a clean close rather than a hang in the backlog.
//! - `connections.max.idle.ms`: a watchdog per connection closes it when no request was read
//!   and no response byte written for that long, unless a response is being computed (a
//!   long-polling Fetch is activity). A client that stops reading makes no write progress,
//!   so it is eventually closed too.
//! - `connection.max.inflight.response.bytes`: responses computed but not yet written are
//!   counted in bytes (a Fetch by its full frame size, sendfile ranges included); above the
//!   limit the reader stops reading the socket, so a client that does not read its
//!   responses is pushed back through TCP instead of growing the broker's memory.
//!   `queued.max.requests` bounds how many requests are dispatched but not answered.
//! - `socket.request.max.bytes`: larger size prefixes close the connection; a request's
//!   buffer grows with the bytes that actually arrive, so a lying prefix costs nothing.
//! - `queued.max.request.bytes`: request bytes read and being dispatched, over all
//!   connections. A request takes its size from this budget before its body is read and
//!   gives it back once dispatched, so memory held by requests is bounded broker-wide.
//! - `max.connection.creation.rate`: accepts per second; above it the listener waits
//!   before accepting more (as Kafka's connection throttling does) instead of refusing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::api::{self, ApiError};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::metrics::RejectReason;
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

/// Connection counts checked at accept: `max.connections` and `max.connections.per.ip`
/// (with its per-address overrides).
#[derive(Debug)]
pub struct ConnectionLimits {
    total_max: usize,
    per_ip_max: usize,
    per_ip_overrides: HashMap<IpAddr, usize>,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(config: &BrokerConfig) -> ConnectionLimits {
        ConnectionLimits {
            total_max: config.max_connections(),
            per_ip_max: config.max_connections_per_ip(),
            per_ip_overrides: config
                .max_connections_per_ip_overrides()
                .into_iter()
                .collect(),
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// The counts stay consistent even if a holder panicked: every update is one step.
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, RejectReason> {
        let ip_max = self
            .per_ip_overrides
            .get(&ip)
            .copied()
            .unwrap_or(self.per_ip_max);
        let mut open = self.lock();
        if open.total >= self.total_max {
            return Err(RejectReason::MaxConnections);
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= ip_max {
            return Err(RejectReason::MaxConnectionsPerIp);
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            ip,
        })
    }
}

/// `queued.max.request.bytes`: a byte budget shared by every connection of a listener.
#[derive(Debug, Clone)]
struct RequestBudget {
    /// `None`: unlimited.
    bytes: Option<Arc<Semaphore>>,
    max_bytes: u32,
}

impl RequestBudget {
    fn new(max_bytes: Option<usize>) -> RequestBudget {
        // A request is at most i32::MAX bytes, so a budget above u32::MAX is no limit.
        match max_bytes.map(u32::try_from) {
            Some(Ok(max_bytes)) => RequestBudget {
                bytes: Some(Arc::new(Semaphore::new(max_bytes as usize))),
                max_bytes,
            },
            _ => RequestBudget {
                bytes: None,
                max_bytes: u32::MAX,
            },
        }
    }

    /// Takes `size` bytes (at most the whole budget, so one large request can always
    /// proceed alone); waits while other requests hold them. `None` when unlimited.
    async fn take(
        &self,
        size: usize,
        metrics: &crate::metrics::BrokerMetrics,
    ) -> Option<OwnedSemaphorePermit> {
        let bytes = self.bytes.as_ref()?;
        let wanted = u32::try_from(size).unwrap_or(u32::MAX).min(self.max_bytes);
        if let Ok(permit) = Arc::clone(bytes).try_acquire_many_owned(wanted) {
            return Some(permit);
        }
        metrics.request_budget_waited();
        // The semaphore is never closed, so this only fails if it were; then run unlimited.
        Arc::clone(bytes).acquire_many_owned(wanted).await.ok()
    }
}

/// `max.connection.creation.rate`: a token bucket holding up to one second of accepts.
#[derive(Debug)]
struct AcceptRate {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl AcceptRate {
    fn new(per_second: u32, now: Instant) -> AcceptRate {
        let per_second = f64::from(per_second.max(1));
        AcceptRate {
            per_second,
            tokens: per_second,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
    }

    /// How long to wait before the next accept (zero when a token is there).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }

    /// Spends a token for an accepted connection.
    fn accepted(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

/// Logs refused connections at most once per [`REJECT_LOG_INTERVAL`], with how many were
/// refused since the last line, so a flood of connections cannot flood the log.
#[derive(Debug, Default)]
struct RejectLog {
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// Least time between two "connection refused" log lines.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl RejectLog {
    fn rejected(&mut self, peer: SocketAddr, reason: RejectReason, now: Instant) {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < REJECT_LOG_INTERVAL)
        {
            return;
        }
        let limit = match reason {
            RejectReason::MaxConnections => "max.connections",
            RejectReason::MaxConnectionsPerIp => "max.connections.per.ip",
        };
        tracing::warn!(
            %peer,
            limit,
            refused_since_last_log = self.unlogged,
            "connection limit reached; closing new connection"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

/// Accepts connections until shutdown, then waits for the connections to finish.
pub async fn run_listener(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = shutdown.clone();
    let config = broker.config();
    let limits = Arc::new(ConnectionLimits::new(&config));
    let budget = RequestBudget::new(config.queued_max_request_bytes());
    let mut accept_rate = AcceptRate::new(config.max_connection_creation_rate(), Instant::now());
    drop(config);
    let mut reject_log = RejectLog::default();
    loop {
        let throttle = accept_rate.wait(Instant::now());
        if !throttle.is_zero() {
            broker.metrics.connection_creation_throttled();
            tokio::select! {
                () = tokio::time::sleep(throttle) => {}
                _ = crate::server::stopped(&mut stop) => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_rate.accepted(Instant::now());
                    let slot = match limits.admit(peer.ip()) {
                        Ok(slot) => slot,
                        Err(reason) => {
                            broker.metrics.connection_rejected(reason);
                            reject_log.rejected(peer, reason, Instant::now());
                            drop(stream);
                            continue;
                        }
                    };
                    let broker = Arc::clone(&broker);
                    let shutdown = shutdown.clone();
                    let budget = budget.clone();
                    connections.spawn(async move {
                        serve_connection(stream, peer, broker, shutdown, budget).await;
                        drop(slot);
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

/// Holds a connection busy (see [`ConnectionState::busy`]).
struct BusyGuard<'a>(&'a ConnectionState);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// What the reader and the writer of one connection share: when it was last active and
/// how many response bytes wait to be written.
#[derive(Debug)]
struct ConnectionState {
    opened: Instant,
    /// Milliseconds from `opened` to the last request read or response bytes written.
    last_active_ms: AtomicU64,
    /// Requests being worked on: the reader dispatching one, the writer awaiting a
    /// response being computed (long-polling Fetch, acks=all fsync). Non-zero means the
    /// connection is in use even if no byte moves.
    busy: AtomicUsize,
    /// Bytes of responses known (encoded, or located on disk) but not yet written.
    unwritten_bytes: AtomicUsize,
    /// Signalled by the writer when `unwritten_bytes` falls.
    written: Notify,
}

impl ConnectionState {
    fn new() -> ConnectionState {
        ConnectionState {
            opened: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            unwritten_bytes: AtomicUsize::new(0),
            written: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// Marks the connection busy until the guard is dropped (which counts as activity).
    fn busy(&self) -> BusyGuard<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        BusyGuard(self)
    }

    fn add_unwritten(&self, bytes: usize) {
        self.unwritten_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove_unwritten(&self, bytes: usize) {
        // Never below zero: every removal matches an earlier addition.
        let _ = self
            .unwritten_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.written.notify_one();
    }

    fn unwritten(&self) -> usize {
        self.unwritten_bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the connection has been idle for `idle`: nothing read, nothing
    /// written and no response being computed.
    async fn until_idle(&self, idle: Duration) {
        loop {
            // A timeout too large to represent (the setting allows i64::MAX ms) never fires.
            let Some(deadline) = self.last_active().checked_add(idle) else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(deadline.into()).await;
            if self.busy.load(Ordering::Relaxed) > 0 {
                // Re-checked at least once per `idle` (the end of busy work touches).
                tokio::time::sleep(idle.clamp(Duration::from_millis(10), Duration::from_secs(1)))
                    .await;
                continue;
            }
            if self
                .last_active()
                .checked_add(idle)
                .is_some_and(|deadline| deadline <= Instant::now())
            {
                return;
            }
        }
    }

    /// Resolves once unwritten responses are at most `limit` bytes.
    async fn until_unwritten_at_most(&self, limit: usize) {
        while self.unwritten() > limit {
            // `notify_one` stores a permit when nobody waits: no wake-up is lost.
            self.written.notified().await;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    budget: RequestBudget,
) {
    let _ = stream.set_nodelay(true);
    let _open = broker.metrics.connection_opened();
    tracing::debug!(%peer, "connection opened");
    let (read_half, write_half) = stream.into_split();
    let config = broker.config();
    let (tx, rx) = mpsc::channel(config.queued_max_requests());
    let sendfile = config.socket_sendfile_enable();
    let idle = Duration::from_millis(config.connections_max_idle_ms());
    let state = Arc::new(ConnectionState::new());
    let mut writer = tokio::spawn(write_responses(
        write_half,
        rx,
        peer,
        sendfile,
        Arc::clone(&state),
    ));
    // The watchdog runs while reading and while the writer drains what is pending.
    let mut closed_idle = tokio::select! {
        () = read_requests(read_half, peer, &broker, tx, shutdown, &state, &budget) => false,
        () = state.until_idle(idle) => true,
    };
    if !closed_idle {
        // The reader dropped its sender: the writer drains what is pending and ends.
        closed_idle = tokio::select! {
            _ = &mut writer => false,
            () = state.until_idle(idle) => true,
        };
    }
    if closed_idle {
        // The writer may be blocked on a client that stopped reading: stop it, which
        // drops the write half and closes the socket.
        writer.abort();
        let _ = writer.await;
        broker.metrics.connection_idle_closed();
        tracing::info!(%peer, idle_ms = idle.as_millis() as u64, "closing idle connection (connections.max.idle.ms)");
    }
    tracing::debug!(%peer, "connection closed");
}

/// Why a connection is closed by the broker.
#[derive(Debug)]
pub(crate) enum CloseReason {
    PeerClosed,
    Shutdown,
    Fatal(String),
}

async fn read_requests(
    mut reader: OwnedReadHalf,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    tx: mpsc::Sender<Pending>,
    mut shutdown: watch::Receiver<bool>,
    state: &ConnectionState,
    budget: &RequestBudget,
) {
    let config = broker.config();
    let frame_bytes_max = config.socket_request_max_bytes();
    let inflight_bytes_max = config.connection_max_inflight_response_bytes();
    drop(config);
    loop {
        if state.unwritten() > inflight_bytes_max {
            // Back-pressure: the client is not reading its responses fast enough. Stop
            // reading its requests (TCP pushes back on it) until the writer catches up.
            broker.metrics.connection_read_paused();
            tracing::debug!(%peer, unwritten_bytes = state.unwritten(), "pausing reads");
            tokio::select! {
                () = state.until_unwritten_at_most(inflight_bytes_max) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
                // The writer failed (the peer went away): nothing will be written.
                () = tx.closed() => return,
            }
        }
        let frame = tokio::select! {
            frame = read_frame(&mut reader, frame_bytes_max, budget, &broker.metrics, state) => frame,
            _ = crate::server::stopped(&mut shutdown) => Err(CloseReason::Shutdown),
        };
        // Dispatching can wait (a partition lock, a coordinator): that is not idleness.
        let busy = state.busy();
        let is_produce = matches!(&frame, Ok((frame, _)) if frame.len() >= 2
            && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16);
        let outcome = match frame {
            // The budget is held until the request is dispatched: by then its bytes are
            // appended (Produce) or decoded into what the response needs.
            Ok((frame, _budget)) => dispatch_frame(broker, frame, peer).await,
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
        drop(busy);
        match outcome {
            Ok(dispatched) => {
                // A response encoded already counts now; one still being computed counts
                // when the writer has it (see `write_responses`).
                let counted_bytes = match &dispatched {
                    Dispatched::Now(Some(frame)) => frame.len(),
                    _ => 0,
                };
                state.add_unwritten(counted_bytes);
                let pending = Pending {
                    dispatched,
                    counted_bytes,
                };
                if tx.send(pending).await.is_err() {
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

/// Reads one request frame, taking its size from `budget` before the body is read.
async fn read_frame(
    reader: &mut OwnedReadHalf,
    frame_bytes_max: usize,
    budget: &RequestBudget,
    metrics: &crate::metrics::BrokerMetrics,
    state: &ConnectionState,
) -> Result<(BytesMut, Option<OwnedSemaphorePermit>), CloseReason> {
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
    let permit = {
        // Waiting for the budget is not idleness: the client has a request on its way.
        let _busy = state.busy();
        budget.take(size, metrics).await
    };
    // Grow the buffer as bytes arrive instead of trusting the prefix: a client that
    // announces 100 MiB and sends nothing costs [`FRAME_BUFFER_BYTES_INITIAL`].
    let mut frame = BytesMut::with_capacity(size.min(FRAME_BUFFER_BYTES_INITIAL));
    while frame.len() < size {
        if frame.capacity() == frame.len() {
            frame.reserve((size - frame.len()).min(frame.len().max(FRAME_BUFFER_BYTES_INITIAL)));
        }
        let room = (size - frame.len()).min(frame.capacity() - frame.len());
        let mut limited = (&mut *reader).take(room as u64);
        match limited.read_buf(&mut frame).await {
            Ok(0) => {
                return Err(CloseReason::Fatal(format!(
                    "connection closed inside a {size}-byte request"
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(CloseReason::Fatal(format!("read failed: {e}"))),
        }
    }
    Ok((frame, permit))
}

/// Initial buffer of a request frame; it doubles as bytes arrive, up to the frame size.
const FRAME_BUFFER_BYTES_INITIAL: usize = 64 * 1024;

/// A dispatched request on its way to the writer, with the response bytes the reader has
/// already counted as unwritten.
struct Pending {
    dispatched: Dispatched,
    counted_bytes: usize,
}

pub(crate) async fn dispatch_frame(
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
    mut rx: mpsc::Receiver<Pending>,
    peer: SocketAddr,
    sendfile: bool,
    state: Arc<ConnectionState>,
) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(Pending {
        dispatched,
        counted_bytes,
    }) = rx.recv().await
    {
        let computed = !matches!(dispatched, Dispatched::Now(_));
        let frame = {
            let _busy = computed.then(|| state.busy());
            match dispatched {
                Dispatched::Now(frame) => Ok(frame.map(ResponseParts::from)),
                Dispatched::Later(pending) => pending.await.map(|f| f.map(ResponseParts::from)),
                Dispatched::LaterParts(pending) => pending.await,
            }
        };
        let mut unwritten_bytes = counted_bytes;
        if computed {
            // Counted by its full size, file ranges included: that is what the socket
            // still has to take.
            let bytes = frame
                .as_ref()
                .ok()
                .and_then(|frame| frame.as_ref())
                .map_or(0, ResponseParts::len_bytes);
            state.add_unwritten(bytes);
            unwritten_bytes += bytes;
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(%peer, ?error, "request failed; closing connection");
                break;
            }
        };
        if let Some(frame) = frame {
            if let Err(error) = write_frame(&mut writer, frame, sendfile, &state).await {
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
        // Up to WRITE_BUFFER_BYTES may still sit in the buffer: bounded, and flushed before
        // the writer waits for anything else.
        state.touch();
        state.remove_unwritten(unwritten_bytes);
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
    state: &ConnectionState,
) -> std::io::Result<()> {
    let mut chunk = Vec::new();
    for part in frame.into_parts() {
        match part {
            ResponsePart::Bytes(bytes) => writer.write_all(&bytes).await?,
            ResponsePart::File(slice) if sendfile => {
                writer.flush().await?;
                send_file_range(writer.get_ref().as_ref(), &slice, state).await?;
            }
            ResponsePart::File(slice) => {
                let mut position = slice.position;
                let mut remaining = slice.len;
                while remaining > 0 {
                    let len = remaining.min(PREAD_CHUNK_BYTES);
                    chunk.resize(len, 0);
                    std::os::unix::fs::FileExt::read_exact_at(&*slice.file, &mut chunk, position)?;
                    writer.write_all(&chunk).await?;
                    state.touch();
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
async fn send_file_range(
    stream: &TcpStream,
    slice: &ReadSlice,
    state: &ConnectionState,
) -> std::io::Result<()> {
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
            Ok(sent) => {
                remaining = remaining.saturating_sub(sent);
                state.touch();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, &str)]) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(
            &BrokerConfig::from_pairs(pairs.iter().copied()).unwrap(),
        ))
    }

    #[test]
    fn total_limit_refuses_then_frees_a_place() {
        let limits = limits(&[("max.connections", "2")]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(b).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), RejectReason::MaxConnections);
        drop(first);
        let _third = limits.admit(a).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), RejectReason::MaxConnections);
    }

    #[test]
    fn per_ip_limit_and_overrides() {
        let limits = limits(&[
            ("max.connections.per.ip", "1"),
            ("max.connections.per.ip.overrides", "10.0.0.9:3,10.0.0.8:0"),
        ]);
        let plain: IpAddr = "10.0.0.1".parse().unwrap();
        let generous: IpAddr = "10.0.0.9".parse().unwrap();
        let banned: IpAddr = "10.0.0.8".parse().unwrap();
        let held = limits.admit(plain).unwrap();
        assert_eq!(
            limits.admit(plain).unwrap_err(),
            RejectReason::MaxConnectionsPerIp
        );
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let _other = limits.admit(other).unwrap();
        let generous_slots: Vec<_> = (0..3).map(|_| limits.admit(generous).unwrap()).collect();
        assert_eq!(
            limits.admit(generous).unwrap_err(),
            RejectReason::MaxConnectionsPerIp
        );
        assert_eq!(
            limits.admit(banned).unwrap_err(),
            RejectReason::MaxConnectionsPerIp
        );
        drop(held);
        drop(generous_slots);
        let _again = limits.admit(plain).unwrap();
        assert!(!limits.lock().per_ip.contains_key(&generous));
        assert_eq!(limits.lock().total, 2);
    }

    #[test]
    fn accept_rate_allows_a_second_of_burst_then_spaces_accepts() {
        let start = Instant::now();
        let mut rate = AcceptRate::new(4, start);
        for _ in 0..4 {
            assert_eq!(rate.wait(start), Duration::ZERO);
            rate.accepted(start);
        }
        // The bucket is empty: the fifth accept waits a quarter of a second.
        let wait = rate.wait(start);
        assert!(
            wait > Duration::from_millis(240) && wait <= Duration::from_millis(250),
            "{wait:?}"
        );
        let later = start + Duration::from_millis(250);
        assert_eq!(rate.wait(later), Duration::ZERO);
        rate.accepted(later);
        assert!(rate.wait(later) > Duration::ZERO);
        // A long pause refills at most one second's worth.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(rate.wait(much_later), Duration::ZERO);
            rate.accepted(much_later);
        }
        assert!(rate.wait(much_later) > Duration::ZERO);
    }

    #[tokio::test]
    async fn request_budget_makes_later_requests_wait_and_never_blocks_a_lone_large_one() {
        let metrics = crate::metrics::BrokerMetrics::default();
        let budget = RequestBudget::new(Some(1000));
        let first = budget.take(600, &metrics).await;
        assert!(first.is_some());
        // 600 + 600 > 1000: the second waits until the first is released.
        let second = budget.take(600, &metrics);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "second request must wait for the budget"
        );
        drop(first);
        let second = second.await;
        assert!(second.is_some());
        assert_eq!(metrics.request_budget_waits.load(Ordering::Relaxed), 1);
        drop(second);
        // Larger than the whole budget: takes all of it instead of waiting forever.
        let huge = budget.take(1 << 20, &metrics).await;
        assert!(huge.is_some());
        // Unlimited: no permit, no wait.
        assert!(RequestBudget::new(None)
            .take(1 << 30, &metrics)
            .await
            .is_none());
    }

    #[test]
    fn reject_log_counts_what_it_did_not_log() {
        let peer: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let mut log = RejectLog::default();
        let start = Instant::now();
        log.rejected(peer, RejectReason::MaxConnections, start);
        assert_eq!(log.unlogged, 0, "the first refusal is logged at once");
        for _ in 0..5 {
            log.rejected(peer, RejectReason::MaxConnections, start);
        }
        assert_eq!(
            log.unlogged, 5,
            "refusals within the interval are only counted"
        );
        log.rejected(
            peer,
            RejectReason::MaxConnections,
            start + REJECT_LOG_INTERVAL,
        );
        assert_eq!(log.unlogged, 0, "the next line carries the count");
        assert_eq!(log.last_logged, Some(start + REJECT_LOG_INTERVAL));
    }

    #[tokio::test]
    async fn unwritten_bytes_release_a_paused_reader() {
        let state = Arc::new(ConnectionState::new());
        state.add_unwritten(10);
        state.add_unwritten(5);
        let waiter = {
            let state = Arc::clone(&state);
            tokio::spawn(async move { state.until_unwritten_at_most(8).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        state.remove_unwritten(10);
        waiter.await.unwrap();
        assert_eq!(state.unwritten(), 5);
        state.remove_unwritten(100);
        assert_eq!(state.unwritten(), 0, "never below zero");
    }

    #[tokio::test]
    async fn huge_idle_timeout_never_fires_and_never_panics() {
        let state = ConnectionState::new();
        let idle = Duration::from_millis(i64::MAX as u64);
        let outcome = tokio::time::timeout(Duration::from_millis(50), state.until_idle(idle)).await;
        assert!(outcome.is_err(), "an i64::MAX ms timeout fired");
    }

    #[tokio::test]
    async fn busy_connection_is_not_idle() {
        let state = ConnectionState::new();
        let idle = Duration::from_millis(20);
        let busy = state.busy();
        let outcome =
            tokio::time::timeout(Duration::from_millis(200), state.until_idle(idle)).await;
        assert!(
            outcome.is_err(),
            "closed as idle while a response was being computed"
        );
        drop(busy);
        state.until_idle(idle).await;
        assert_eq!(state.busy.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn idle_watchdog_fires_after_inactivity() {
        let state = ConnectionState::new();
        state.touch();
        state.until_idle(Duration::from_millis(20)).await;
        assert!(state.last_active() + Duration::from_millis(20) <= Instant::now());
    }

    #[tokio::test]
    async fn request_buffer_grows_with_arriving_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(&(sent.len() as i32).to_be_bytes())
                .await
                .unwrap();
            for chunk in sent.chunks(7_001) {
                stream.write_all(chunk).await.unwrap();
            }
            // A lying prefix: announces 50 MB, sends 3 bytes, hangs up.
            stream
                .write_all(&50_000_000i32.to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&[1, 2, 3]).await.unwrap();
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (mut reader, _writer) = stream.into_split();
        let metrics = crate::metrics::BrokerMetrics::default();
        let state = ConnectionState::new();
        let budget = RequestBudget::new(None);
        let (frame, _) = read_frame(&mut reader, 100 << 20, &budget, &metrics, &state)
            .await
            .unwrap();
        assert_eq!(&frame[..], &body[..]);
        client.await.unwrap();
        match read_frame(&mut reader, 100 << 20, &budget, &metrics, &state).await {
            Err(CloseReason::Fatal(reason)) => assert!(reason.contains("inside a"), "{reason}"),
            other => panic!("expected a fatal close, got {other:?}"),
        }
    }
}
