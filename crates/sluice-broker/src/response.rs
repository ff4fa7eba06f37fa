//! A response frame as the connection's writer sends it: a sequence of parts, each either
//! bytes from memory or a byte range of a segment file.
//!
//! Fetch responses are the reason: their record bytes are already on disk exactly as the
//! wire wants them, so the frame (size prefix, response header, every field) is encoded in
//! memory by kafka-protocol and each partition's records field points at its
//! [`ReadSlice`]. The writer sends file ranges with `sendfile(2)` (page cache to socket, no
//! copy through user space) or, when that is switched off, reads them with `pread`.
//!
//! How a file range gets into a kafka-protocol encoding ([`encode_fetch_frame`]): every
//! records field that has a file range is set to a placeholder, `nonce ++ index` where the
//! nonce is 16 random bytes drawn once per process. The response is encoded as usual, then
//! the placeholders are found and replaced by the file range, and the length prefix before
//! each by the prefix of the real length. This is byte-identical to encoding the real bytes
//! because kafka-protocol writes a bytes field as `length prefix ++ bytes` verbatim and
//! no other field depends on the records' content or size (arrays are prefixed by element
//! counts, structs carry no size; only the frame's size prefix counts bytes, and it is
//! recomputed). The splice is used only after checking that the nonce occurs exactly once
//! per placeholder, in order, each after the prefix of the placeholder's length: a topic
//! name that happened to contain the nonce (a 2^-128 chance, and the nonce never leaves the
//! process) makes the fetch fall back to reading the bytes and encoding them for real.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse};
use sluice_log::ReadSlice;

use crate::api::{encode_frame, ApiError};

/// One piece of a response frame, written in order.
#[derive(Debug, Clone)]
pub enum ResponsePart {
    /// Bytes encoded in memory.
    Bytes(Bytes),
    /// Whole record batches of a segment file, sent straight from the page cache.
    File(ReadSlice),
}

impl ResponsePart {
    pub fn len_bytes(&self) -> usize {
        match self {
            ResponsePart::Bytes(bytes) => bytes.len(),
            ResponsePart::File(slice) => slice.len,
        }
    }
}

/// A complete response frame (size prefix included) as a sequence of parts.
#[derive(Debug, Clone, Default)]
pub struct ResponseParts {
    parts: Vec<ResponsePart>,
}

impl From<Bytes> for ResponseParts {
    fn from(frame: Bytes) -> Self {
        ResponseParts {
            parts: vec![ResponsePart::Bytes(frame)],
        }
    }
}

impl ResponseParts {
    pub fn parts(&self) -> &[ResponsePart] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<ResponsePart> {
        self.parts
    }

    /// Size of the whole frame on the wire.
    pub fn len_bytes(&self) -> usize {
        self.parts.iter().map(ResponsePart::len_bytes).sum()
    }

    /// True when some part is a file range (the writer needs `sendfile` or `pread`).
    pub fn has_file_ranges(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, ResponsePart::File(_)))
    }

    /// The frame as one buffer, file ranges read with `pread` (tests, and writers that
    /// cannot use `sendfile`).
    pub fn to_bytes(&self) -> std::io::Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.len_bytes());
        for part in &self.parts {
            match part {
                ResponsePart::Bytes(bytes) => out.extend_from_slice(bytes),
                ResponsePart::File(slice) => out.extend_from_slice(&slice.read_to_vec()?),
            }
        }
        Ok(out.freeze())
    }
}

/// Bytes of the random part of a placeholder.
const NONCE_BYTES: usize = 16;
/// A placeholder: the nonce then the placeholder's index (u32, big-endian).
const PLACEHOLDER_BYTES: usize = NONCE_BYTES + 4;

/// 16 bytes drawn from the OS's randomness once per process (std seeds `RandomState`
/// from it; two independently keyed hashers give 128 bits).
fn nonce() -> &'static [u8; NONCE_BYTES] {
    static NONCE: OnceLock<[u8; NONCE_BYTES]> = OnceLock::new();
    NONCE.get_or_init(|| {
        let mut out = [0u8; NONCE_BYTES];
        for chunk in out.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(0x736c_7569_6365);
            chunk.copy_from_slice(&hasher.finish().to_be_bytes()[..chunk.len()]);
        }
        out
    })
}

fn placeholder(index: u32) -> Bytes {
    let mut bytes = BytesMut::with_capacity(PLACEHOLDER_BYTES);
    bytes.extend_from_slice(nonce());
    bytes.put_u32(index);
    bytes.freeze()
}

/// Fetch v12+ is a flexible version: compact bytes (unsigned varint of length + 1).
fn is_flexible(version: i16) -> bool {
    version >= 12
}

