//! Broker metrics and their Prometheus text exposition (format version 0.0.4).
//!
//! Hot-path cost is a few relaxed atomic adds, no lock and no allocation:
//! - per-partition byte and record counters live in [`Partition::metrics`], created once
//!   with the partition; a scrape sums them per topic;
//! - per-API request counters and latency histograms live in [`BrokerMetrics`] (one slot
//!   per entry of [`SUPPORTED_APIS`], created at start-up);
//! - the fsync latency histogram is one process-wide static ([`FSYNC_DURATION`]): the
//!   flusher of every partition observes into it, and it outlives deleted partitions, so
//!   its counts never go backwards.
//!
//! Everything that is state rather than an event (log offsets, consumer lag, resident
//! memory, CPU time) is computed when scraped, never stored.
//!
//! [`Partition::metrics`]: crate::partition::Partition

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use sluice_log::AppendInfo;
use sluice_log::ReadSlice;

use crate::api::SUPPORTED_APIS;
use crate::broker::Broker;
use crate::partition::Partition;
use crate::server::Dispatched;

/// Content type of the Prometheus text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency histogram buckets: 100 µs to 10 s, roughly
/// 1-2.5-5 per decade. Sub-millisecond buckets matter because acks=1 produce and
/// page-cache fetches are answered in tens of microseconds; the 10 s end covers fetch
/// long polls (their latency includes `max_wait_ms`) and stalled disks.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BUCKET_COUNT: usize = LATENCY_BUCKETS_SECONDS.len();

/// [`LATENCY_BUCKETS_SECONDS`] in nanoseconds, so that observing compares integers.
const LATENCY_BUCKETS_NANOS: [u64; BUCKET_COUNT] = {
    let mut nanos = [0u64; BUCKET_COUNT];
    let mut i = 0;
    while i < BUCKET_COUNT {
        nanos[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
};

/// A latency histogram with the fixed [`LATENCY_BUCKETS_SECONDS`]: lock-free, constant
/// size. Buckets hold per-bucket (not cumulative) counts; the exposition accumulates them
/// and derives `_count` from the same snapshot, so `_count` always equals the `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    /// `buckets[i]` counts observations in `(bound[i-1], bound[i]]`; the last slot is
    /// everything above the largest bound.
    buckets: [AtomicU64; BUCKET_COUNT + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKET_COUNT + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per bound, then `+Inf`) and the sum in seconds.
    fn snapshot(&self) -> ([u64; BUCKET_COUNT + 1], f64) {
        let mut cumulative = [0u64; BUCKET_COUNT + 1];
        let mut running = 0u64;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running = running.saturating_add(bucket.load(Ordering::Relaxed));
            *slot = running;
        }
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum_seconds)
    }
}

/// Latency of every group-commit fsync of every partition (see the module doc for why
/// it is a static).
pub static FSYNC_DURATION: Histogram = Histogram::new();

/// Observes into [`FSYNC_DURATION`] when dropped: one line around the fsync, and the
/// time is recorded on the error path too.
#[must_use = "the fsync is timed until this guard is dropped"]
pub struct FsyncTimer(Instant);

impl FsyncTimer {
    pub fn start() -> FsyncTimer {
        FsyncTimer(Instant::now())
    }
}

impl Drop for FsyncTimer {
    fn drop(&mut self) {
        FSYNC_DURATION.observe(self.0.elapsed());
    }
}

/// Traffic counters of one partition; the exposition sums them per topic.
#[derive(Debug, Default)]
pub struct PartitionMetrics {
    bytes_in: AtomicU64,
    records_in: AtomicU64,
    bytes_out: AtomicU64,
    records_out: AtomicU64,
}

