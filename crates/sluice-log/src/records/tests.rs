use super::*;
use crate::testing::{encode_batch, encode_records, recode_batch, TestCompression};
use crate::{Log, LogConfig};
use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use proptest::prelude::*;

const MAX: usize = 1 << 20;
const ALL_CODECS: [CompressionType; 5] = [
    CompressionType::None,
    CompressionType::Gzip,
    CompressionType::Snappy,
    CompressionType::Lz4,
    CompressionType::Zstd,
];

fn plain() -> BatchPolicy {
    BatchPolicy::new(MAX)
}

fn test_compression(codec: CompressionType) -> TestCompression {
    match codec {
        CompressionType::None => TestCompression::None,
        CompressionType::Gzip => TestCompression::Gzip,
        CompressionType::Snappy => TestCompression::Snappy,
        CompressionType::Lz4 => TestCompression::Lz4,
        CompressionType::Zstd => TestCompression::Zstd,
    }
}

fn decode(batch: &[u8]) -> Vec<Record> {
    let mut bytes = Bytes::copy_from_slice(batch);
    RecordBatchDecoder::decode(&mut bytes).unwrap().records
}

/// Records that exercise every field: null and empty keys and values, headers with null
/// values, increasing and decreasing timestamps, a producer id and sequence, transactional.
fn rich_records(transactional: bool) -> Vec<Record> {
    (0..7)
        .map(|i| {
            let mut headers = IndexMap::new();
            if i % 2 == 0 {
                headers.insert(
                    StrBytes::from_string(format!("h{i}")),
                    Some(Bytes::from("hv")),
                );
                headers.insert(StrBytes::from_static_str("null"), None);
            }
            Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 4242,
                producer_epoch: 3,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i,
                sequence: 17 + i as i32,
                timestamp: 1_700_000_000_000 + [5, 1, 9, 3, 2, 8, 0][i as usize],
                key: match i {
                    3 => Some(Bytes::new()),
                    _ => Some(Bytes::from(format!("key-{i}"))),
                },
                value: match i {
                    2 => None,
                    4 => Some(Bytes::new()),
                    _ => Some(Bytes::from(vec![b'a' + i as u8; 100 * i as usize])),
                },
                headers,
            }
        })
        .collect()
}

#[test]
fn every_codec_validates_in_place_without_touching_the_bytes() {
    for codec in ALL_CODECS {
        let sent = encode_batch(&[10, 30, 20], 200, test_compression(codec));
        let mut batch = sent.clone();
        let prepared = prepare_batch(&mut batch, &plain(), 99).unwrap();
        assert_eq!(batch, sent, "{codec:?}");
        assert!(!prepared.rewritten && !prepared.recompressed, "{codec:?}");
        assert_eq!(prepared.log_append_time_ms, None);
        assert_eq!(prepared.header.max_timestamp, 30, "{codec:?}");
        assert_eq!(
            CompressionType::from_attributes(prepared.header.attributes).unwrap(),
            codec
        );
    }
}

#[test]
fn snappy_is_accepted_in_both_framings() {
    let plain_batch = encode_batch(&[1, 2, 3], 5000, TestCompression::None);
    let records = &plain_batch[BATCH_HEADER_BYTES..];
    // Raw snappy, as librdkafka sends it.
    let raw = snap::raw::Encoder::new().compress_vec(records).unwrap();
    let mut raw_batch = recode_batch(&plain_batch, 2, &raw);
    prepare_batch(&mut raw_batch, &plain(), 0).unwrap();
    assert_eq!(decode(&raw_batch), decode(&plain_batch));
    // xerial framing, as the Java client sends it (several 32 KiB blocks here).
    let big = encode_batch(&[1; 20], 5000, TestCompression::None);
    let xerial = compress(CompressionType::Snappy, &big[BATCH_HEADER_BYTES..]).unwrap();
    assert_eq!(&xerial[..8], b"\x82SNAPPY\x00");
    let mut xerial_batch = recode_batch(&big, 2, &xerial);
    prepare_batch(&mut xerial_batch, &plain(), 0).unwrap();
    assert_eq!(decode(&xerial_batch), decode(&big));
    assert_eq!(
        decompress(CompressionType::Snappy, &xerial, MAX).unwrap(),
        &big[BATCH_HEADER_BYTES..]
    );
}