/// The length prefix kafka-protocol writes before a non-null bytes field of `len` bytes.
fn length_prefix(len: usize, flexible: bool) -> Result<Vec<u8>, ApiError> {
    let too_big = || ApiError::Encode(format!("records field of {len} bytes"));
    if flexible {
        let mut value = u32::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(1))
            .ok_or_else(too_big)?;
        let mut out = Vec::with_capacity(5);
        while value >= 0x80 {
            out.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        Ok(out)
    } else {
        let len = i32::try_from(len).map_err(|_| too_big())?;
        Ok(len.to_be_bytes().to_vec())
    }
}

/// Encodes a Fetch response frame whose records come from segment files.
///
/// `slices` lists, in the order kafka-protocol encodes them (topics, then their
/// partitions), a file range or None for every partition of `response`; a partition with a
/// file range must have its records set to anything (it is replaced). Returns None when the
/// placeholders cannot be located unambiguously (see the module docs); the caller then
/// sets the records fields that have a file range (they hold placeholders) to the bytes
/// and encodes the plain way.
pub fn encode_fetch_frame(
    version: i16,
    correlation_id: i32,
    response: &mut FetchResponse,
    slices: &[Option<ReadSlice>],
) -> Result<Option<ResponseParts>, ApiError> {
    let partition_count: usize = response.responses.iter().map(|t| t.partitions.len()).sum();
    if partition_count != slices.len() {
        return Err(ApiError::Encode(format!(
            "{} file ranges for {partition_count} partitions",
            slices.len()
        )));
    }
    let mut ranges = Vec::new();
    let partitions = response
        .responses
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut());
    for (data, slice) in partitions.zip(slices) {
        if let Some(slice) = slice {
            let index = u32::try_from(ranges.len())
                .map_err(|_| ApiError::Encode("too many partitions".to_string()))?;
            data.records = Some(placeholder(index));
            ranges.push(slice.clone());
        }
    }
    let encoded = encode_frame(ApiKey::Fetch, version, correlation_id, response)?;
    splice(encoded, &ranges, is_flexible(version))
}

/// Replaces the placeholders of `encoded` by `ranges` (see [`encode_fetch_frame`]).
fn splice(
    encoded: Bytes,
    ranges: &[ReadSlice],
    flexible: bool,
) -> Result<Option<ResponseParts>, ApiError> {
    if ranges.is_empty() {
        return Ok(Some(ResponseParts::from(encoded)));
    }
    let placeholder_prefix = length_prefix(PLACEHOLDER_BYTES, flexible)?;
    let found = find_all(&encoded, nonce());
    if found.len() != ranges.len() {
        return Ok(None);
    }
    // Frame size prefix (4 bytes) first: rewritten below once the new size is known.
    const SIZE_PREFIX_BYTES: usize = 4;
    let mut parts = Vec::with_capacity(2 * ranges.len() + 1);
    let mut cursor = SIZE_PREFIX_BYTES;
    let mut size = encoded.len() - SIZE_PREFIX_BYTES;
    for (index, (&at, range)) in found.iter().zip(ranges).enumerate() {
        let index_bytes = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
        let tail = encoded.get(at + NONCE_BYTES..at + PLACEHOLDER_BYTES);
        let Some(prefix_start) = at.checked_sub(placeholder_prefix.len()) else {
            return Ok(None);
        };
        if tail != Some(&index_bytes[..])
            || prefix_start < cursor
            || encoded[prefix_start..at] != placeholder_prefix[..]
        {
            return Ok(None);
        }
        let prefix = length_prefix(range.len, flexible)?;
        let mut head = BytesMut::with_capacity(prefix_start - cursor + prefix.len());
        head.extend_from_slice(&encoded[cursor..prefix_start]);
        head.extend_from_slice(&prefix);
        parts.push(ResponsePart::Bytes(head.freeze()));
        parts.push(ResponsePart::File(range.clone()));
        size = size - placeholder_prefix.len() - PLACEHOLDER_BYTES + prefix.len() + range.len;
        cursor = at + PLACEHOLDER_BYTES;
    }
    if cursor < encoded.len() {
        parts.push(ResponsePart::Bytes(encoded.slice(cursor..)));
    }
    let size = i32::try_from(size)
        .map_err(|_| ApiError::Encode(format!("fetch response of {size} bytes")))?;
    let first = match parts.first_mut() {
        Some(ResponsePart::Bytes(first)) => first,
        _ => return Ok(None),
    };
    let mut with_size = BytesMut::with_capacity(SIZE_PREFIX_BYTES + first.len());
    with_size.put_i32(size);
    with_size.extend_from_slice(first);
    *first = with_size.freeze();
    Ok(Some(ResponseParts { parts }))
}

/// Start positions of the non-overlapping occurrences of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let Some(&first) = needle.first() else {
        return found;
    };
    let mut at = 0;
    while at + needle.len() <= haystack.len() {
        match haystack[at..].iter().position(|&b| b == first) {
            Some(skip) => at += skip,
            None => break,
        }
        if haystack.get(at..at + needle.len()) == Some(needle) {
            found.push(at);
            at += needle.len();
        } else {
            at += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests;