impl PartitionMetrics {
    /// A produced batch that was written (a deduplicated retry wrote nothing and is not
    /// counted). Bytes are the batch as stored.
    pub fn produced(&self, info: &AppendInfo) {
        if info.duplicate {
            return;
        }
        self.bytes_in
            .fetch_add(info.batch_bytes as u64, Ordering::Relaxed);
        self.records_in.fetch_add(
            u64::try_from(info.records_count).unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    /// Record bytes and records sent to a consumer in one fetch response.
    pub fn fetched(&self, bytes: usize, records: u64) {
        if bytes == 0 {
            return;
        }
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.records_out.fetch_add(records, Ordering::Relaxed);
    }

    fn load(&self) -> [u64; 4] {
        [
            self.bytes_in.load(Ordering::Relaxed),
            self.records_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.records_out.load(Ordering::Relaxed),
        ]
    }
}

/// Counts the records of one partition of a Fetch response that is about to be sent.
pub fn fetched(partition: Option<&crate::partition::Partition>, slice: Option<&ReadSlice>) {
    if let (Some(partition), Some(slice)) = (partition, slice) {
        // The batches are not in memory (sendfile): records are the offsets they cover.
        let records = u64::try_from(slice.next_offset - slice.first_offset).unwrap_or(0);
        partition.metrics.fetched(slice.len, records);
    }
}

/// Requests of one API: how many arrived, and how long they took to be answered.
#[derive(Debug, Default)]
struct ApiMetrics {
    requests: AtomicU64,
    duration: Histogram,
}

/// Broker-wide counters: requests per API, open connections.
#[derive(Debug)]
pub struct BrokerMetrics {
    /// One slot per entry of [`SUPPORTED_APIS`], same order.
    apis: Box<[ApiMetrics]>,
    connections_open: AtomicI64,
    /// Connections closed at accept because `max.connections` was reached.
    connections_rejected_max: AtomicU64,
    /// Connections closed at accept because their IP was at `max.connections.per.ip`.
    connections_rejected_per_ip: AtomicU64,
    /// Connections closed after `connections.max.idle.ms` without activity.
    connections_idle_closed: AtomicU64,
    /// Times a connection's reader paused because its unwritten responses exceeded
    /// `connection.max.inflight.response.bytes`.
    connection_read_pauses: AtomicU64,
    pub(crate) request_budget_waits: AtomicU64,
    connection_creation_throttles: AtomicU64,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            apis: SUPPORTED_APIS
                .iter()
                .map(|_| ApiMetrics::default())
                .collect(),
            connections_open: AtomicI64::new(0),
            connections_rejected_max: AtomicU64::new(0),
            connections_rejected_per_ip: AtomicU64::new(0),
            connections_idle_closed: AtomicU64::new(0),
            connection_read_pauses: AtomicU64::new(0),
            request_budget_waits: AtomicU64::new(0),
            connection_creation_throttles: AtomicU64::new(0),
        }
    }
}

