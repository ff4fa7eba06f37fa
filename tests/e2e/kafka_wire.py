"""Minimal hand-written Kafka wire protocol helpers for the end-to-end tests.

Deliberately independent of any Kafka client library so that malformed frames
can be crafted byte by byte. Only what the tests need is implemented:

* request header v1 (non-flexible) and v2 (flexible)
* ApiVersions v0 / v3, Metadata v1 and v7, Produce v3, Fetch v4, FindCoordinator v1
* RecordBatch v2 encoding (with CRC-32C) and decoding
"""

import socket
import struct
import time

# --------------------------------------------------------------------------
# CRC-32C (Castagnoli)
# --------------------------------------------------------------------------


def _make_crc32c_table():
    poly = 0x82F63B78
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    try:  # fast path if the optional C extension is installed
        import crc32c as _c  # type: ignore

        return _c.crc32c(data)
    except ImportError:
        pass
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------
# Primitive encoders
# --------------------------------------------------------------------------

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_FIND_COORDINATOR = 10
API_API_VERSIONS = 18

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def u32(v):
    return struct.pack(">I", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def uvarint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v):
    # zig-zag, 64 bit
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s):
    if s is None:
        return uvarint(0)
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


def array(items, enc):
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(enc(x) for x in items)


EMPTY_TAGS = uvarint(0)


def request_header_v1(api_key, api_version, correlation_id, client_id="sluice-e2e"):
    return i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)


def request_header_v2(api_key, api_version, correlation_id, client_id="sluice-e2e"):
    return request_header_v1(api_key, api_version, correlation_id, client_id) + EMPTY_TAGS


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        return self.take(n).decode()

    def nbytes(self):
        n = self.i32()
        if n < 0:
            return None
        return self.take(n)

    def uvarint(self):
        shift = 0
        result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def varint(self):
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def array(self, dec):
        n = self.i32()
        if n < 0:
            return None
        return [dec(self) for _ in range(n)]

    def compact_array(self, dec):
        n = self.uvarint()
        if n == 0:
            return None
        return [dec(self) for _ in range(n - 1)]

    def tags(self):
        n = self.uvarint()
        for _ in range(n):
            self.uvarint()
            size = self.uvarint()
            self.take(size)

    def remaining(self):
        return len(self.data) - self.pos


# --------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------


class ConnectionClosed(Exception):
    pass


