//! The commit watermark of one partition: which offsets were handed to the processor and
//! are not finished yet. The offset to commit is the lowest unfinished one (everything
//! below it is done), or one past the last submitted when all are done, so a commit never
//! passes a record still in flight.

use std::collections::BTreeSet;

/// Offsets of one partition submitted and not yet finished.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    /// One past the highest offset submitted.
    next: Option<i64>,
}

/// An offset submitted at or below one already submitted for the same partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetNotIncreasing {
    pub offset: i64,
    pub next_expected_at_least: i64,
}

impl OffsetTracker {
    /// Records `offset` as in progress. Offsets must increase: gaps are fine (compacted
    /// or transaction-marker offsets never reach the processor), going back is not.
    pub fn submit(&mut self, offset: i64) -> Result<(), OffsetNotIncreasing> {
        if let Some(next) = self.next {
            if offset < next {
                return Err(OffsetNotIncreasing {
                    offset,
                    next_expected_at_least: next,
                });
            }
        }
        self.pending.insert(offset);
        self.next = Some(offset.saturating_add(1));
        Ok(())
    }

    /// Records `offset` as finished (handled, dead-lettered or deduplicated). Returns false
    /// when it was not in progress.
    pub fn complete(&mut self, offset: i64) -> bool {
        self.pending.remove(&offset)
    }

    /// The offset to commit: the lowest unfinished offset, else one past the last submitted;
    /// `None` before anything was submitted.
    pub fn committable(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    /// Offsets in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn committable_is_the_lowest_unfinished_offset() {
        let mut tracker = OffsetTracker::default();
        assert_eq!(tracker.committable(), None);
        for offset in [5, 6, 9] {
            tracker.submit(offset).unwrap();
        }
        assert_eq!(tracker.committable(), Some(5));
        assert!(tracker.complete(6));
        assert_eq!(tracker.committable(), Some(5));
        assert!(tracker.complete(5));
        assert_eq!(tracker.committable(), Some(9));
        assert!(!tracker.complete(5));
        assert!(tracker.complete(9));
        assert_eq!(tracker.committable(), Some(10));
        assert_eq!(
            tracker.submit(7),
            Err(OffsetNotIncreasing {
                offset: 7,
                next_expected_at_least: 10
            })
        );
    }

    proptest! {
        /// Whatever order offsets finish in, the committable offset never passes an
        /// unfinished one, never goes back, and ends one past the last.
        #[test]
        fn committable_never_passes_an_unfinished_offset(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut tracker = OffsetTracker::default();
            let mut offsets = Vec::new();
            let mut offset = 100;
            for gap in gaps {
                offset += gap;
                tracker.submit(offset).unwrap();
                offsets.push(offset);
            }
            let last = offset;
            let mut unfinished = offsets.clone();
            let mut previous = tracker.committable().unwrap();
            for index in order {
                if unfinished.is_empty() {
                    break;
                }
                let done = unfinished.remove(index.index(unfinished.len()));
                prop_assert!(tracker.complete(done));
                let committable = tracker.committable().unwrap();
                prop_assert!(committable >= previous);
                prop_assert!(unfinished.iter().all(|o| committable <= *o));
                previous = committable;
            }
            for done in unfinished {
                tracker.complete(done);
            }
            prop_assert_eq!(tracker.committable(), Some(last + 1));
            prop_assert_eq!(tracker.pending(), 0);
        }
    }
}
