//! What a verify run remembers: every acknowledgement, failed delivery, acknowledged
//! offset commit and committed-offset observation, as JSON lines (`--history FILE`), so
//! that `--check-only` can re-check a run against the broker's log later (for example
//! after a test damaged it).
//!
//! Order between events of different tasks is given by a run-wide logical clock
//! ("ticks"), taken before a record is handed to `send` and after its acknowledgement
//! arrived: when one record's `ack_tick` is below another's `sent_tick`, the broker had
//! acknowledged the first before the second existed, so the first must sit at a lower
//! offset of their partition.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The record value's prefix: `sv1:{run_id:016x}:{producer}:{seq}`.
pub const VALUE_PREFIX: &str = "sv1";

/// Formats the value of record `seq` of `producer` in run `run_id`.
pub fn record_value(run_id: u64, producer: u32, seq: u64) -> String {
    format!("{VALUE_PREFIX}:{run_id:016x}:{producer}:{seq}")
}

/// The key of record `seq`: `k{seq % keys}`, so it lands on a partition known by murmur2.
pub fn record_key(seq: u64, keys: u64) -> String {
    format!("k{}", seq % keys.max(1))
}

/// Parses a value written by [`record_value`] into (run id, producer, seq).
pub fn parse_value(value: &[u8]) -> Option<(u64, u32, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != VALUE_PREFIX {
        return None;
    }
    let run = parts.next()?;
    if run.len() != 16 {
        return None;
    }
    let run = u64::from_str_radix(run, 16).ok()?;
    let producer = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((run, producer, seq))
}

/// The parameters of a run that the checker needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: u64,
    pub topic: String,
    pub partitions: i32,
    pub producers: u32,
    pub keys: u64,
    pub group: String,
    pub seed: u64,
}

/// A record the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub producer: u32,
    pub seq: u64,
    pub partition: i32,
    /// -1 when the broker reported a duplicate without the original offset.
    pub offset: i64,
    pub sent_tick: u64,
    pub ack_tick: u64,
}

/// A record whose delivery failed for good (or that `send` did not accept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub producer: u32,
    pub seq: u64,
    pub error: String,
}

/// An offset commit the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub partition: i32,
    pub offset: i64,
    pub tick: u64,
}

/// The group's committed offsets as OffsetFetch returned them; `tick` is taken before
/// the request, so every commit with a lower tick had been acknowledged already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub tick: u64,
    pub when: String,
    /// (partition, committed offset); partitions without a commit are absent.
    pub offsets: Vec<(i32, i64)>,
}

/// One line of the history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Run(RunInfo),
    /// How many records producer `producer` handed to `send` (sequence numbers
    /// `0..count`).
    Sent {
        producer: u32,
        count: u64,
    },
    Ack(Ack),
    Failed(Failure),
    Commit(Commit),
    Observed(Observation),
}

/// Everything a run recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub run: RunInfo,
    /// Per producer, how many records were handed to `send`.
    pub sent: Vec<u64>,
    /// In the order they arrived.
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
    pub commits: Vec<Commit>,
    pub observations: Vec<Observation>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot write the history to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the history from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

impl History {
    pub fn new(run: RunInfo) -> History {
        History {
            sent: vec![0; run.producers as usize],
            run,
            acks: Vec::new(),
            failures: Vec::new(),
            commits: Vec::new(),
            observations: Vec::new(),
        }
    }

    /// Writes the history as JSON lines (the run first, then the events in order).
    pub fn save(&self, path: &Path) -> Result<(), HistoryError> {
        let failed = |source| HistoryError::Write {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(failed)?;
        let mut out = BufWriter::new(file);
        let mut line = |event: Event| -> std::io::Result<()> {
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")
        };
        line(Event::Run(self.run.clone())).map_err(failed)?;
        for (producer, count) in self.sent.iter().enumerate() {
            line(Event::Sent {
                producer: producer as u32,
                count: *count,
            })
            .map_err(failed)?;
        }
        for ack in &self.acks {
            line(Event::Ack(*ack)).map_err(failed)?;
        }
        for failure in &self.failures {
            line(Event::Failed(failure.clone())).map_err(failed)?;
        }
        for commit in &self.commits {
            line(Event::Commit(*commit)).map_err(failed)?;
        }
        for observation in &self.observations {
            line(Event::Observed(observation.clone())).map_err(failed)?;
        }
        out.flush().map_err(failed)?;
        out.into_inner()
            .map_err(|e| failed(e.into_error()))?
            .sync_all()
            .map_err(failed)
    }

    /// Reads a history written by [`History::save`].
    pub fn load(path: &Path) -> Result<History, HistoryError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Read {
            path: name.clone(),
            source,
        })?;
        let parse_error = |line: usize, message: String| HistoryError::Parse {
            path: name.clone(),
            line,
            message,
        };
        let mut history: Option<History> = None;
        for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
            let number = index + 1;
            let line = line.map_err(|source| HistoryError::Read {
                path: name.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(&line).map_err(|e| parse_error(number, e.to_string()))?;
            let Some(h) = history.as_mut() else {
                match event {
                    Event::Run(run) => history = Some(History::new(run)),
                    _ => return Err(parse_error(number, "the first line must be the run".into())),
                }
                continue;
            };
            match event {
                Event::Run(_) => return Err(parse_error(number, "a second run line".into())),
                Event::Sent { producer, count } => match h.sent.get_mut(producer as usize) {
                    Some(slot) => *slot = count,
                    None => return Err(parse_error(number, format!("no producer {producer}"))),
                },
                Event::Ack(ack) => h.acks.push(ack),
                Event::Failed(failure) => h.failures.push(failure),
                Event::Commit(commit) => h.commits.push(commit),
                Event::Observed(observation) => h.observations.push(observation),
            }
        }
        history.ok_or_else(|| parse_error(0, "the file is empty".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_does_not_parse() {
        let value = record_value(0xabc, 3, 77);
        assert_eq!(value, "sv1:0000000000000abc:3:77");
        assert_eq!(parse_value(value.as_bytes()), Some((0xabc, 3, 77)));
        for bad in [
            &b"sv2:0000000000000abc:3:77"[..],
            b"sv1:abc:3:77",
            b"sv1:0000000000000abc:3",
            b"sv1:0000000000000abc:3:77:1",
            b"sv1:0000000000000abc:x:77",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(parse_value(bad), None, "{bad:?}");
        }
        assert_eq!(record_key(130, 64), "k2");
    }

    #[test]
    fn history_round_trips_through_json_lines() {
        let mut history = History::new(RunInfo {
            run_id: 7,
            topic: "t".into(),
            partitions: 4,
            producers: 2,
            keys: 64,
            group: "g".into(),
            seed: 1,
        });
        history.sent = vec![3, 1];
        history.acks.push(Ack {
            producer: 0,
            seq: 0,
            partition: 2,
            offset: 0,
            sent_tick: 1,
            ack_tick: 4,
        });
        history.failures.push(Failure {
            producer: 1,
            seq: 0,
            error: "timed out".into(),
        });
        history.commits.push(Commit {
            partition: 2,
            offset: 1,
            tick: 5,
        });
        history.observations.push(Observation {
            tick: 6,
            when: "after restart 1".into(),
            offsets: vec![(2, 1)],
        });
        let dir =
            std::env::temp_dir().join(format!("sluice-verify-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.jsonl");
        history.save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), history);
        std::fs::write(&path, "{\"kind\":\"sent\",\"producer\":0,\"count\":1}\n").unwrap();
        assert!(History::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
