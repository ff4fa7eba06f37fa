//! Decode only, no handlers: the request header and the body of every API key and version
//! the broker supports, parsed as `server::dispatch_frame` parses them. Much faster than
//! `request_frame`, so it explores `kafka-protocol`'s decoders deeper. Input: one frame
//! without its size prefix.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;

/// The broker's allocator: `kafka-protocol` sizes a `Vec` by the array length on the
/// wire before reading elements; without the guard a 20-byte input aborts on OOM.
#[global_allocator]
static ALLOCATOR: sluice_broker::alloc_guard::GuardedAllocator =
    sluice_broker::alloc_guard::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return; // the reader closes the connection first
    }
    let mut peek = data;
    let api_key_raw = peek.get_i16();
    let api_version = peek.get_i16();
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return;
    };
    if !sluice_broker::api::is_supported(api_key, api_version) {
        return;
    }
    let mut frame = Bytes::copy_from_slice(data);
    let header_version = api_key.request_header_version(api_version);
    if RequestHeader::decode(&mut frame, header_version).is_err() {
        return;
    }
    let _ = RequestKind::decode(api_key, &mut frame, api_version);
});