class Conn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.corr = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_corr(self):
        self.corr += 1
        return self.corr

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as e:
                raise ConnectionClosed(str(e))
            if not chunk:
                raise ConnectionClosed(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        size = struct.unpack(">i", self.recv_exact(4))[0]
        if size < 0 or size > 512 * 1024 * 1024:
            raise ValueError(f"bad response size {size}")
        return self.recv_exact(size)

    def request(self, api_key, version, body: bytes, flexible=False):
        """Send a request and return (correlation_id, Reader positioned after
        the response header v0 correlation id)."""
        corr = self.next_corr()
        hdr = (request_header_v2 if flexible else request_header_v1)(api_key, version, corr)
        self.send_raw(frame(hdr + body))
        resp = self.recv_frame()
        r = Reader(resp)
        got = r.i32()
        assert got == corr, f"correlation id mismatch: sent {corr}, got {got}"
        return r

    def is_closed(self, timeout=5.0):
        """True if the peer closes the connection (EOF/RST) within timeout."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False


# --------------------------------------------------------------------------
# ApiVersions
# --------------------------------------------------------------------------


def _api_entry_v0(r):
    return (r.i16(), r.i16(), r.i16())


def _api_entry_v3(r):
    e = (r.i16(), r.i16(), r.i16())
    r.tags()
    return e


def parse_api_versions_v0(r: Reader):
    err = r.i16()
    apis = r.array(_api_entry_v0)
    return err, {k: (lo, hi) for k, lo, hi in (apis or [])}


def api_versions_v0(conn: Conn):
    r = conn.request(API_API_VERSIONS, 0, b"")
    return parse_api_versions_v0(r)


def api_versions_v3(conn: Conn):
    body = compact_string("sluice-e2e") + compact_string("1.0") + EMPTY_TAGS
    # ApiVersions responses always use response header v0 (no tagged fields).
    r = conn.request(API_API_VERSIONS, 3, body, flexible=True)
    err = r.i16()
    apis = r.compact_array(_api_entry_v3)
    throttle = r.i32()
    r.tags()
    return err, {k: (lo, hi) for k, lo, hi in (apis or [])}, throttle


# --------------------------------------------------------------------------
# Metadata v1
# --------------------------------------------------------------------------


def metadata_v1_body(topics):
    return array(topics, string)


def parse_metadata_v1(r: Reader):
    def broker(r):
        return {"node_id": r.i32(), "host": r.string(), "port": r.i32(), "rack": r.string()}

    def partition(r):
        return {
            "error_code": r.i16(),
            "partition": r.i32(),
            "leader": r.i32(),
            "replicas": r.array(lambda r: r.i32()),
            "isr": r.array(lambda r: r.i32()),
        }

    def topic(r):
        return {
            "error_code": r.i16(),
            "name": r.string(),
            "is_internal": r.i8(),
            "partitions": r.array(partition),
        }

    brokers = r.array(broker)
    controller = r.i32()
    topics = r.array(topic)
    return {"brokers": brokers, "controller": controller, "topics": topics}


def metadata_v1(conn: Conn, topics):
    r = conn.request(API_METADATA, 1, metadata_v1_body(topics))
    return parse_metadata_v1(r)


# --------------------------------------------------------------------------
# Metadata v7 (partition leader epochs, offline replicas)
# --------------------------------------------------------------------------


def metadata_v7_body(topics, allow_auto_topic_creation=False):
    return array(topics, string) + i8(1 if allow_auto_topic_creation else 0)


def parse_metadata_v7(r: Reader):
    def broker(r):
        return {"node_id": r.i32(), "host": r.string(), "port": r.i32(), "rack": r.string()}

    def int_array(r):
        return r.array(lambda r: r.i32())

    def partition(r):
        return {
            "error_code": r.i16(),
            "partition": r.i32(),
            "leader": r.i32(),
            "leader_epoch": r.i32(),
            "replicas": int_array(r),
            "isr": int_array(r),
            "offline_replicas": int_array(r),
        }

    def topic(r):
        return {
            "error_code": r.i16(),
            "name": r.string(),
            "is_internal": r.i8(),
            "partitions": r.array(partition),
        }

    throttle = r.i32()
    brokers = r.array(broker)
    cluster_id = r.string()
    controller = r.i32()
    topics = r.array(topic)
    return {"throttle": throttle, "brokers": brokers, "cluster_id": cluster_id,
            "controller": controller, "topics": topics}


def metadata_v7(conn: Conn, topics, allow_auto_topic_creation=False):
    r = conn.request(API_METADATA, 7, metadata_v7_body(topics, allow_auto_topic_creation))
    return parse_metadata_v7(r)


# --------------------------------------------------------------------------
# FindCoordinator v1
# --------------------------------------------------------------------------

COORDINATOR_GROUP = 0


def find_coordinator_v1(conn: Conn, key, key_type=COORDINATOR_GROUP):
    r = conn.request(API_FIND_COORDINATOR, 1, string(key) + i8(key_type))
    return {"throttle": r.i32(), "error_code": r.i16(), "error_message": r.string(),
            "node_id": r.i32(), "host": r.string(), "port": r.i32()}


# --------------------------------------------------------------------------
# Record batches
# --------------------------------------------------------------------------


def encode_record(offset_delta, ts_delta, key, value, headers=()):
    body = i8(0) + varint(ts_delta) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(len(headers))
    for hk, hv in headers:
        hk = hk.encode() if isinstance(hk, str) else hk
        body += varint(len(hk)) + hk
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    return varint(len(body)) + body


def encode_batch(records, base_timestamp=None, base_offset=0, magic=2,
                 corrupt_crc=False, batch_length_delta=0):
    """records: list of (key, value) or (key, value, headers) tuples."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    recs = b""
    for i, rec in enumerate(records):
        key, value = rec[0], rec[1]
        headers = rec[2] if len(rec) > 2 else ()
        recs += encode_record(i, 0, key, value, headers)
    n = len(records)
    after_crc = (
        i16(0)  # attributes: no compression, CreateTime
        + i32(n - 1)  # lastOffsetDelta
        + i64(base_timestamp)
        + i64(base_timestamp)  # maxTimestamp
        + i64(-1)  # producerId
        + i16(-1)  # producerEpoch
        + i32(-1)  # baseSequence
        + i32(n)
        + recs
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_len = i32(0) + i8(magic) + u32(crc) + after_crc  # partitionLeaderEpoch ...
    return i64(base_offset) + i32(len(after_len) + batch_length_delta) + after_len


def decode_batches(data: bytes):
    """Decode a record set (possibly with a truncated trailing batch) into a
    list of dicts with offset/timestamp/key/value/headers."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, batch_len = struct.unpack(">qi", data[pos:pos + 12])
        end = pos + 12 + batch_len
        if end > len(data):
            break  # partial batch at the end of a fetch response
        r = Reader(data[pos + 12:end])
        r.i32()  # partition leader epoch
        magic = r.i8()
        assert magic == 2, f"unexpected magic {magic}"
        crc = r.u32()
        rest = data[pos + 12 + 9:end]
        assert crc32c(rest) == crc, "CRC mismatch in fetched batch"
        attrs = r.i16()
        assert attrs & 0x07 == 0, "compressed batches not supported by this decoder"
        r.i32()  # last offset delta
        base_ts = r.i64()
        r.i64()  # max ts
        r.i64()
        r.i16()
        r.i32()
        count = r.i32()
        for _ in range(count):
            r.varint()  # length
            r.i8()
            ts_delta = r.varint()
            off_delta = r.varint()
            kl = r.varint()
            key = None if kl < 0 else r.take(kl)
            vl = r.varint()
            value = None if vl < 0 else r.take(vl)
            hs = []
            for _ in range(r.varint()):
                hkl = r.varint()
                hk = r.take(hkl).decode()
                hvl = r.varint()
                hv = None if hvl < 0 else r.take(hvl)
                hs.append((hk, hv))
            out.append({
                "offset": base_offset + off_delta,
                "timestamp": base_ts + ts_delta,
                "key": key,
                "value": value,
                "headers": hs,
            })
        pos = end
    return out


# --------------------------------------------------------------------------
# Produce v3
# --------------------------------------------------------------------------


def produce_v3_body(topic, partition, records_bytes, acks=-1, timeout_ms=10000):
    return (
        string(None)  # transactional id
        + i16(acks)
        + i32(timeout_ms)
        + i32(1)
        + string(topic)
        + i32(1)
        + i32(partition)
        + nbytes(records_bytes)
    )


def parse_produce_v3(r: Reader):
    def part(r):
        return {"partition": r.i32(), "error_code": r.i16(), "base_offset": r.i64(),
                "log_append_time": r.i64()}

    def topic(r):
        return {"name": r.string(), "partitions": r.array(part)}

    topics = r.array(topic)
    throttle = r.i32()
    return {"topics": topics, "throttle": throttle}


def produce_v3(conn: Conn, topic, partition, records_bytes, acks=-1):
    r = conn.request(API_PRODUCE, 3, produce_v3_body(topic, partition, records_bytes, acks))
    resp = parse_produce_v3(r)
    return resp["topics"][0]["partitions"][0]


# --------------------------------------------------------------------------
# Fetch v4
# --------------------------------------------------------------------------


def fetch_v4_body(topic, partition, offset, max_wait_ms=500, min_bytes=1,
                  max_bytes=1 << 20, partition_max_bytes=1 << 20):
    return (
        i32(-1)  # replica id
        + i32(max_wait_ms)
        + i32(min_bytes)
        + i32(max_bytes)
        + i8(0)  # isolation level: read uncommitted
        + i32(1)
        + string(topic)
        + i32(1)
        + i32(partition)
        + i64(offset)
        + i32(partition_max_bytes)
    )


def parse_fetch_v4(r: Reader):
    def aborted(r):
        return (r.i64(), r.i64())

    def part(r):
        return {
            "partition": r.i32(),
            "error_code": r.i16(),
            "high_watermark": r.i64(),
            "last_stable_offset": r.i64(),
            "aborted": r.array(aborted),
            "records": r.nbytes(),
        }

    def topic(r):
        return {"name": r.string(), "partitions": r.array(part)}

    throttle = r.i32()
    topics = r.array(topic)
    return {"throttle": throttle, "topics": topics}


def fetch_v4(conn: Conn, topic, partition, offset, **kw):
    r = conn.request(API_FETCH, 4, fetch_v4_body(topic, partition, offset, **kw))
    resp = parse_fetch_v4(r)
    p = resp["topics"][0]["partitions"][0]
    p["decoded"] = decode_batches(p["records"] or b"")
    return p


# --------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------


def wait_for_topic(conn: Conn, topic, timeout=15.0):
    """Metadata until the topic exists with leaders for all partitions
    (this also triggers auto-creation when enabled)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = metadata_v1(conn, [topic])
        last = md
        for t in md["topics"]:
            if t["name"] == topic and t["error_code"] == 0 and t["partitions"] and all(
                p["leader"] >= 0 for p in t["partitions"]
            ):
                return t
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} did not become available: {last}")
