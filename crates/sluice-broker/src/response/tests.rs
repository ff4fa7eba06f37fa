use std::io::Write;
use std::sync::Arc;

use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::*;

/// A file holding `len` bytes of a recognisable pattern, and a slice of it at `position`.
fn file_slice(position: u64, len: usize) -> ReadSlice {
    let mut file = tempfile::tempfile().unwrap();
    let total = position as usize + len + 7;
    let content: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    file.write_all(&content).unwrap();
    ReadSlice {
        file: Arc::new(file),
        position,
        len,
        first_offset: 0,
        next_offset: 1,
    }
}

fn partition(index: i32, read_committed: bool) -> PartitionData {
    let data = PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(1_000 + i64::from(index))
        .with_last_stable_offset(1_000 + i64::from(index))
        .with_log_start_offset(3);
    if read_committed {
        data.with_aborted_transactions(Some(vec![AbortedTransaction::default()
            .with_producer_id(ProducerId(7))
            .with_first_offset(11)]))
    } else {
        data
    }
}

/// Two topics, five partitions: file ranges of several sizes (so the flexible versions'
/// varint prefixes take 1, 2 and 3 bytes), an empty records field and an error.
fn sample(version: i16) -> (FetchResponse, Vec<Option<ReadSlice>>) {
    let read_committed = version % 2 == 0;
    let slices = vec![
        Some(file_slice(0, 61)),
        None,
        Some(file_slice(4096, 300)),
        None,
        Some(file_slice(13, 70_000)),
    ];
    let mut partitions: Vec<PartitionData> = (0..5)
        .map(|index| partition(index, read_committed).with_records(Some(Bytes::new())))
        .collect();
    partitions[3] = partitions[3]
        .clone()
        .with_error_code(3)
        .with_high_watermark(-1);
    let first = FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("alpha")))
        .with_partitions(partitions[..2].to_vec());
    let second = FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("beta")))
        .with_partitions(partitions[2..].to_vec());
    let response = FetchResponse::default()
        .with_throttle_time_ms(0)
        .with_responses(vec![first, second]);
    (response, slices)
}

/// What kafka-protocol encodes with the real bytes in every records field.
fn plain_encoding(version: i16, response: &FetchResponse, slices: &[Option<ReadSlice>]) -> Bytes {
    let mut response = response.clone();
    let partitions = response
        .responses
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut());
    for (data, slice) in partitions.zip(slices) {
        if let Some(slice) = slice {
            data.records = Some(Bytes::from(slice.read_to_vec().unwrap()));
        }
    }
    encode_frame(ApiKey::Fetch, version, 42, &response).unwrap()
}

#[test]
fn spliced_frame_is_byte_identical_to_the_plain_encoding_for_every_fetch_version() {
    for version in 4..=12 {
        let (response, slices) = sample(version);
        let expected = plain_encoding(version, &response, &slices);
        let parts = encode_fetch_frame(version, 42, &mut response.clone(), &slices)
            .unwrap()
            .expect("placeholders located");
        assert_eq!(parts.len_bytes(), expected.len(), "v{version} length");
        assert_eq!(parts.to_bytes().unwrap(), expected, "v{version} bytes");
        let file_parts = parts
            .parts()
            .iter()
            .filter(|part| matches!(part, ResponsePart::File(_)))
            .count();
        assert_eq!(
            file_parts, 3,
            "v{version}: every range is sent from its file"
        );
    }
}

#[test]
fn a_response_without_file_ranges_is_the_plain_encoding() {
    for version in [4, 11, 12] {
        let (response, _) = sample(version);
        let none = vec![None; 5];
        let expected = plain_encoding(version, &response, &none);
        let parts = encode_fetch_frame(version, 42, &mut response.clone(), &none)
            .unwrap()
            .unwrap();
        assert!(!parts.has_file_ranges());
        assert_eq!(parts.to_bytes().unwrap(), expected);
    }
}

/// Frame bytes with a "topic name" field then placeholders 0..count (non-flexible).
fn frame_with(name: &[u8], count: u32) -> Bytes {
    let mut encoded = BytesMut::new();
    encoded.put_i32(0);
    encoded.put_i16(name.len() as i16);
    encoded.extend_from_slice(name);
    for index in 0..count {
        encoded.extend_from_slice(&length_prefix(PLACEHOLDER_BYTES, false).unwrap());
        encoded.extend_from_slice(&placeholder(index));
    }
    encoded.freeze()
}

#[test]
fn a_field_holding_the_nonce_makes_the_splice_give_up() {
    let slices = [file_slice(0, 10), file_slice(5, 20)];
    let honest = splice(frame_with(b"topic", 2), &slices, false).unwrap();
    assert!(honest.is_some_and(|parts| parts.has_file_ranges()));
    let mut evil = b"evil-".to_vec();
    evil.extend_from_slice(&placeholder(0));
    assert!(splice(frame_with(&evil, 2), &slices, false)
        .unwrap()
        .is_none());
}

#[test]
fn a_placeholder_out_of_order_makes_the_splice_give_up() {
    let slices = [file_slice(0, 10), file_slice(0, 20)];
    let mut encoded = BytesMut::new();
    encoded.put_i32(0);
    for index in [1u32, 0] {
        encoded.extend_from_slice(&length_prefix(PLACEHOLDER_BYTES, false).unwrap());
        encoded.extend_from_slice(&placeholder(index));
    }
    assert!(splice(encoded.freeze(), &slices, false).unwrap().is_none());
}

#[test]
fn length_prefixes_of_every_size_class_match_kafka_protocol() {
    // Varint boundaries of the flexible prefix (1 to 4 bytes) and the classic i32 prefix.
    for len in [
        1usize, 126, 127, 128, 16_382, 16_383, 16_384, 2_097_151, 2_097_152,
    ] {
        let slice = file_slice(1, len);
        for version in [11, 12] {
            let response =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![partition(0, false)])]);
            let slices = vec![Some(slice.clone())];
            let expected = plain_encoding(version, &response, &slices);
            let parts = encode_fetch_frame(version, 42, &mut response.clone(), &slices)
                .unwrap()
                .unwrap();
            assert_eq!(
                parts.to_bytes().unwrap(),
                expected,
                "v{version}, {len} bytes"
            );
        }
    }
}
