//! Records of `__consumer_offsets`, in Kafka's own layout so Kafka tools can read them:
//!
//! - offset commit: key `OffsetCommitKey` v1 = (i16 1, group string, topic string,
//!   partition i32); value `OffsetCommitValue` v3 = (i16 3, offset i64, leader epoch
//!   i32, metadata string, commit timestamp i64). A null value deletes the offset.
//! - group metadata: key `GroupMetadataKey` v2 = (i16 2, group string); value
//!   `GroupMetadataValue` v3 = (i16 3, protocol type string, generation i32, protocol
//!   nullable string, leader nullable string, current state timestamp i64, members
//!   [member id, group instance id nullable, client id, client host, rebalance timeout
//!   i32, session timeout i32, subscription bytes, assignment bytes]). A null value
//!   deletes the group.
//!
//! Strings are i16-length-prefixed (-1 = null), bytes i32-length-prefixed.

use bytes::{BufMut, Bytes, BytesMut};

/// Java's `String.hashCode` over UTF-16 code units.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The `__consumer_offsets` partition of a group, exactly as Kafka computes it
/// (`Utils.abs(groupId.hashCode) % partitions`, where `abs(MIN_VALUE)` is 0).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = java_string_hash(group);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// A decoded record of the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        /// None: tombstone.
        value: Option<StoredOffset>,
    },
    Group {
        group: String,
        /// None: tombstone.
        value: Option<StoredGroup>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Lengths are bounded by the request decoder (i16 strings) and our own limits.
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    buf.put_i16(len);
    buf.put_slice(&s.as_bytes()[..len as usize]);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
    buf.put_slice(b);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

pub fn offset_value(value: &StoredOffset) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    buf.put_i64(value.offset);
    buf.put_i32(value.leader_epoch);
    put_string(&mut buf, &value.metadata);
    buf.put_i64(value.commit_timestamp_ms);
    buf.freeze()
}

pub fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(2);
    put_string(&mut buf, group);
    buf.freeze()
}

pub fn group_value(value: &StoredGroup) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    put_string(&mut buf, &value.protocol_type);
    buf.put_i32(value.generation);
    put_nullable_string(&mut buf, value.protocol.as_deref());
    put_nullable_string(&mut buf, value.leader.as_deref());
    buf.put_i64(value.state_timestamp_ms);
    buf.put_i32(i32::try_from(value.members.len()).unwrap_or(i32::MAX));
    for m in &value.members {
        put_string(&mut buf, &m.member_id);
        put_nullable_string(&mut buf, m.group_instance_id.as_deref());
        put_string(&mut buf, &m.client_id);
        put_string(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

/// A bounds-checked big-endian reader: every method returns None past the end.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub fn i16(&mut self) -> Option<i16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(i16::from_be_bytes)
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
    }

    /// A nullable string: Some(None) is null.
    pub fn string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        let bytes = self.take(usize::try_from(len).ok()?)?;
        Some(Some(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.i32()?;
        if len < 0 {
            return Some(Bytes::new());
        }
        self.take(usize::try_from(len).ok()?)
            .map(Bytes::copy_from_slice)
    }
}

/// Decodes one record of the offsets topic; None for anything unknown or malformed.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<StoredRecord> {
    let mut k = Reader::new(key);
    match k.i16()? {
        0 | 1 => {
            let group = k.string()??;
            let topic = k.string()??;
            let partition = k.i32()?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_offset_value(v)?),
            };
            Some(StoredRecord::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = k.string()??;
            let value = match value {
                None => None,
                Some(v) => Some(decode_group_value(v)?),
            };
            Some(StoredRecord::Group { group, value })
        }
        _ => None,
    }
}

fn decode_offset_value(value: &[u8]) -> Option<StoredOffset> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?.unwrap_or_default();
    let commit_timestamp_ms = r.i64()?;
    Some(StoredOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

fn decode_group_value(value: &[u8]) -> Option<StoredGroup> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    if version != 3 {
        return None;
    }
    let protocol_type = r.string()?.unwrap_or_default();
    let generation = r.i32()?;
    let protocol = r.string()?;
    let leader = r.string()?;
    let state_timestamp_ms = r.i64()?;
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count.clamp(0, 100_000) {
        members.push(StoredMember {
            member_id: r.string()?.unwrap_or_default(),
            group_instance_id: r.string()?,
            client_id: r.string()?.unwrap_or_default(),
            client_host: r.string()?.unwrap_or_default(),
            rebalance_timeout_ms: r.i32()?,
            session_timeout_ms: r.i32()?,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    Some(StoredGroup {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_kafka() {
        // Values computed with Java: Utils.abs("...".hashCode()) % 50.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        assert_eq!(partition_for("my-group", 50), 12);
        // Overflowing hashes wrap like Java ints, and abs keeps them non-negative.
        let p = partition_for("a-rather-long-consumer-group-name-ü", 50);
        assert!((0..50).contains(&p));
    }

    #[test]
    fn records_round_trip() {
        let offset = StoredOffset {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta ✓".to_string(),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        assert_eq!(
            decode(&offset_key("g", "t", 7), Some(&offset_value(&offset))),
            Some(StoredRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: Some(offset),
            })
        );
        let group = StoredGroup {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: None,
            state_timestamp_ms: 9,
            members: vec![StoredMember {
                member_id: "m".into(),
                subscription: Bytes::from_static(b"s"),
                ..Default::default()
            }],
        };
        assert_eq!(
            decode(&group_key("g"), Some(&group_value(&group))),
            Some(StoredRecord::Group {
                group: "g".into(),
                value: Some(group),
            })
        );
        assert_eq!(
            decode(&group_key("g"), None),
            Some(StoredRecord::Group {
                group: "g".into(),
                value: None
            })
        );
        // Garbage never panics.
        assert_eq!(decode(&[0, 1, 0x7f], None), None);
        assert_eq!(decode(&[], Some(&[1, 2])), None);
    }
}