#[test]
fn truncated_or_garbage_compressed_payloads_are_corrupt() {
    for codec in &ALL_CODECS[1..] {
        let good = encode_batch(&[1, 2, 3], 300, test_compression(*codec));
        let payload = &good[BATCH_HEADER_BYTES..];
        let bits = codec.attribute_bits();
        let truncated = recode_batch(&good, bits, &payload[..payload.len() / 2]);
        let garbage = recode_batch(
            &good,
            bits,
            b"this is not compressed at all, not in any codec",
        );
        let empty = recode_batch(&good, bits, b"");
        for (name, mut batch) in [
            ("truncated", truncated),
            ("garbage", garbage),
            ("empty", empty),
        ] {
            let result = prepare_batch(&mut batch, &plain(), 0);
            assert!(
                matches!(result, Err(LogError::CorruptBatch(_))),
                "{codec:?} {name}: {result:?}"
            );
        }
    }
}

#[test]
fn a_compression_bomb_is_refused_before_it_inflates() {
    // 16 KiB max.message.bytes allows 1 MiB (the floor) of records; this one record is 2 MiB
    // of zeros, a few kilobytes compressed.
    let policy = BatchPolicy::new(16 * 1024);
    assert_eq!(
        decompressed_limit_bytes(16 * 1024),
        DECOMPRESSED_BYTES_FLOOR
    );
    let mut bomb_records = encode_records(
        &[Record {
            value: Some(Bytes::from(vec![0u8; 2 << 20])),
            ..rich_records(false)[0].clone()
        }],
        TestCompression::None,
    );
    bomb_records.drain(..BATCH_HEADER_BYTES);
    let template = encode_batch(&[0], 1, TestCompression::None);
    for codec in &ALL_CODECS[1..] {
        let payload = compress(*codec, &bomb_records).unwrap();
        let limit = decompressed_limit_bytes(16 * 1024);
        let result = decompress(*codec, &payload, limit);
        assert!(
            matches!(&result, Err(LogError::InvalidBatch(m)) if m.contains("decompress to more")),
            "{codec:?}: {result:?}"
        );
        if *codec == CompressionType::Snappy {
            // Snappy cannot exceed ~21:1, so a batch under the limit never inflates past it.
            continue;
        }
        assert!(payload.len() < 16 * 1024, "{codec:?}: {}", payload.len());
        let mut batch = recode_batch(&template, codec.attribute_bits(), &payload);
        let result = prepare_batch(&mut batch, &policy, 0);
        assert!(
            matches!(&result, Err(LogError::InvalidBatch(m)) if m.contains("decompress to more")),
            "{codec:?}: {result:?}"
        );
    }
    assert_eq!(decompressed_limit_bytes(usize::MAX), DECOMPRESSED_BYTES_CAP);
    assert_eq!(decompressed_limit_bytes(1 << 20), 64 << 20);
}

#[test]
fn invalid_codec_bits_are_rejected() {
    for bits in 5..=7 {
        let mut batch = encode_batch(&[1], 10, TestCompression::None);
        let body = batch[BATCH_HEADER_BYTES..].to_vec();
        batch = recode_batch(&batch, bits, &body);
        assert!(matches!(
            prepare_batch(&mut batch, &plain(), 0),
            Err(LogError::InvalidBatch(_))
        ));
    }
}

