//! Partition choice compatible with the Java client, so records with the same key land on
//! the same partition whichever Kafka client (Java, librdkafka's `murmur2_random`, ours)
//! produced them: an explicit partition wins; a key is hashed with Java's `Utils.murmur2`;
//! keyless records are sticky (KIP-480): they stay on one partition until its batch is
//! sent, which makes fuller batches than round-robin.

/// Java's `org.apache.kafka.common.utils.Utils.murmur2`: 32-bit MurmurHash2 with seed
/// `0x9747b28c`, reading little-endian 4-byte blocks, returned as a signed `i32` like Java.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    // Java's switch falls through from 3 to 2 to 1.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Java's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on MIN).
pub fn to_positive(number: i32) -> i32 {
    number & 0x7fff_ffff
}

/// The partition the Java client (and librdkafka's `murmur2_random`) picks for `key`:
/// `toPositive(murmur2(key)) % partition_count`. `partition_count` must be positive.
pub fn partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    to_positive(murmur2(key)) % partition_count.max(1)
}

/// A small xorshift generator for the sticky partition choice: no dependency, and the
/// choice needs no cryptographic quality, only spread.
#[derive(Debug, Clone)]
pub(crate) struct StickyRandom {
    state: u64,
}

impl StickyRandom {
    pub(crate) fn new() -> StickyRandom {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x2545_f491_4f6c_dd1d);
        StickyRandom { state: nanos | 1 }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A partition in `0..partition_count` other than `previous` when there is a choice
    /// (KIP-480 moves on to a different partition when the sticky batch is sent).
    pub(crate) fn next_partition(&mut self, partition_count: i32, previous: Option<i32>) -> i32 {
        let count = partition_count.max(1) as u64;
        match previous {
            Some(previous) if count > 1 && (0..partition_count).contains(&previous) => {
                // One of the other count-1 partitions, uniformly.
                let step = 1 + self.next() % (count - 1);
                ((previous as u64 + step) % count) as i32
            }
            _ => (self.next() % count) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2` (clients/src/test/java/org/apache/
    /// kafka/common/utils/UtilsTest.java).
    #[test]
    fn murmur2_matches_kafkas_utils_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn key_partition_is_the_positive_hash_modulo_the_partition_count() {
        // toPositive(-790332482) = 1357151166; % 3 = 0, % 7 = 1357151166 % 7.
        assert_eq!(to_positive(-790_332_482), 1_357_151_166);
        assert_eq!(partition_for_key(b"foobar", 3), 1_357_151_166 % 3);
        assert_eq!(partition_for_key(b"foobar", 7), 1_357_151_166 % 7);
        assert_eq!(to_positive(i32::MIN), 0);
        for count in 1..20 {
            let p = partition_for_key(b"21", count);
            assert!((0..count).contains(&p));
        }
    }

    #[test]
    fn sticky_choice_moves_to_another_partition_when_it_can() {
        let mut random = StickyRandom::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut previous = None;
        for _ in 0..200 {
            let next = random.next_partition(4, previous);
            assert!((0..4).contains(&next));
            assert_ne!(Some(next), previous);
            seen.insert(next);
            previous = Some(next);
        }
        assert_eq!(seen.len(), 4, "every partition is eventually chosen");
        assert_eq!(random.next_partition(1, Some(0)), 0);
    }
}