/// Counts an open connection until dropped.
pub struct ConnectionGuard(Arc<BrokerMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BrokerMetrics {
    fn api(&self, api_key: ApiKey) -> Option<&ApiMetrics> {
        let slot = SUPPORTED_APIS
            .iter()
            .position(|(key, _, _)| *key == api_key)?;
        self.apis.get(slot)
    }

    /// Counts a connection as open for as long as the guard lives.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(Arc::clone(self))
    }

    /// Counts a connection refused at accept.
    pub fn connection_rejected(&self, reason: RejectReason) {
        let counter = match reason {
            RejectReason::MaxConnections => &self.connections_rejected_max,
            RejectReason::MaxConnectionsPerIp => &self.connections_rejected_per_ip,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for being idle.
    pub fn connection_idle_closed(&self) {
        self.connections_idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reader pause for back-pressure.
    pub fn connection_read_paused(&self) {
        self.connection_read_pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that waited for `queued.max.request.bytes`.
    pub fn request_budget_waited(&self) {
        self.request_budget_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait of the listener for `max.connection.creation.rate`.
    pub fn connection_creation_throttled(&self) {
        self.connection_creation_throttles
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dispatched request and observes its latency from `started` (when its
    /// frame was read) to when its response is ready: at once for an immediate answer,
    /// when the deferred part completes otherwise (acks=all fsync, fetch long poll).
    pub fn track_request(
        self: &Arc<Self>,
        api_key: ApiKey,
        started: Instant,
        dispatched: Dispatched,
    ) -> Dispatched {
        let Some(api) = self.api(api_key) else {
            return dispatched;
        };
        api.requests.fetch_add(1, Ordering::Relaxed);
        match dispatched {
            Dispatched::Now(frame) => {
                api.duration.observe(started.elapsed());
                Dispatched::Now(frame)
            }
            Dispatched::Later(pending) => Dispatched::Later(self.timed(api_key, started, pending)),
            Dispatched::LaterParts(pending) => {
                Dispatched::LaterParts(self.timed(api_key, started, pending))
            }
        }
    }

    /// `pending`, observing the request's duration when it completes.
    fn timed<T: Send + 'static>(
        self: &Arc<Self>,
        api_key: ApiKey,
        started: Instant,
        pending: futures::future::BoxFuture<'static, T>,
    ) -> futures::future::BoxFuture<'static, T> {
        let metrics = Arc::clone(self);
        Box::pin(async move {
            let outcome = pending.await;
            if let Some(api) = metrics.api(api_key) {
                api.duration.observe(started.elapsed());
            }
            outcome
        })
    }
}

/// Writes `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// HELP text escaping: backslash and line feed.
pub fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label value escaping: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// `{a="x",b="y"}` with escaped values; empty for no labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A sample value in the exposition's float syntax (`+Inf`, `-Inf`, `NaN`).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        v.to_string()
    }
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], v: f64) {
    let _ = writeln!(out, "{name}{} {}", labels(pairs), value(v));
}

/// Writes the `_bucket`, `_sum` and `_count` samples of one histogram.
fn histogram_samples(out: &mut String, name: &str, pairs: &[(&str, &str)], histogram: &Histogram) {
    let (cumulative, sum_seconds) = histogram.snapshot();
    for (slot, count) in cumulative.iter().enumerate() {
        let le = LATENCY_BUCKETS_SECONDS
            .get(slot)
            .map_or_else(|| "+Inf".to_string(), |bound| value(*bound));
        let mut with_le = pairs.to_vec();
        with_le.push(("le", &le));
        sample(out, &format!("{name}_bucket"), &with_le, *count as f64);
    }
    sample(out, &format!("{name}_sum"), pairs, sum_seconds);
    let count = cumulative.last().copied().unwrap_or(0);
    sample(out, &format!("{name}_count"), pairs, count as f64);
}

/// The whole exposition of a broker at this moment.
pub fn render(broker: &Broker) -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_traffic(&mut out, broker);
    render_requests(&mut out, &broker.metrics);
    family(
        &mut out,
        "sluice_fsync_duration_seconds",
        "histogram",
        "Duration of group-commit fsyncs of partition logs.",
    );
    histogram_samples(
        &mut out,
        "sluice_fsync_duration_seconds",
        &[],
        &FSYNC_DURATION,
    );
    render_offsets(&mut out, broker);
    render_lag(&mut out, broker);
    family(
        &mut out,
        "sluice_connections_open",
        "gauge",
        "Kafka client connections currently open.",
    );
    let open = broker.metrics.connections_open.load(Ordering::Relaxed);
    sample(&mut out, "sluice_connections_open", &[], open as f64);
    render_connection_limits(&mut out, &broker.metrics);
    // This node's member of the controller quorum (`sluice_controller_*`, documented in
    // the sluice-controller README).
    broker
        .replicas
        .controller()
        .metrics()
        .write_prometheus(&mut out);
    render_process(&mut out);
    out
}

fn render_connection_limits(out: &mut String, metrics: &BrokerMetrics) {
    family(
        out,
        "sluice_connections_rejected_total",
        "counter",
        "Connections accepted and closed at once because a connection limit was reached (max.connections, max.connections.per.ip).",
    );
    for (reason, counter) in [
        ("max_connections", &metrics.connections_rejected_max),
        (
            "max_connections_per_ip",
            &metrics.connections_rejected_per_ip,
        ),
    ] {
        let value = counter.load(Ordering::Relaxed);
        sample(
            out,
            "sluice_connections_rejected_total",
            &[("reason", reason)],
            value as f64,
        );
    }
    family(
        out,
        "sluice_connections_idle_closed_total",
        "counter",
        "Connections closed after connections.max.idle.ms without activity.",
    );
    let idle = metrics.connections_idle_closed.load(Ordering::Relaxed);
    sample(
        out,
        "sluice_connections_idle_closed_total",
        &[],
        idle as f64,
    );
    family(
        out,
        "sluice_connection_read_pauses_total",
        "counter",
        "Times a connection stopped reading requests because its unwritten responses exceeded connection.max.inflight.response.bytes (a client not reading).",
    );
    let pauses = metrics.connection_read_pauses.load(Ordering::Relaxed);
    sample(
        out,
        "sluice_connection_read_pauses_total",
        &[],
        pauses as f64,
    );
    for (name, help, counter) in [
        (
            "sluice_request_budget_waits_total",
            "Requests that waited before their body was read because queued.max.request.bytes was in use by other requests.",
            &metrics.request_budget_waits,
        ),
        (
            "sluice_connection_creation_throttles_total",
            "Times the listener waited before accepting because of max.connection.creation.rate.",
            &metrics.connection_creation_throttles,
        ),
    ] {
        family(out, name, "counter", help);
        sample(out, name, &[], counter.load(Ordering::Relaxed) as f64);
    }
}

fn render_traffic(out: &mut String, broker: &Broker) {
    const FAMILIES: [(&str, &str); 4] = [
        (
            "sluice_topic_bytes_in_total",
            "Record batch bytes written by Produce requests, per topic.",
        ),
        (
            "sluice_topic_records_in_total",
            "Records written by Produce requests, per topic.",
        ),
        (
            "sluice_topic_bytes_out_total",
            "Record batch bytes sent in Fetch responses, per topic.",
        ),
        (
            "sluice_topic_records_out_total",
            "Records sent in Fetch responses (whole batches, as sent), per topic.",
        ),
    ];
    let totals: Vec<(String, [u64; 4])> = broker
        .replicas
        .all_topics()
        .iter()
        .map(|topic| {
            let mut sums = [0u64; 4];
            for partition in &topic.partitions {
                for (sum, v) in sums.iter_mut().zip(partition.metrics.load()) {
                    *sum = sum.saturating_add(v);
                }
            }
            (topic.record.name.clone(), sums)
        })
        .collect();
    for (i, (name, help)) in FAMILIES.iter().enumerate() {
        family(out, name, "counter", help);
        for (topic, sums) in &totals {
            sample(out, name, &[("topic", topic)], sums[i] as f64);
        }
    }
}

fn render_requests(out: &mut String, metrics: &BrokerMetrics) {
    family(
        out,
        "sluice_requests_total",
        "counter",
        "Requests received, per API.",
    );
    let names: Vec<String> = SUPPORTED_APIS
        .iter()
        .map(|(key, _, _)| format!("{key:?}"))
        .collect();
    for (name, api) in names.iter().zip(metrics.apis.iter()) {
        let requests = api.requests.load(Ordering::Relaxed);
        sample(
            out,
            "sluice_requests_total",
            &[("api", name)],
            requests as f64,
        );
    }
    family(
        out,
        "sluice_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response being ready (Fetch includes its long-poll wait, acks=all Produce its fsync), per API.",
    );
    for (name, api) in names.iter().zip(metrics.apis.iter()) {
        histogram_samples(
            out,
            "sluice_request_duration_seconds",
            &[("api", name)],
            &api.duration,
        );
    }
}

fn render_offsets(out: &mut String, broker: &Broker) {
    let mut rows = Vec::new();
    for topic in broker.replicas.all_topics() {
        for partition in &topic.partitions {
            rows.push((
                topic.record.name.clone(),
                partition.index.to_string(),
                Arc::clone(partition),
            ));
        }
    }
    family(
        out,
        "sluice_log_start_offset",
        "gauge",
        "First offset of the partition's log (moved by retention and DeleteRecords).",
    );
    for (topic, index, partition) in &rows {
        let pairs = [("topic", topic.as_str()), ("partition", index.as_str())];
        sample(
            out,
            "sluice_log_start_offset",
            &pairs,
            partition.log_start_offset() as f64,
        );
    }
    family(
        out,
        "sluice_log_end_offset",
        "gauge",
        "Offset the next record appended to the partition will get.",
    );
    for (topic, index, partition) in &rows {
        let pairs = [("topic", topic.as_str()), ("partition", index.as_str())];
        sample(
            out,
            "sluice_log_end_offset",
            &pairs,
            partition.log_end_offset() as f64,
        );
    }
    render_replication(out, &rows);
}

/// High watermark and ISR size per partition, and the partitions this broker leads with
/// fewer in-sync replicas than replicas (Kafka's UnderReplicatedPartitions).
fn render_replication(out: &mut String, rows: &[(String, String, Arc<Partition>)]) {
    family(
        out,
        "sluice_high_watermark",
        "gauge",
        "Offset below which records are replicated to the ISR and visible to consumers.",
    );
    for (topic, index, partition) in rows {
        let pairs = [("topic", topic.as_str()), ("partition", index.as_str())];
        sample(
            out,
            "sluice_high_watermark",
            &pairs,
            partition.high_watermark() as f64,
        );
    }
    family(
        out,
        "sluice_partition_isr_size",
        "gauge",
        "In-sync replicas of the partition, as the controller's image has them.",
    );
    let mut under_replicated = 0usize;
    for (topic, index, partition) in rows {
        let (replicas, isr) = partition.replica_counts();
        if partition.is_leader() && isr < replicas {
            under_replicated += 1;
        }
        let pairs = [("topic", topic.as_str()), ("partition", index.as_str())];
        sample(out, "sluice_partition_isr_size", &pairs, isr as f64);
    }
    family(
        out,
        "sluice_under_replicated_partitions",
        "gauge",
        "Partitions this broker leads whose ISR is smaller than their replica set.",
    );
    sample(
        out,
        "sluice_under_replicated_partitions",
        &[],
        under_replicated as f64,
    );
}

fn render_lag(out: &mut String, broker: &Broker) {
    family(
        out,
        "sluice_consumer_group_lag",
        "gauge",
        "Log end offset minus the group's committed offset (records not yet consumed), per group and partition with a commit.",
    );
    for (group, _, _) in broker.groups.list() {
        for (topic, partitions) in broker.groups.fetch_offsets(&group, None) {
            let Some(state) = broker.replicas.topic(&topic) else {
                continue;
            };
            for (index, committed) in partitions {
                let (Some(committed), Some(partition)) = (committed, state.partition(index)) else {
                    continue;
                };
                let lag = (partition.high_watermark() - committed.offset).max(0);
                let index = index.to_string();
                let pairs = [
                    ("group", group.as_str()),
                    ("topic", topic.as_str()),
                    ("partition", index.as_str()),
                ];
                sample(out, "sluice_consumer_group_lag", &pairs, lag as f64);
            }
        }
    }
}

/// Process figures from /proc (Linux); a family is left out when /proc cannot be read.
fn render_process(out: &mut String) {
    if let Some(resident_bytes) = process::resident_memory_bytes() {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the broker process in bytes (/proc/self/statm).",
        );
        sample(
            out,
            "process_resident_memory_bytes",
            &[],
            resident_bytes as f64,
        );
    }
    if let Some(cpu_seconds) = process::cpu_seconds() {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User plus system CPU time of the broker process in seconds (/proc/self/stat).",
        );
        sample(out, "process_cpu_seconds_total", &[], cpu_seconds);
    }
    if let Some(open_fds) = process::open_fds() {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors of the broker process (segments, indexes, sockets).",
        );
        sample(out, "process_open_fds", &[], open_fds as f64);
    }
}