fn with_count(batch: &[u8], count: i32) -> Vec<u8> {
    let mut bytes = batch.to_vec();
    bytes[57..61].copy_from_slice(&count.to_be_bytes());
    bytes[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    let crc = crc32c::crc32c(&bytes[CRC_START..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn a_lying_record_count_is_corrupt_for_every_codec() {
    for codec in ALL_CODECS {
        let good = encode_batch(&[1, 2, 3], 10, test_compression(codec));
        for count in [1, 2, 4, 1000, i32::MAX] {
            let mut batch = with_count(&good, count);
            let result = prepare_batch(&mut batch, &plain(), 0);
            assert!(
                matches!(result, Err(LogError::CorruptBatch(_))),
                "{codec:?} count {count}: {result:?}"
            );
        }
    }
}

#[test]
fn offset_deltas_must_count_from_zero() {
    for deltas in [[0, 2, 1], [1, 2, 3], [0, 0, 1]] {
        let records: Vec<Record> = rich_records(false)
            .into_iter()
            .take(3)
            .zip(deltas)
            .map(|(record, delta)| Record {
                offset: delta,
                ..record
            })
            .collect();
        // Encode each record on its own and splice their bytes under one header, so the
        // deltas are what we say and not what an encoder would fix.
        let mut body = Vec::new();
        for record in &records {
            let one = encode_records(
                &[Record {
                    offset: 0,
                    ..record.clone()
                }],
                TestCompression::None,
            );
            let mut bytes = one[BATCH_HEADER_BYTES..].to_vec();
            // varint length (1 byte for these small records), attributes, timestamp delta
            // varlong (1 byte: 0), then the offset delta varint at [3].
            assert_eq!(bytes[3], 0);
            bytes[3] = (record.offset as u8) << 1;
            body.extend_from_slice(&bytes);
        }
        let template = encode_records(&records[..1], TestCompression::None);
        let mut batch = with_count(&recode_batch(&template, 0, &body), 3);
        let result = prepare_batch(&mut batch, &plain(), 0);
        assert!(
            matches!(&result, Err(LogError::InvalidBatch(m)) if m.contains("offset delta")),
            "{deltas:?}: {result:?}"
        );
    }
}

#[test]
fn trailing_bytes_and_broken_framing_are_corrupt() {
    let good = encode_batch(&[1, 2], 10, TestCompression::None);
    let body = &good[BATCH_HEADER_BYTES..];
    let mut trailing = body.to_vec();
    trailing.push(0);
    let mut short_record = body.to_vec();
    short_record[0] = 2; // first record says it is 1 byte long
    let mut negative_length = body.to_vec();
    negative_length[0] = 1; // zigzag -1
    for mut batch in [
        recode_batch(&good, 0, &trailing),
        recode_batch(&good, 0, &short_record),
        recode_batch(&good, 0, &negative_length),
        recode_batch(&good, 0, &body[..body.len() - 1]),
    ] {
        let result = prepare_batch(&mut batch, &plain(), 0);
        assert!(
            matches!(result, Err(LogError::CorruptBatch(_))),
            "{result:?}"
        );
    }
}

#[test]
fn keyless_records_are_refused_on_compacted_topics_with_their_indexes() {
    let mut records = rich_records(false);
    records[1].key = None;
    records[4].key = None;
    let compacted = BatchPolicy {
        require_keys: true,
        ..plain()
    };
    for codec in ALL_CODECS {
        let sent = encode_records(&records, test_compression(codec));
        let mut batch = sent.clone();
        match prepare_batch(&mut batch, &compacted, 0) {
            Err(LogError::InvalidRecords {
                message,
                batch_indexes,
            }) => {
                assert_eq!(message, KEYLESS_ON_COMPACTED_MESSAGE);
                assert_eq!(batch_indexes, vec![1, 4]);
            }
            other => panic!("{codec:?}: {other:?}"),
        }
        // The same batch is fine on a topic that is not compacted, and keyed batches are
        // fine on a compacted one.
        prepare_batch(&mut batch, &plain(), 0).unwrap();
        let mut keyed = encode_records(&rich_records(false), test_compression(codec));
        prepare_batch(&mut keyed, &compacted, 0).unwrap();
    }
}

#[test]
fn recompression_round_trips_records_exactly_between_every_pair_of_codecs() {
    for transactional in [false, true] {
        let records = rich_records(transactional);
        for from in ALL_CODECS {
            let sent = encode_records(&records, test_compression(from));
            let sent_header = BatchHeader::parse(&sent).unwrap();
            for to in ALL_CODECS {
                let policy = BatchPolicy {
                    compression: Some(to),
                    ..plain()
                };
                let mut batch = sent.clone();
                let prepared = prepare_batch(&mut batch, &policy, 0).unwrap();
                assert_eq!(prepared.recompressed, from != to, "{from:?} -> {to:?}");
                let header = validate_for_append(&batch, MAX).unwrap();
                assert_eq!(header, prepared.header);
                assert_eq!(
                    CompressionType::from_attributes(header.attributes).unwrap(),
                    to
                );
                assert_eq!(
                    header.attributes & !ATTRIBUTE_COMPRESSION_MASK,
                    sent_header.attributes & !ATTRIBUTE_COMPRESSION_MASK
                );
                assert_eq!(header.producer_id, 4242);
                assert_eq!(header.producer_epoch, 3);
                assert_eq!(header.base_sequence, 17);
                assert_eq!(header.base_timestamp, sent_header.base_timestamp);
                assert_eq!(header.max_timestamp, sent_header.max_timestamp);
                assert_eq!(header.records_count, 7);
                let decoded = decode(&batch);
                assert_eq!(decoded, decode(&sent), "{from:?} -> {to:?}");
                assert_eq!(decoded, records);
                if from == to {
                    assert_eq!(batch, sent);
                }
            }
        }
    }
}

#[test]
fn recompression_respects_the_stored_size_limit() {
    // Incompressible values: gzip adds a little, so a batch at the limit no longer fits.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let values: Vec<u8> = (0..4000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let record = Record {
        value: Some(Bytes::from(values)),
        ..rich_records(false)[1].clone()
    };
    let sent = encode_records(&[record], TestCompression::None);
    let policy = BatchPolicy {
        compression: Some(CompressionType::Gzip),
        ..BatchPolicy::new(sent.len())
    };
    let mut batch = sent.clone();
    assert!(matches!(
        prepare_batch(&mut batch, &policy, 0),
        Err(LogError::BatchTooLarge { .. })
    ));
}

#[test]
fn log_append_time_stamps_the_header_and_the_time_index_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let policy = BatchPolicy {
        timestamp_type: TimestampType::LogAppendTime,
        ..plain()
    };
    let now_ms = 1_800_000_000_000;
    for (i, codec) in ALL_CODECS.into_iter().enumerate() {
        let sent = encode_batch(&[5, 6, 7], 50, test_compression(codec));
        let mut batch = sent.clone();
        let stamped_ms = now_ms + i as i64;
        let prepared = prepare_batch(&mut batch, &policy, stamped_ms).unwrap();
        assert_eq!(prepared.log_append_time_ms, Some(stamped_ms));
        assert!(prepared.rewritten);
        // CRC valid, bit 3 set, maxTimestamp = append time, records untouched.
        let header = validate_for_append(&batch, MAX).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, stamped_ms);
        assert_eq!(batch[BATCH_HEADER_BYTES..], sent[BATCH_HEADER_BYTES..]);
        assert!(decode(&batch)
            .iter()
            .all(|r| r.timestamp_type == kafka_protocol::records::TimestampType::LogAppend));
        let info = log.append(&mut batch, 0, stamped_ms).unwrap();
        assert_eq!(info.max_timestamp, stamped_ms);
        let found = log.find_offset_by_timestamp(stamped_ms).unwrap().unwrap();
        assert_eq!(
            (found.timestamp, found.offset),
            (stamped_ms, info.base_offset)
        );
    }
    assert_eq!(log.max_timestamp().unwrap().timestamp, now_ms + 4);
    // A record's own (create) time is not what the index knows.
    assert_eq!(
        log.find_offset_by_timestamp(6).unwrap().unwrap().timestamp,
        now_ms
    );
}

#[test]
fn create_time_clears_a_client_log_append_bit_and_fixes_a_wrong_max_timestamp() {
    let sent = encode_batch(&[100, 300, 200], 10, TestCompression::Gzip);
    let mut wrong = sent.clone();
    wrong[35..43].copy_from_slice(&5i64.to_be_bytes());
    wrong[22] |= 0x08;
    let crc = crc32c::crc32c(&wrong[CRC_START..]);
    wrong[17..21].copy_from_slice(&crc.to_be_bytes());
    let prepared = prepare_batch(&mut wrong, &plain(), 0).unwrap();
    assert!(prepared.rewritten);
    assert_eq!(wrong, sent);
}

#[test]
fn list_offsets_by_timestamp_decodes_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut raw_snappy_template = encode_batch(&[50, 55, 57], 40, TestCompression::None);
    let raw = snap::raw::Encoder::new()
        .compress_vec(&raw_snappy_template[BATCH_HEADER_BYTES..])
        .unwrap();
    raw_snappy_template = recode_batch(&raw_snappy_template, 2, &raw);
    let mut batches: Vec<Vec<u8>> = ALL_CODECS
        .iter()
        .enumerate()
        .map(|(i, codec)| {
            let base = 10 * i as i64;
            encode_batch(&[base, base + 5, base + 7], 40, test_compression(*codec))
        })
        .collect();
    batches.push(raw_snappy_template);
    for (i, mut batch) in batches.into_iter().enumerate() {
        prepare_batch(&mut batch, &plain(), 0).unwrap();
        let info = log.append(&mut batch, 0, 0).unwrap();
        assert_eq!(info.base_offset, 3 * i as i64);
        let base = 10 * i as i64;
        let found = log.find_offset_by_timestamp(base + 1).unwrap().unwrap();
        assert_eq!(
            (found.timestamp, found.offset),
            (base + 5, info.base_offset + 1),
            "{i}"
        );
        let found = log.find_offset_by_timestamp(base + 6).unwrap().unwrap();
        assert_eq!(
            (found.timestamp, found.offset),
            (base + 7, info.base_offset + 2),
            "{i}"
        );
    }
}

