"""Resource limits against the real binary: connection counts (total and per IP),
the idle-connection timeout, back-pressure on a client that stops reading, and the
Fetch response size caps.

Nothing here asserts timing: waits are generous deadlines for something that must
happen, and the one "must not happen" (a long-polling fetch closed as idle) is checked
by the response arriving at all.
"""

import socket
import struct
import threading
import time

import pytest

import kafka_wire as kw
from conftest import create_topic, free_port, unique_topic
from test_metrics import scrape

API_DESCRIBE_CONFIGS = 32


def conn_from(port, source_ip="127.0.0.1", timeout=10.0):
    """A kw.Conn whose local address is `source_ip` (any 127/8 address reaches the
    listener on 127.0.0.1), to act as several client hosts."""
    c = kw.Conn.__new__(kw.Conn)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(source_ip, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.corr = 0
    return c


def works(c):
    """True when an ApiVersions round trip succeeds on `c`."""
    try:
        err, apis = kw.api_versions_v0(c)
    except (kw.ConnectionClosed, OSError):
        return False
    return err == 0 and kw.API_FETCH in apis


def metric(port, name, **labels):
    _, samples = scrape(port)
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def limits_broker(make_broker, settings):
    mport = free_port()
    b = make_broker(settings=settings, extra_args=["--metrics-listen", f"127.0.0.1:{mport}"])
    b.metrics_port = mport
    # The readiness probe's connection is closed by now, but the broker may not have
    # seen its end yet: start from zero open connections.
    wait_until(lambda: metric(mport, "sluice_connections_open") == 0,
               what="the readiness probe's connection to end")
    return b


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def healthy(b, topic):
    """A produce and a fetch on a fresh connection."""
    with b.conn() as c:
        r = kw.produce_v3(c, topic, 0, kw.encode_batch([(b"k", b"still-here")]))
        assert r["error_code"] == 0, r
        p = kw.fetch_v4(c, topic, 0, r["base_offset"], max_wait_ms=100)
        assert p["error_code"] == 0
        assert b"still-here" in [x["value"] for x in p["decoded"]]
    b.assert_alive()
    assert "panicked" not in b.stderr_text()


def test_max_connections_closes_the_extra_one_and_keeps_the_others(make_broker):
    b = limits_broker(make_broker, {"max.connections": 3})
    held = [b.conn() for _ in range(3)]
    for c in held:
        assert works(c)
    extra = b.conn()
    assert extra.is_closed(), "the 4th connection should be closed at once"
    extra.close()
    # The listener keeps accepting and refusing; the first three keep working.
    for _ in range(3):
        with b.conn() as c:
            assert c.is_closed()
    for c in held:
        assert works(c)
    assert metric(b.metrics_port, "sluice_connections_rejected_total",
                  reason="max_connections") >= 4
    assert "connection limit reached" in b.stderr_text()
    # A place freed is a place taken: closing one lets a new one in.
    held.pop().close()

    def new_one_works():
        with b.conn() as c:
            return works(c)
    wait_until(new_one_works, what="a freed connection slot")
    for c in held:
        assert works(c)
        c.close()
    b.assert_alive()


def test_max_connections_per_ip_and_overrides(make_broker):
    b = limits_broker(make_broker, {
        "max.connections.per.ip": 2,
        "max.connections.per.ip.overrides": "127.0.0.2:3,127.0.0.3:0",
    })
    plain = [conn_from(b.port, "127.0.0.1") for _ in range(2)]
    generous = [conn_from(b.port, "127.0.0.2") for _ in range(3)]
    for c in plain + generous:
        assert works(c)
    over_plain = conn_from(b.port, "127.0.0.1")
    assert over_plain.is_closed()
    over_generous = conn_from(b.port, "127.0.0.2")
    assert over_generous.is_closed()
    banned = conn_from(b.port, "127.0.0.3")
    assert banned.is_closed()
    # Another address is unaffected by the others' counts.
    with conn_from(b.port, "127.0.0.4") as other:
        assert works(other)
    for c in plain + generous:
        assert works(c)
    assert metric(b.metrics_port, "sluice_connections_rejected_total",
                  reason="max_connections_per_ip") >= 3
    assert metric(b.metrics_port, "sluice_connections_rejected_total",
                  reason="max_connections") == 0
    for c in plain + generous + [over_plain, over_generous, banned]:
        c.close()


IDLE_MS = 1500


def test_idle_connection_closed_but_long_poll_is_not(make_broker):
    b = limits_broker(make_broker, {"connections.max.idle.ms": IDLE_MS, "num.partitions": 1})
    topic = unique_topic("idle")
    create_topic(b.bootstrap, topic, partitions=1)

    idle = b.conn()
    assert works(idle)

    # A long poll on an empty partition, waiting more than twice the idle timeout: the
    # broker computes the response all that time, which is activity.
    poller = b.conn(timeout=30)
    r = poller.request(kw.API_FETCH, 4, kw.fetch_v4_body(
        topic, 0, 0, max_wait_ms=3 * IDLE_MS, min_bytes=1))
    answer = kw.parse_fetch_v4(r)
    assert answer["topics"][0]["partitions"][0]["error_code"] == 0
    assert answer["topics"][0]["partitions"][0]["records"] in (b"", None)

    # Meanwhile the connection that did nothing was closed.
    assert idle.is_closed(timeout=10), "idle connection still open"
    idle.close()
    # And the poller, idle now, is closed in turn.
    assert poller.is_closed(timeout=10)
    poller.close()
    assert metric(b.metrics_port, "sluice_connections_idle_closed_total") >= 2
    healthy(b, topic)


def test_active_connection_is_not_idle(make_broker):
    b = limits_broker(make_broker, {"connections.max.idle.ms": 3000})
    with b.conn() as c:
        # Requests well inside the timeout, for three times its length.
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline:
            assert works(c), "an active connection was closed"
            time.sleep(0.3)
    assert metric(b.metrics_port, "sluice_connections_idle_closed_total") == 0


def describe_broker_configs_v3(corr):
    """DescribeConfigs v3 for broker 1 with synonyms and documentation: a large
    response (every setting, its doc and its synonyms) for a small request."""
    body = (kw.i32(1) + kw.i8(4) + kw.string("1") + kw.i32(-1)
            + kw.i8(1) + kw.i8(1))
    return kw.frame(kw.request_header_v1(API_DESCRIBE_CONFIGS, 3, corr) + body)


INFLIGHT = 1 << 20


def start_non_reader(port, requests, rcvbuf=4096):
    """A client that sends `requests` (pipelined) and never reads a byte. Sending
    happens in a thread: once the broker stops reading, sendall blocks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    state = {"sent": 0}

    def send():
        try:
            for frame in requests:
                sock.sendall(frame)
                state["sent"] += 1
        except OSError:
            pass
    t = threading.Thread(target=send, daemon=True)
    t.start()
    return sock, t, state


def test_client_that_stops_reading_cannot_grow_broker_memory(make_broker):
    b = limits_broker(make_broker, {
        "connection.max.inflight.response.bytes": INFLIGHT,
        # Let the byte limit, not the count, be what stops the reader.
        "queued.max.requests": 1_000_000,
        # The slow client must stay stuck for this test, not be reaped as idle.
        "connections.max.idle.ms": 600000,
    })
    topic = unique_topic("slow")
    create_topic(b.bootstrap, topic, partitions=1)
    with b.conn() as c:
        c.send_raw(describe_broker_configs_v3(1))
        one = len(c.recv_frame())
    assert one > 8000, f"DescribeConfigs response of {one} bytes is too small for this test"
    count = 20000  # without back-pressure: count * one bytes buffered (hundreds of MB)
    baseline = rss_bytes(b.proc.pid)
    sock, sender, state = start_non_reader(
        b.port, (describe_broker_configs_v3(i) for i in range(count)))
    wait_until(lambda: metric(b.metrics_port, "sluice_connection_read_pauses_total") >= 1,
               what="the broker to pause reading the slow client")
    # Give the broker every chance to keep reading (it must not).
    time.sleep(2)
    grown = rss_bytes(b.proc.pid) - baseline
    print(f"responses of {one} B; slow client sent {state['sent']}/{count}; "
          f"RSS grew by {grown / 2**20:.1f} MiB")
    # (Kernel socket buffers may well hold every request: what matters is that the
    # broker did not turn them into responses it holds in memory.)
    assert grown < 64 * INFLIGHT, f"RSS grew by {grown} bytes"
    # Other clients are served meanwhile.
    healthy(b, topic)
    sock.close()
    sender.join(10)
    healthy(b, topic)
    grown = rss_bytes(b.proc.pid) - baseline
    assert grown < 64 * INFLIGHT


def test_pipelined_fetches_never_read_keep_others_served(make_broker):
    b = limits_broker(make_broker, {
        "connection.max.inflight.response.bytes": INFLIGHT,
        "fetch.max.bytes": 4 << 20,
        "connections.max.idle.ms": 4000,
    })
    topic = unique_topic("bigfetch")
    create_topic(b.bootstrap, topic, partitions=1)
    value = b"x" * 200_000
    with b.conn() as c:
        for _ in range(40):  # 8 MB
            r = kw.produce_v3(c, topic, 0, kw.encode_batch([(b"k", value)] * 4), acks=1)
            assert r["error_code"] == 0, r
    baseline = rss_bytes(b.proc.pid)
    fetch = kw.fetch_v4_body(topic, 0, 0, max_wait_ms=0, max_bytes=64 << 20,
                             partition_max_bytes=64 << 20)
    requests = (kw.frame(kw.request_header_v1(kw.API_FETCH, 4, i) + fetch) for i in range(5000))
    sock, sender, state = start_non_reader(b.port, requests)
    wait_until(lambda: metric(b.metrics_port, "sluice_connection_read_pauses_total") >= 1,
               what="the broker to pause reading the slow fetcher")
    healthy(b, topic)
    grown = rss_bytes(b.proc.pid) - baseline
    print(f"slow fetcher sent {state['sent']} fetches; RSS grew by {grown / 2**20:.1f} MiB")
    assert grown < 64 * INFLIGHT
    # The stuck client makes no progress: the idle timeout closes it.
    wait_until(lambda: metric(b.metrics_port, "sluice_connections_idle_closed_total") >= 1,
               timeout=30, what="the stuck fetcher to be closed as idle")
    sock.close()
    sender.join(10)
    healthy(b, topic)


def test_fetch_size_caps(make_broker):
    b = make_broker(settings={"fetch.max.bytes": 1 << 20})
    topic = unique_topic("caps")
    create_topic(b.bootstrap, topic, partitions=1)
    value = b"y" * 100_000
    with b.conn() as c:
        for _ in range(30):  # 30 batches of 200 kB
            r = kw.produce_v3(c, topic, 0, kw.encode_batch([(b"k", value)] * 2), acks=1)
            assert r["error_code"] == 0
        # The client asks for 64 MB: the broker's fetch.max.bytes caps it (KIP-74: the
        # first batch may exceed a limit, so cap + one batch at most).
        p = kw.fetch_v4(c, topic, 0, 0, max_wait_ms=0, max_bytes=64 << 20,
                        partition_max_bytes=64 << 20)
        assert p["error_code"] == 0
        assert 0 < len(p["records"]) <= (1 << 20) + 210_000, len(p["records"])
        # The request's max_bytes is honoured below the broker's cap.
        p = kw.fetch_v4(c, topic, 0, 0, max_wait_ms=0, max_bytes=500_000,
                        partition_max_bytes=64 << 20)
        assert 0 < len(p["records"]) <= 500_000 + 210_000, len(p["records"])
        # And partition_max_bytes too.
        p = kw.fetch_v4(c, topic, 0, 0, max_wait_ms=0, max_bytes=64 << 20,
                        partition_max_bytes=300_000)
        assert 0 < len(p["records"]) <= 300_000 + 210_000, len(p["records"])
        # A batch larger than every limit still comes back whole (one batch), so a
        # consumer is never stuck.
        p = kw.fetch_v4(c, topic, 0, 0, max_wait_ms=0, max_bytes=10, partition_max_bytes=10)
        assert len(kw.decode_batches(p["records"])) == 2


def produce_frame(topic, value, corr):
    body = kw.produce_v3_body(topic, 0, kw.encode_batch([(b"k", value)]), acks=1)
    return kw.frame(kw.request_header_v1(kw.API_PRODUCE, 3, corr) + body)


def read_produce_response(c, corr):
    r = kw.Reader(c.recv_frame())
    assert r.i32() == corr
    return kw.parse_produce_v3(r)["topics"][0]["partitions"][0]


def test_queued_max_request_bytes_holds_back_requests_until_the_budget_frees(make_broker):
    # Room for one 250 kB request at a time.
    b = limits_broker(make_broker, {"queued.max.request.bytes": 300_000})
    topic = unique_topic("budget")
    create_topic(b.bootstrap, topic, partitions=1)
    first = produce_frame(topic, b"a" * 250_000, 1)
    second = produce_frame(topic, b"b" * 250_000, 1)
    slow, fast = b.conn(), b.conn()
    # `slow` announces its request and sends half of it: its size is taken from the budget.
    slow.send_raw(first[: len(first) // 2])
    time.sleep(0.3)  # let the broker read the size prefix before the second arrives
    fast.send_raw(second)
    wait_until(lambda: metric(b.metrics_port, "sluice_request_budget_waits_total") >= 1,
               what="the second request to wait for the budget")
    # While the first holds the budget the second is not answered.
    fast.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        fast.sock.recv(1)
    fast.sock.setblocking(True)
    fast.sock.settimeout(15)
    slow.send_raw(first[len(first) // 2:])
    assert read_produce_response(slow, 1)["error_code"] == 0
    assert read_produce_response(fast, 1)["error_code"] == 0
    # A request larger than the whole budget is served alone, not refused.
    with b.conn() as c:
        c.send_raw(produce_frame(topic, b"c" * 400_000, 7))
        assert read_produce_response(c, 7)["error_code"] == 0
    slow.close()
    fast.close()
    healthy(b, topic)


def test_max_connection_creation_rate_spaces_accepts_and_refuses_none(make_broker):
    b = limits_broker(make_broker, {"max.connection.creation.rate": 5})
    conns = []
    for _ in range(12):
        c = b.conn()
        conns.append(c)
        assert works(c), "a throttled connection is accepted late, never refused"
    assert metric(b.metrics_port, "sluice_connection_creation_throttles_total") >= 1
    assert metric(b.metrics_port, "sluice_connections_rejected_total",
                  reason="max_connections") == 0
    for c in conns:
        c.close()
    b.assert_alive()