/// Readers of /proc/self for the process metrics.
mod process {
    /// `sysconf` values; the fallbacks are Linux's usual ones.
    fn page_size_bytes() -> u64 {
        u64::try_from(rustix::param::page_size()).unwrap_or(4096)
    }

    fn clock_ticks_per_second() -> f64 {
        match rustix::param::clock_ticks_per_second() {
            0 => 100.0,
            ticks => ticks as f64,
        }
    }

    pub fn resident_memory_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        parse_statm_resident_pages(&statm).map(|pages| pages.saturating_mul(page_size_bytes()))
    }

    /// The second field of statm: resident pages.
    pub fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
        statm.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = parse_stat_cpu_ticks(&stat)?;
        Some(ticks as f64 / clock_ticks_per_second())
    }

    /// utime + stime (fields 14 and 15) of /proc/self/stat, in clock ticks. The command
    /// name (field 2) may contain spaces and parentheses, so fields are counted after
    /// its closing parenthesis.
    pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some(user.saturating_add(system))
    }

    pub fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label("plain-topic.1"), "plain-topic.1");
        assert_eq!(
            labels(&[("topic", "x\"y"), ("partition", "0")]),
            r#"{topic="x\"y",partition="0"}"#
        );
        assert_eq!(labels(&[]), "");
    }

    #[test]
    fn help_text_escapes_backslash_and_newline_but_not_quotes() {
        assert_eq!(escape_help("a\\b\n\"c\""), "a\\\\b\\n\"c\"");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_equals_inf() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(50)); // <= 0.0001
        histogram.observe(Duration::from_micros(100)); // exactly on the bound: le is inclusive
        histogram.observe(Duration::from_millis(3)); // <= 0.005
        histogram.observe(Duration::from_secs(60)); // above every bound
        let mut out = String::new();
        histogram_samples(&mut out, "x_seconds", &[("api", "Fetch")], &histogram);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], r#"x_seconds_bucket{api="Fetch",le="0.0001"} 2"#);
        assert_eq!(lines[1], r#"x_seconds_bucket{api="Fetch",le="0.00025"} 2"#);
        assert_eq!(lines[4], r#"x_seconds_bucket{api="Fetch",le="0.0025"} 2"#);
        assert_eq!(lines[5], r#"x_seconds_bucket{api="Fetch",le="0.005"} 3"#);
        assert_eq!(lines[15], r#"x_seconds_bucket{api="Fetch",le="10"} 3"#);
        assert_eq!(lines[16], r#"x_seconds_bucket{api="Fetch",le="+Inf"} 4"#);
        assert_eq!(lines[17], r#"x_seconds_sum{api="Fetch"} 60.00315"#);
        assert_eq!(lines[18], r#"x_seconds_count{api="Fetch"} 4"#);
        assert_eq!(lines.len(), 19);
        // Never decreasing from one bucket to the next.
        let counts: Vec<u64> = lines[..17]
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn family_header_lines() {
        let mut out = String::new();
        family(&mut out, "sluice_x_total", "counter", "Line one\nline two.");
        assert_eq!(
            out,
            "# HELP sluice_x_total Line one\\nline two.\n# TYPE sluice_x_total counter\n"
        );
    }

    #[test]
    fn special_float_values() {
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(42.0), "42");
        assert_eq!(value(0.25), "0.25");
    }

    #[test]
    fn request_tracking_counts_now_and_later_responses() {
        let metrics = Arc::new(BrokerMetrics::default());
        let started = Instant::now();
        let _ = metrics.track_request(ApiKey::Metadata, started, Dispatched::Now(None));
        let later = metrics.track_request(
            ApiKey::Produce,
            started,
            Dispatched::Later(Box::pin(async { Ok(None) })),
        );
        let produce = metrics.api(ApiKey::Produce).unwrap();
        assert_eq!(produce.requests.load(Ordering::Relaxed), 1);
        assert_eq!(
            produce.duration.snapshot().0[BUCKET_COUNT],
            0,
            "not answered yet"
        );
        let Dispatched::Later(pending) = later else {
            panic!("a deferred response stays deferred");
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(pending).unwrap();
        assert_eq!(produce.duration.snapshot().0[BUCKET_COUNT], 1);
        let metadata = metrics.api(ApiKey::Metadata).unwrap();
        assert_eq!(metadata.requests.load(Ordering::Relaxed), 1);
        assert_eq!(metadata.duration.snapshot().0[BUCKET_COUNT], 1);
        let mut out = String::new();
        render_requests(&mut out, &metrics);
        assert!(out.contains("sluice_requests_total{api=\"Produce\"} 1\n"));
        assert!(out.contains("sluice_requests_total{api=\"Fetch\"} 0\n"));
    }

    #[test]
    fn connection_guard_counts_open_connections() {
        let metrics = Arc::new(BrokerMetrics::default());
        let first = metrics.connection_opened();
        let second = metrics.connection_opened();
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            process::parse_statm_resident_pages("1000 250 30 1 0 500 0\n"),
            Some(250)
        );
        assert_eq!(process::parse_statm_resident_pages(""), None);
        let stat = "42 (sl uice) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 9 0 100 0 0";
        assert_eq!(process::parse_stat_cpu_ticks(stat), Some(10));
        let stat = "42 (a) b)) S 1 42 42 0 -1 4194560 100 0 0 0 11 4 0 0";
        assert_eq!(process::parse_stat_cpu_ticks(stat), Some(15));
        assert_eq!(process::parse_stat_cpu_ticks("garbage"), None);
        assert!(process::resident_memory_bytes().unwrap() > 0);
        assert!(process::cpu_seconds().is_some());
    }
}