fn arb_record() -> impl Strategy<Value = (Option<Vec<u8>>, Option<Vec<u8>>, i64, u8)> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        proptest::option::of(proptest::collection::vec(0u8..4, 0..300)),
        -1000i64..1000,
        0u8..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever records a client encodes, in whatever codec, re-encoding to any codec keeps
    /// them exactly, and the walk finds exactly the keyless ones.
    #[test]
    fn any_records_survive_any_recompression(
        raw in proptest::collection::vec(arb_record(), 1..12),
        from in 0usize..5,
        to in 0usize..5,
    ) {
        let records: Vec<Record> = raw
            .iter()
            .enumerate()
            .map(|(i, (key, value, ts, headers_count))| {
                let mut headers = IndexMap::new();
                for h in 0..*headers_count {
                    headers.insert(StrBytes::from_string(format!("h{h}")), value.clone().map(Bytes::from));
                }
                Record {
                    offset: i as i64,
                    sequence: i as i32 - 1,
                    timestamp: 1_000_000 + ts,
                    key: key.clone().map(Bytes::from),
                    value: value.clone().map(Bytes::from),
                    headers,
                    ..rich_records(false)[0].clone()
                }
            })
            .collect();
        let sent = encode_records(&records, test_compression(ALL_CODECS[from]));
        let header = BatchHeader::parse(&sent).unwrap();
        let plain_records = if from == 0 {
            sent[BATCH_HEADER_BYTES..].to_vec()
        } else {
            decompress(ALL_CODECS[from], &sent[BATCH_HEADER_BYTES..], MAX).unwrap()
        };
        let summary = walk_records(&plain_records, &header).unwrap();
        let keyless: Vec<i32> = raw.iter().enumerate().filter(|(_, r)| r.0.is_none()).map(|(i, _)| i as i32).collect();
        prop_assert_eq!(summary.keyless_indexes, keyless);
        let mut batch = sent.clone();
        let policy = BatchPolicy { compression: Some(ALL_CODECS[to]), ..plain() };
        prepare_batch(&mut batch, &policy, 0).unwrap();
        prop_assert_eq!(decode(&batch), records);
    }

    /// Flipping or cutting bytes of the records (CRC fixed up) never panics: it is either
    /// still a valid batch or an error.
    #[test]
    fn damaged_records_never_panic(
        codec in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let sent = encode_records(&rich_records(false), test_compression(ALL_CODECS[codec]));
        let mut body = sent[BATCH_HEADER_BYTES..].to_vec();
        for (index, byte) in flips {
            let i = index.index(body.len());
            body[i] ^= byte | 1;
        }
        if do_cut {
            body.truncate(cut.index(body.len()));
        }
        let mut batch = recode_batch(&sent, ALL_CODECS[codec].attribute_bits(), &body);
        let _ = prepare_batch(&mut batch, &plain(), 0);
        let mut batch = recode_batch(&sent, ALL_CODECS[codec].attribute_bits(), &body);
        let _ = prepare_batch(&mut batch, &BatchPolicy { compression: Some(CompressionType::Zstd), require_keys: true, ..plain() }, 0);
    }
}

