"""Array lengths that lie: a 20-byte request claiming 2^31 elements.

The protocol decoder reserves capacity for the claimed length before reading an element;
without the broker's guarded allocator this aborted the whole process. Each case must
close only its own connection, and the broker must keep serving.
"""
import socket
import struct

import pytest


def frame(api_key, version, payload, correlation_id=1):
    header = struct.pack(">hhih", api_key, version, correlation_id, 1) + b"x"
    if version >= 9 and api_key == 3 or version >= 9 and api_key == 0:
        header += b"\x00"  # flexible header: empty tagged fields
    body = header + payload
    return struct.pack(">i", len(body)) + body


CASES = {
    "metadata_v1_topics_2^31": frame(3, 1, struct.pack(">i", 2**31 - 1) + b"\x00\x05hello"),
    "produce_v3_topics_2^31": frame(
        0, 3, struct.pack(">h", -1) + struct.pack(">hi", 1, 1000) + struct.pack(">i", 2**31 - 1)
    ),
    "metadata_v12_compact_topics_2^32": frame(3, 12, b"\xff\xff\xff\xff\x0f"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lying_array_length_closes_only_that_connection(broker, name):
    host, port = broker.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(CASES[name])
        assert sock.recv(100) == b"", "the broker should close the connection"
    assert broker.proc.poll() is None, "broker process died"
    # A well-formed ApiVersions v0 on a new connection still works.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(frame(18, 0, b"", correlation_id=42))
        size = struct.unpack(">i", sock.recv(4))[0]
        data = b""
        while len(data) < size:
            data += sock.recv(size - len(data))
        assert struct.unpack(">i", data[:4])[0] == 42
        assert struct.unpack(">h", data[4:6])[0] == 0
