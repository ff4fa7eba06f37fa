//! Latency histograms and the report `sluice bench` prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram tracks exactly, in microseconds (one hour); longer values
/// are recorded as this (saturating) rather than lost.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Adds `source` into `into`; values beyond the bounds were saturated at record time, so
/// the bounds always match.
pub fn merge(into: &mut Histogram<u64>, source: &Histogram<u64>) {
    if let Err(error) = into.add(source) {
        tracing::warn!(%error, "cannot merge latency histograms");
    }
}

/// Percentiles of a latency histogram, in milliseconds (microsecond resolution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of latencies recorded.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencySummary {
    /// The summary of `histogram` (values in microseconds); all zero when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                mean_ms: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: us_to_ms(histogram.value_at_quantile(0.50)),
            p99_ms: us_to_ms(histogram.value_at_quantile(0.99)),
            p999_ms: us_to_ms(histogram.value_at_quantile(0.999)),
            max_ms: us_to_ms(histogram.max()),
        }
    }
}

/// Everything one run measured; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `produce`, `consume` or `e2e`.
    pub mode: &'static str,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: usize,
    pub message_bytes: usize,
    /// `0`, `1` or `all` (produce and e2e).
    pub acks: String,
    pub compression: String,
    pub producers: usize,
    /// Target messages per second; 0 means as fast as possible.
    pub target_rate_msgs_per_sec: f64,
    /// Latencies count from each message's intended send time (fixed `--rate`).
    pub coordinated_omission_corrected: bool,
    /// Messages produced (produce), consumed (consume, e2e).
    pub messages: u64,
    /// Messages the producers had acknowledged (e2e; equals `messages` otherwise).
    pub produced_messages: u64,
    /// Record bytes: values written (produce, e2e) or record batch bytes fetched (consume).
    pub bytes: u64,
    pub elapsed_sec: f64,
    pub msgs_per_sec: f64,
    /// Decimal megabytes (10^6 bytes) per second of `bytes`.
    pub mb_per_sec: f64,
    /// produce: send of a batch to its acknowledgement, per record; consume: round trip
    /// of each Fetch; e2e: producer's record timestamp to the consumer's receipt.
    pub latency: LatencySummary,
    /// Requests that failed (failed batches are not counted in `messages`).
    pub errors: u64,
    /// The first error's message, if any.
    pub first_error: Option<String>,
}

/// Per-second throughput figures of `count` items over `elapsed_sec`.
pub fn per_second(count: u64, elapsed_sec: f64) -> f64 {
    if elapsed_sec > 0.0 {
        count as f64 / elapsed_sec
    } else {
        0.0
    }
}

impl Report {
    /// Fills throughput figures from `messages`, `bytes` and `elapsed_sec`.
    pub fn with_throughput(mut self) -> Report {
        self.msgs_per_sec = per_second(self.messages, self.elapsed_sec);
        self.mb_per_sec = per_second(self.bytes, self.elapsed_sec) / 1e6;
        self
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency;
        let latency_name = match self.mode {
            "produce" => "produce latency (send to ack)",
            "consume" => "fetch latency (round trip)",
            _ => "end-to-end latency (record timestamp to receipt)",
        };
        let mut text = format!(
            "{mode}: {messages} messages, {bytes} bytes in {elapsed:.3} s\n\
             throughput: {msgs:.0} msgs/s, {mb:.2} MB/s\n\
             {latency_name} ms: p50 {p50:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}  mean {mean:.3}  ({count} samples{co})\n",
            mode = self.mode,
            messages = self.messages,
            bytes = self.bytes,
            elapsed = self.elapsed_sec,
            msgs = self.msgs_per_sec,
            mb = self.mb_per_sec,
            p50 = l.p50_ms,
            p99 = l.p99_ms,
            p999 = l.p999_ms,
            max = l.max_ms,
            mean = l.mean_ms,
            count = l.count,
            co = if self.coordinated_omission_corrected {
                ", from intended send times"
            } else {
                ""
            },
        );
        if self.mode == "e2e" {
            text.push_str(&format!("produced: {} messages\n", self.produced_messages));
        }
        if self.errors > 0 {
            text.push_str(&format!(
                "errors: {} (first: {})\n",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_distribution() {
        let mut histogram = latency_histogram();
        for us in 1..=1000u64 {
            histogram.record(us * 10).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        // 3 significant digits: within 0.1 % of the exact percentile.
        assert!((summary.p50_ms - 5.0).abs() < 0.01, "{summary:?}");
        assert!((summary.p99_ms - 9.9).abs() < 0.01, "{summary:?}");
        assert!((summary.p999_ms - 9.99).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 10.0).abs() < 0.01, "{summary:?}");
        assert!(summary.p50_ms <= summary.p99_ms);
        assert!(summary.p99_ms <= summary.p999_ms);
        assert!(summary.p999_ms <= summary.max_ms);
    }

    #[test]
    fn empty_histogram_summarizes_to_zero() {
        let summary = LatencySummary::of(&latency_histogram());
        assert_eq!(summary.count, 0);
        assert_eq!(summary.max_ms, 0.0);
    }

    #[test]
    fn merged_histograms_count_both() {
        let mut a = latency_histogram();
        let mut b = latency_histogram();
        a.record(100).unwrap();
        b.saturating_record(LATENCY_MAX_US * 10);
        merge(&mut a, &b);
        let summary = LatencySummary::of(&a);
        assert_eq!(summary.count, 2);
        assert!(summary.max_ms >= LATENCY_MAX_US as f64 / 1000.0 * 0.999);
    }

    fn report() -> Report {
        Report {
            mode: "produce",
            bootstrap: "127.0.0.1:9092".into(),
            topic: "t".into(),
            partitions: 1,
            message_bytes: 100,
            acks: "all".into(),
            compression: "none".into(),
            producers: 1,
            target_rate_msgs_per_sec: 0.0,
            coordinated_omission_corrected: false,
            messages: 2_000,
            produced_messages: 2_000,
            bytes: 200_000,
            elapsed_sec: 2.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            latency: LatencySummary::of(&latency_histogram()),
            errors: 0,
            first_error: None,
        }
        .with_throughput()
    }

    #[test]
    fn throughput_is_per_second_in_decimal_megabytes() {
        let report = report();
        assert_eq!(report.msgs_per_sec, 1_000.0);
        assert_eq!(report.mb_per_sec, 0.1);
        assert_eq!(per_second(5, 0.0), 0.0);
    }

    #[test]
    fn json_shape_has_every_field() {
        let value = serde_json::to_value(report()).unwrap();
        for field in [
            "mode",
            "bootstrap",
            "topic",
            "partitions",
            "message_bytes",
            "acks",
            "compression",
            "producers",
            "target_rate_msgs_per_sec",
            "coordinated_omission_corrected",
            "messages",
            "produced_messages",
            "bytes",
            "elapsed_sec",
            "msgs_per_sec",
            "mb_per_sec",
            "errors",
            "first_error",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for field in ["count", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(
                value["latency"].get(field).is_some(),
                "missing latency.{field}"
            );
        }
        assert_eq!(value["mode"], "produce");
        assert_eq!(value["messages"], 2_000);
    }
}