#[test]
fn the_common_path_never_copies_a_shared_batch() {
    for codec in ALL_CODECS {
        let sent = Bytes::from(encode_batch(&[10, 30, 20], 200, test_compression(codec)));
        let mut buf = BatchBuf::Shared(sent.clone());
        let prepared = prepare_batch_buf(&mut buf, &plain(), 99).unwrap();
        assert!(
            buf.is_shared(),
            "{codec:?}: copied although nothing changed"
        );
        assert!(!prepared.rewritten && !prepared.recompressed);
        assert_eq!(&buf[..], &sent[..]);
        match &buf {
            BatchBuf::Shared(bytes) => assert_eq!(bytes.as_ptr(), sent.as_ptr()),
            BatchBuf::Owned(_) => panic!("owned"),
        }
    }
}

#[test]
fn a_policy_that_changes_the_batch_copies_it_and_leaves_the_shared_buffer_alone() {
    let policies = [
        BatchPolicy {
            timestamp_type: TimestampType::LogAppendTime,
            ..plain()
        },
        BatchPolicy {
            compression: Some(CompressionType::Zstd),
            ..plain()
        },
    ];
    for policy in policies {
        let original = encode_batch(&[1, 2, 3], 50, TestCompression::None);
        let sent = Bytes::from(original.clone());
        let mut buf = BatchBuf::Shared(sent.clone());
        let prepared = prepare_batch_buf(&mut buf, &policy, 777).unwrap();
        assert!(!buf.is_shared());
        assert!(prepared.rewritten);
        assert_eq!(&sent[..], &original[..], "the request buffer is untouched");
        let mut owned = original.clone();
        let expected = prepare_batch(&mut owned, &policy, 777).unwrap();
        assert_eq!(prepared, expected);
        assert_eq!(&buf[..], &owned[..], "same bytes as the owned path");
    }
}
