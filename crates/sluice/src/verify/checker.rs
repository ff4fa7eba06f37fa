//! The checker: given a run's [`History`] and everything read back from the topic (every
//! partition from offset 0 to its high watermark), proves or refutes
//! 1. every acknowledged record is present exactly once, at the offset its ack reported;
//! 2. acknowledged records keep their order: per producer and partition offsets grow with
//!    the sequence number, and a record acknowledged before another was sent sits at a
//!    lower offset of their partition;
//! 3. nothing was read that was never sent (malformed value, foreign run, unknown producer
//!    or sequence number, key or partition other than the one the record was sent with);
//! 4. no (producer, seq) is stored twice, acknowledged or not (idempotence);
//! 5. committed group offsets never go below a commit the broker acknowledged earlier,
//!    never decrease between observations and never exceed the high watermark.
//!
//! It is pure (no I/O) so that each kind of violation can be fed to it in unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use sluice_client::partitioner::partition_for_key;

use super::history::{parse_value, record_key, Ack, History};

/// Violations kept in full for the report (all are counted).
pub const VIOLATIONS_KEPT: usize = 1_000;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// One thing that should not have happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// An acknowledged record is not where its ack said (or nowhere).
    Lost {
        producer: u32,
        seq: u64,
        partition: i32,
        offset: i64,
        found: String,
    },
    /// The same (producer, seq) is stored more than once.
    Duplicated {
        producer: u32,
        seq: u64,
        copies: Vec<(i32, i64)>,
    },
    /// An acknowledged record sits before one it must follow.
    OutOfOrder {
        partition: i32,
        offset: i64,
        producer: u32,
        seq: u64,
        reason: String,
    },
    /// A record that was never sent in this form.
    Phantom {
        partition: i32,
        offset: i64,
        reason: String,
    },
    /// A committed offset went below one acknowledged or observed earlier.
    CommitRegression {
        partition: i32,
        when: String,
        observed: i64,
        expected_at_least: i64,
        reason: String,
    },
    /// A committed offset beyond the partition's high watermark.
    CommitBeyondHighWatermark {
        partition: i32,
        committed: i64,
        high_watermark: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost {
                producer,
                seq,
                partition,
                offset,
                found,
            } => write!(
                f,
                "lost: producer {producer} seq {seq} was acknowledged at partition \
                 {partition} offset {offset}, but {found}"
            ),
            Violation::Duplicated {
                producer,
                seq,
                copies,
            } => write!(
                f,
                "duplicated: producer {producer} seq {seq} is stored {} times at \
                 (partition, offset) {copies:?}",
                copies.len()
            ),
            Violation::OutOfOrder {
                partition,
                offset,
                producer,
                seq,
                reason,
            } => write!(
                f,
                "out of order: producer {producer} seq {seq} at partition {partition} \
                 offset {offset}: {reason}"
            ),
            Violation::Phantom {
                partition,
                offset,
                reason,
            } => write!(
                f,
                "phantom: partition {partition} offset {offset}: {reason}"
            ),
            Violation::CommitRegression {
                partition,
                when,
                observed,
                expected_at_least,
                reason,
            } => write!(
                f,
                "commit regression: partition {partition} {when}: committed offset \
                 {observed} < {expected_at_least} ({reason})"
            ),
            Violation::CommitBeyondHighWatermark {
                partition,
                committed,
                high_watermark,
            } => write!(
                f,
                "commit beyond the high watermark: partition {partition} committed \
                 {committed} > high watermark {high_watermark}"
            ),
        }
    }
}

/// What the checker counted, and the first [`VIOLATIONS_KEPT`] violations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub records_read: u64,
    /// Offset commits the broker acknowledged.
    pub commits: u64,
    /// Fetches of the committed offsets compared with them.
    pub observations: u64,
    pub lost: u64,
    /// Extra copies (a record stored twice counts 1).
    pub duplicated: u64,
    pub out_of_order: u64,
    pub phantom: u64,
    pub commit_regressions: u64,
    pub commits_beyond_high_watermark: u64,
    pub violations: Vec<Violation>,
}

impl CheckReport {
    pub fn violation_count(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.phantom
            + self.commit_regressions
            + self.commits_beyond_high_watermark
    }

    pub fn is_clean(&self) -> bool {
        self.violation_count() == 0
    }

    fn push(&mut self, violation: Violation) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(violation);
        }
    }
}

/// Checks `history` against `reads` (every record of every partition from offset 0 to
/// `high_watermarks`). The last observation of committed offsets is compared with the
/// high watermarks.
pub fn check(
    history: &History,
    reads: &[ReadRecord],
    high_watermarks: &BTreeMap<i32, i64>,
) -> CheckReport {
    let run = &history.run;
    let mut report = CheckReport {
        sent: history.sent.iter().sum(),
        acked: history.acks.len() as u64,
        failed: history.failures.len() as u64,
        records_read: reads.len() as u64,
        commits: history.commits.len() as u64,
        observations: history.observations.len() as u64,
        ..CheckReport::default()
    };

    // 3. Phantoms, and an index of what is where.
    let mut at: HashMap<(i32, i64), (u32, u64)> = HashMap::with_capacity(reads.len());
    let mut copies: HashMap<(u32, u64), Vec<(i32, i64)>> = HashMap::with_capacity(reads.len());
    let mut phantoms: BTreeSet<(i32, i64)> = BTreeSet::new();
    for read in reads {
        let phantom = |reason: String| Violation::Phantom {
            partition: read.partition,
            offset: read.offset,
            reason,
        };
        let Some(value) = read.value.as_deref() else {
            phantoms.insert((read.partition, read.offset));
            report.phantom += 1;
            report.push(phantom("a record without a value".into()));
            continue;
        };
        let Some((run_id, producer, seq)) = parse_value(value) else {
            phantoms.insert((read.partition, read.offset));
            report.phantom += 1;
            report.push(phantom(format!(
                "malformed value {:?}",
                String::from_utf8_lossy(&value[..value.len().min(64)])
            )));
            continue;
        };
        let sent = history.sent.get(producer as usize).copied();
        let reason = if run_id != run.run_id {
            Some(format!("run id {run_id:016x} is not this run's"))
        } else if sent.is_none() {
            Some(format!("there is no producer {producer}"))
        } else if sent.is_some_and(|sent| seq >= sent) {
            Some(format!("producer {producer} never sent seq {seq}"))
        } else {
            let key = record_key(seq, run.keys);
            if read.key.as_deref() != Some(key.as_bytes()) {
                Some(format!(
                    "producer {producer} seq {seq} was sent with key {key}, read with {:?}",
                    read.key.as_deref().map(String::from_utf8_lossy)
                ))
            } else {
                let expected = partition_for_key(key.as_bytes(), run.partitions);
                (expected != read.partition).then(|| {
                    format!("producer {producer} seq {seq} belongs to partition {expected}")
                })
            }
        };
        if let Some(reason) = reason {
            phantoms.insert((read.partition, read.offset));
            report.phantom += 1;
            report.push(phantom(reason));
            continue;
        }
        at.insert((read.partition, read.offset), (producer, seq));
        copies
            .entry((producer, seq))
            .or_default()
            .push((read.partition, read.offset));
    }

    // 4. Duplicates.
    let mut duplicated: Vec<_> = copies
        .iter()
        .filter(|(_, places)| places.len() > 1)
        .collect();
    duplicated.sort();
    for (&(producer, seq), places) in duplicated {
        report.duplicated += places.len() as u64 - 1;
        report.push(Violation::Duplicated {
            producer,
            seq,
            copies: places.clone(),
        });
    }

    // 1. Every acknowledged record where its ack says.
    for ack in &history.acks {
        let found = if ack.offset < 0 {
            // A duplicate answer without the original offset: it must be in its
            // partition somewhere.
            let present = copies
                .get(&(ack.producer, ack.seq))
                .is_some_and(|places| places.iter().any(|(p, _)| *p == ack.partition));
            (!present).then(|| "it is not in the partition".to_string())
        } else {
            match at.get(&(ack.partition, ack.offset)) {
                Some(&(producer, seq)) if (producer, seq) == (ack.producer, ack.seq) => None,
                Some(&(producer, seq)) => {
                    Some(format!("that offset holds producer {producer} seq {seq}"))
                }
                None => {
                    let high_watermark = high_watermarks.get(&ack.partition).copied();
                    Some(match high_watermark {
                        Some(hw) if ack.offset >= hw => {
                            format!("the high watermark is {hw}")
                        }
                        None => "the partition does not exist".to_string(),
                        Some(_) if phantoms.contains(&(ack.partition, ack.offset)) => {
                            "that offset holds a phantom record".to_string()
                        }
                        Some(_) => "no record was read at that offset".to_string(),
                    })
                }
            }
        };
        if let Some(found) = found {
            report.lost += 1;
            report.push(Violation::Lost {
                producer: ack.producer,
                seq: ack.seq,
                partition: ack.partition,
                offset: ack.offset,
                found,
            });
        }
    }

    // 2. Order of acknowledged records.
    let mut misordered: BTreeMap<(i32, i64), Violation> = BTreeMap::new();
    let mut by_stream: BTreeMap<(i32, u32), Vec<&Ack>> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&Ack>> = BTreeMap::new();
    for ack in history.acks.iter().filter(|a| a.offset >= 0) {
        by_stream
            .entry((ack.partition, ack.producer))
            .or_default()
            .push(ack);
        by_partition.entry(ack.partition).or_default().push(ack);
    }
    for ((partition, producer), mut acks) in by_stream {
        acks.sort_by_key(|a| a.seq);
        for pair in acks.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if later.offset <= earlier.offset {
                misordered
                    .entry((partition, later.offset))
                    .or_insert(Violation::OutOfOrder {
                        partition,
                        offset: later.offset,
                        producer,
                        seq: later.seq,
                        reason: format!(
                            "seq {} of the same producer is at offset {}",
                            earlier.seq, earlier.offset
                        ),
                    });
            }
        }
    }
    for (partition, mut acks) in by_partition {
        acks.sort_by_key(|a| a.ack_tick);
        // prefix_max[i]: the highest offset among the first i acks (by ack tick).
        let mut prefix_max: Vec<Option<&Ack>> = Vec::with_capacity(acks.len() + 1);
        prefix_max.push(None);
        for ack in &acks {
            let best = match prefix_max.last().copied().flatten() {
                Some(best) if best.offset >= ack.offset => best,
                _ => ack,
            };
            prefix_max.push(Some(best));
        }
        for ack in &acks {
            let acked_before = acks.partition_point(|a| a.ack_tick < ack.sent_tick);
            if let Some(earlier) = prefix_max[acked_before] {
                if earlier.offset >= ack.offset {
                    misordered
                        .entry((partition, ack.offset))
                        .or_insert(Violation::OutOfOrder {
                            partition,
                            offset: ack.offset,
                            producer: ack.producer,
                            seq: ack.seq,
                            reason: format!(
                                "producer {} seq {} at offset {} was acknowledged before \
                                 this record was sent",
                                earlier.producer, earlier.seq, earlier.offset
                            ),
                        });
                }
            }
        }
    }
    report.out_of_order = misordered.len() as u64;
    for violation in misordered.into_values() {
        report.push(violation);
    }

    // 5. Committed offsets.
    let mut commits = history.commits.clone();
    commits.sort_by_key(|c| c.tick);
    let mut acked_max: BTreeMap<i32, i64> = BTreeMap::new();
    let mut next_commit = 0;
    let mut previous: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    let mut observations: Vec<_> = history.observations.iter().collect();
    observations.sort_by_key(|o| o.tick);
    for observation in &observations {
        while next_commit < commits.len() && commits[next_commit].tick < observation.tick {
            let commit = commits[next_commit];
            let best = acked_max.entry(commit.partition).or_insert(commit.offset);
            *best = (*best).max(commit.offset);
            next_commit += 1;
        }
        let observed: BTreeMap<i32, i64> = observation.offsets.iter().copied().collect();
        let partitions: BTreeSet<i32> = acked_max
            .keys()
            .chain(previous.keys())
            .chain(observed.keys())
            .copied()
            .collect();
        for partition in partitions {
            let now = observed.get(&partition).copied().unwrap_or(-1);
            let acked = acked_max.get(&partition).copied().unwrap_or(-1);
            let (before, before_when) = previous
                .get(&partition)
                .cloned()
                .unwrap_or((-1, String::new()));
            let regression = if now < acked {
                Some((acked, "the broker had acknowledged that commit".to_string()))
            } else if now < before {
                Some((before, format!("it was observed {before_when}")))
            } else {
                None
            };
            if let Some((expected_at_least, reason)) = regression {
                report.commit_regressions += 1;
                report.push(Violation::CommitRegression {
                    partition,
                    when: observation.when.clone(),
                    observed: now,
                    expected_at_least,
                    reason,
                });
            }
            if now >= 0 {
                previous.insert(partition, (now, observation.when.clone()));
            }
        }
    }
    if let Some(last) = observations.last() {
        for &(partition, committed) in &last.offsets {
            let high_watermark = high_watermarks.get(&partition).copied().unwrap_or(0);
            if committed > high_watermark {
                report.commits_beyond_high_watermark += 1;
                report.push(Violation::CommitBeyondHighWatermark {
                    partition,
                    committed,
                    high_watermark,
                });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::super::history::{record_value, Commit, Observation, RunInfo};
    use super::*;

    const RUN: u64 = 0x5eed;

    fn run_info() -> RunInfo {
        RunInfo {
            run_id: RUN,
            topic: "t".into(),
            partitions: 3,
            producers: 2,
            keys: 8,
            group: "g".into(),
            seed: 1,
        }
    }

    /// A clean history: two producers, `per_producer` records each, all acknowledged in
    /// a plausible interleaving, the log holding exactly them; the consumer committed
    /// each partition's end and the observation saw it.
    fn clean(per_producer: u64) -> (History, Vec<ReadRecord>, BTreeMap<i32, i64>) {
        let mut history = History::new(run_info());
        history.sent = vec![per_producer; 2];
        let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
        let mut reads = Vec::new();
        let mut tick = 0;
        for seq in 0..per_producer {
            for producer in 0..2 {
                let key = record_key(seq, 8);
                let partition = partition_for_key(key.as_bytes(), 3);
                let offset = next_offset.entry(partition).or_insert(0);
                history.acks.push(Ack {
                    producer,
                    seq,
                    partition,
                    offset: *offset,
                    sent_tick: tick,
                    ack_tick: tick + 1,
                });
                tick += 2;
                reads.push(ReadRecord {
                    partition,
                    offset: *offset,
                    key: Some(key.into_bytes()),
                    value: Some(record_value(RUN, producer, seq).into_bytes()),
                });
                *offset += 1;
            }
        }
        for (&partition, &end) in &next_offset {
            history.commits.push(Commit {
                partition,
                offset: end,
                tick,
            });
        }
        history.observations.push(Observation {
            tick: tick + 1,
            when: "at the end".into(),
            offsets: next_offset.iter().map(|(p, o)| (*p, *o)).collect(),
        });
        (history, reads, next_offset)
    }

    #[test]
    fn a_clean_history_passes() {
        let (history, reads, hw) = clean(20);
        let report = check(&history, &reads, &hw);
        assert!(report.is_clean(), "{:?}", report.violations);
        assert_eq!(report.acked, 40);
        assert_eq!(report.records_read, 40);
        assert_eq!(report.sent, 40);
    }

    #[test]
    fn unacknowledged_records_may_be_missing_or_present_once() {
        let (mut history, mut reads, hw) = clean(10);
        // The last ack never arrived (the record is in the log) ...
        history.acks.pop();
        // ... and a record that was sent but never written is simply absent.
        history.sent[0] += 1;
        let report = check(&history, &reads, &hw);
        assert!(report.is_clean(), "{:?}", report.violations);
        reads.pop();
        let report = check(&history, &reads, &hw);
        assert!(report.is_clean(), "{:?}", report.violations);
    }

    #[test]
    fn a_missing_acknowledged_record_is_lost() {
        let (history, mut reads, mut hw) = clean(10);
        // Truncated tail: the last record of a partition is gone and the HW moved back.
        let last = reads.pop().unwrap();
        hw.insert(last.partition, last.offset);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.lost, 1, "{:?}", report.violations);
        assert!(matches!(report.violations[0], Violation::Lost { .. }));
        // A hole in the middle.
        let (history, mut reads, hw) = clean(10);
        reads.remove(3);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.lost, 1);
    }

    #[test]
    fn a_record_at_another_offset_is_lost_and_misplaced() {
        let (history, mut reads, hw) = clean(10);
        // Two records of partition p swapped: both acks point at the other record.
        let p = reads[0].partition;
        let positions: Vec<usize> = (0..reads.len())
            .filter(|&i| reads[i].partition == p)
            .collect();
        let (a, b) = (positions[0], positions[1]);
        let offset_a = reads[a].offset;
        reads[a].offset = reads[b].offset;
        reads[b].offset = offset_a;
        let report = check(&history, &reads, &hw);
        assert_eq!(report.lost, 2, "{:?}", report.violations);
    }

    #[test]
    fn a_second_copy_is_a_duplicate_acknowledged_or_not() {
        let (history, mut reads, mut hw) = clean(10);
        let mut copy = reads[4].clone();
        copy.offset = hw[&copy.partition];
        hw.insert(copy.partition, copy.offset + 1);
        reads.push(copy);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.duplicated, 1, "{:?}", report.violations);
        assert_eq!(report.lost, 0);
        // Unacknowledged records must not be duplicated either.
        let (mut history, mut reads, mut hw) = clean(10);
        history.acks.retain(|a| !(a.producer == 1 && a.seq == 9));
        let mut copy = reads.last().unwrap().clone();
        copy.offset = hw[&copy.partition];
        hw.insert(copy.partition, copy.offset + 1);
        reads.push(copy);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.duplicated, 1, "{:?}", report.violations);
    }

    #[test]
    fn records_never_sent_are_phantoms() {
        let (history, reads, mut hw) = clean(5);
        let partition = partition_for_key(b"k1", 3);
        let mut add = |key: &str, value: Vec<u8>, reads: &mut Vec<ReadRecord>| {
            let offset = hw[&partition];
            hw.insert(partition, offset + 1);
            reads.push(ReadRecord {
                partition,
                offset,
                key: Some(key.as_bytes().to_vec()),
                value: Some(value),
            });
        };
        let mut bad = reads.clone();
        add("k1", b"garbage".to_vec(), &mut bad);
        add("k1", record_value(RUN + 1, 0, 1).into_bytes(), &mut bad);
        add("k1", record_value(RUN, 7, 1).into_bytes(), &mut bad);
        add("k1", record_value(RUN, 0, 9).into_bytes(), &mut bad);
        add("k2", record_value(RUN, 0, 1).into_bytes(), &mut bad);
        let report = check(&history, &bad, &hw);
        assert_eq!(report.phantom, 5, "{:?}", report.violations);
        assert_eq!(report.lost + report.duplicated + report.out_of_order, 0);
    }

    #[test]
    fn a_record_on_the_wrong_partition_is_a_phantom() {
        let (history, mut reads, hw) = clean(5);
        let unacked = ReadRecord {
            partition: (reads[0].partition + 1) % 3,
            offset: 1_000,
            ..reads[0].clone()
        };
        reads.push(unacked);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.phantom, 1, "{:?}", report.violations);
    }

    #[test]
    fn offsets_against_sequence_order_are_out_of_order() {
        let (mut history, mut reads, hw) = clean(10);
        // Swap two records of the same producer and partition in the log and in the acks
        // (so nothing is lost): the later seq now has the lower offset.
        let first = history.acks.iter().position(|a| a.producer == 0).unwrap();
        let partition = history.acks[first].partition;
        let second = history
            .acks
            .iter()
            .position(|a| {
                a.producer == 0 && a.partition == partition && a.seq > history.acks[first].seq
            })
            .unwrap();
        let (o1, o2) = (history.acks[first].offset, history.acks[second].offset);
        history.acks[first].offset = o2;
        history.acks[second].offset = o1;
        for read in reads.iter_mut().filter(|r| r.partition == partition) {
            if read.offset == o1 {
                read.offset = o2;
            } else if read.offset == o2 {
                read.offset = o1;
            }
        }
        let report = check(&history, &reads, &hw);
        assert!(report.out_of_order >= 1, "{:?}", report.violations);
        assert_eq!(report.lost + report.duplicated + report.phantom, 0);
    }

    #[test]
    fn a_record_acknowledged_first_must_come_first_across_producers() {
        let (mut history, reads, hw) = clean(10);
        // Producer 1's seq 0 was sent only after producer 0's seq 8 was acknowledged, yet
        // it sits at an earlier offset in the same partition.
        let a = history
            .acks
            .iter()
            .position(|a| a.producer == 1 && a.seq == 0)
            .unwrap();
        let partition = history.acks[a].partition;
        let later = history
            .acks
            .iter()
            .filter(|x| {
                x.partition == partition && x.producer == 0 && x.offset > history.acks[a].offset
            })
            .map(|x| x.ack_tick)
            .max()
            .unwrap();
        history.acks[a].sent_tick = later + 1;
        history.acks[a].ack_tick = later + 2;
        let report = check(&history, &reads, &hw);
        assert_eq!(report.out_of_order, 1, "{:?}", report.violations);
        // Concurrent sends (sent before the other's ack) may land in either order.
        let (mut history, reads, hw) = clean(10);
        for ack in &mut history.acks {
            ack.sent_tick = 0;
        }
        assert!(check(&history, &reads, &hw).is_clean());
    }

    #[test]
    fn committed_offsets_going_back_are_regressions() {
        let (mut history, reads, hw) = clean(10);
        let partition = history.observations[0].offsets[0].0;
        let tick = history.observations[0].tick;
        // After a restart the broker returns an older commit than it acknowledged.
        history.observations.push(Observation {
            tick: tick + 1,
            when: "after restart 1".into(),
            offsets: history.observations[0]
                .offsets
                .iter()
                .map(|&(p, o)| if p == partition { (p, o - 2) } else { (p, o) })
                .collect(),
        });
        let report = check(&history, &reads, &hw);
        assert_eq!(report.commit_regressions, 1, "{:?}", report.violations);
        // A commit lost entirely (no offset at all) is a regression too.
        let (mut history, reads, hw) = clean(10);
        history.observations[0]
            .offsets
            .retain(|&(p, _)| p != partition);
        let report = check(&history, &reads, &hw);
        assert_eq!(report.commit_regressions, 1, "{:?}", report.violations);
        // A commit acknowledged after the observation started need not be in it.
        let (mut history, reads, hw) = clean(10);
        history.commits.push(Commit {
            partition,
            offset: 1_000,
            tick: tick + 5,
        });
        assert!(check(&history, &reads, &hw).is_clean());
    }

    #[test]
    fn a_commit_beyond_the_high_watermark_is_reported() {
        let (mut history, reads, hw) = clean(10);
        let last = history.observations.len() - 1;
        let (partition, offset) = history.observations[last].offsets[0];
        history.observations[last].offsets[0] = (partition, offset + 5);
        let report = check(&history, &reads, &hw);
        assert_eq!(
            report.commits_beyond_high_watermark, 1,
            "{:?}",
            report.violations
        );
        assert_eq!(report.commit_regressions, 0);
    }
}
