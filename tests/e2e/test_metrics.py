"""The Prometheus metrics endpoint (`--metrics-listen`): exposition format, counters
that match the traffic sent, consumer lag, /health, robustness against bad HTTP
clients, and off by default."""

import os
import re
import socket
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import confluent_consume_all, create_topic, free_port, unique_topic

# ---- a small, strict parser of the text exposition format 0.0.4 -------------

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def unescape_label(value):
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            nxt = value[i + 1]
            out.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_labels(text):
    if not text:
        return ()
    inner = text[1:-1]
    labels, pos = [], 0
    while pos < len(inner):
        m = LABEL_RE.match(inner, pos)
        assert m, f"bad label syntax at {inner[pos:]!r}"
        labels.append((m.group(1), unescape_label(m.group(2))))
        pos = m.end()
    return tuple(sorted(labels))


def parse_exposition(text):
    """Returns (types, samples): types[family] = counter|gauge|histogram, samples[(name,
    labels)] = value. Asserts the structure: HELP then TYPE once per family, before its
    samples; every sample belongs to a declared family."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types, helps, samples = {}, set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helps, f"HELP twice for {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps, f"TYPE before HELP for {name}"
            assert name not in types, f"TYPE twice for {name}"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        m = SAMPLE_RE.match(line)
        assert m, f"bad sample line {line!r}"
        name, labels, value = m.group(1), parse_labels(m.group(2)), float(m.group(3))
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
        assert family in types, f"sample {name} before its TYPE line"
        key = (name, labels)
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = value
    check_histograms(types, samples)
    return types, samples


def check_histograms(types, samples):
    """Buckets cumulative and sorted by le, a +Inf bucket equal to _count, and a _sum."""
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series = {}
        for (name, labels), value in samples.items():
            if name == family + "_bucket":
                rest = tuple(kv for kv in labels if kv[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append((float(le), value))
        assert series, f"histogram {family} has no buckets"
        for rest, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == float("inf"), f"{family}{rest} lacks le=+Inf"
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{family}{rest} buckets not cumulative: {counts}"
            assert samples[(family + "_count", rest)] == counts[-1]
            assert (family + "_sum", rest) in samples


def http_get(port, path, method="GET", timeout=10):
    """One raw HTTP/1.1 request; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = recv_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return status, headers, body


def recv_all(s):
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def scrape(port):
    status, headers, body = http_get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    return parse_exposition(body.decode())


def metrics_broker(make_broker, settings=None):
    port = free_port()
    broker = make_broker(settings=settings, extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    return broker, port


# ---- tests --------------------------------------------------------------------


def test_counters_lag_and_requests_match_the_traffic(make_broker):
    broker, port = metrics_broker(make_broker)
    _, before = scrape(port)
    topic = unique_topic("metrics")
    create_topic(broker.bootstrap, topic, partitions=2)
    counts = {0: 120, 1: 80}
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": False})
    for partition, n in counts.items():
        for i in range(n):
            producer.produce(topic, value=b"v" * 100, key=f"k{i}".encode(), partition=partition)
    assert producer.flush(60) == 0

    _, after_produce = scrape(port)
    t = (("topic", topic),)
    assert after_produce[("sluice_topic_records_in_total", t)] == 200
    bytes_in = after_produce[("sluice_topic_bytes_in_total", t)]
    assert bytes_in > 200 * 100
    assert after_produce[("sluice_topic_records_out_total", t)] == 0
    for partition, n in counts.items():
        labels = (("partition", str(partition)), ("topic", topic))
        assert after_produce[("sluice_log_end_offset", labels)] == n
        assert after_produce[("sluice_log_start_offset", labels)] == 0
        # A single node is its partitions' whole ISR: everything appended is replicated.
        assert after_produce[("sluice_high_watermark", labels)] == n
        assert after_produce[("sluice_partition_isr_size", labels)] == 1
    assert after_produce[("sluice_under_replicated_partitions", ())] == 0
    assert after_produce[("sluice_fsync_duration_seconds_count", ())] >= 1

    confluent_consume_all(broker.bootstrap, topic, [0, 1], 200)
    _, after_consume = scrape(port)
    assert after_consume[("sluice_topic_records_out_total", t)] == 200
    assert after_consume[("sluice_topic_bytes_out_total", t)] == bytes_in
    assert after_consume[("sluice_topic_records_in_total", t)] == 200

    # A group id with characters that must be escaped in a label value.
    group = 'metrics "group" \\ 1'
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 50), TopicPartition(topic, 1, 80)],
                        asynchronous=False)
    finally:
        consumer.close()
    _, after_commit = scrape(port)
    lag = {labels: v for (name, labels), v in after_commit.items()
           if name == "sluice_consumer_group_lag" and dict(labels)["group"] == group}
    assert lag == {
        (("group", group), ("partition", "0"), ("topic", topic)): 120 - 50,
        (("group", group), ("partition", "1"), ("topic", topic)): 0,
    }

    def moved(name, api):
        key = (name, (("api", api),))
        return after_commit[key] - before[key]

    for api in ("Produce", "Fetch", "Metadata", "CreateTopics", "OffsetCommit"):
        assert moved("sluice_requests_total", api) >= 1, api
        assert moved("sluice_request_duration_seconds_count", api) >= 1, api
        # Every request counted on arrival; latency observed once answered.
        assert (after_commit[("sluice_request_duration_seconds_count", (("api", api),))]
                <= after_commit[("sluice_requests_total", (("api", api),))])
    assert moved("sluice_requests_total", "DeleteRecords") == 0
    assert after_commit[("process_resident_memory_bytes", ())] > 0
    assert after_commit[("process_cpu_seconds_total", ())] > 0

    with broker.conn():
        _, with_connection = scrape(port)
        assert with_connection[("sluice_connections_open", ())] >= 1


def test_types_and_help_of_every_family(make_broker):
    broker, port = metrics_broker(make_broker)
    types, _ = scrape(port)
    expected = {
        "sluice_topic_bytes_in_total": "counter",
        "sluice_topic_records_in_total": "counter",
        "sluice_topic_bytes_out_total": "counter",
        "sluice_topic_records_out_total": "counter",
        "sluice_requests_total": "counter",
        "sluice_request_duration_seconds": "histogram",
        "sluice_fsync_duration_seconds": "histogram",
        "sluice_log_start_offset": "gauge",
        "sluice_log_end_offset": "gauge",
        "sluice_consumer_group_lag": "gauge",
        "sluice_connections_open": "gauge",
        "process_resident_memory_bytes": "gauge",
        "process_cpu_seconds_total": "counter",
        "process_open_fds": "gauge",
    }
    assert {k: types.get(k) for k in expected} == expected


def test_health_and_http_errors(make_broker):
    broker, port = metrics_broker(make_broker)
    status, headers, body = http_get(port, "/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert b'"status":"serving"' in body
    assert http_get(port, "/nope")[0] == 404
    assert http_get(port, "/metrics", method="POST")[0] == 405
    status, headers, body = http_get(port, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def send_raw(port, payload, timeout=10):
    """Sends bytes, returns whatever comes back before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return recv_all(s)


def assert_refused(answer):
    """A 4xx status line, or the server closed without answering."""
    if answer:
        status = int(answer.split(b" ")[1])
        assert 400 <= status < 500, answer[:100]


def test_bad_clients_cannot_hurt_the_broker(make_broker):
    broker, port = metrics_broker(make_broker, settings={
        "metrics.max.connections": 4,
        "metrics.request.timeout.ms": 3000,
        "metrics.request.max.bytes": 1024,
    })
    assert_refused(send_raw(port, b"\x00\x00\x00\x10garbage\xff\xfe\r\n\r\n"))
    assert_refused(send_raw(port, b"NOT HTTP AT ALL\r\n\r\n"))
    huge = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
    answer = send_raw(port, huge)
    assert_refused(answer)
    if answer:
        assert answer.startswith(b"HTTP/1.1 431")

    # A client that never finishes its request is closed by the server.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(b"GET /metr")
        assert recv_all(slow) == b""

    # More idle connections than allowed: the extra one is closed at once.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
    try:
        time.sleep(0.2)  # let the endpoint accept them all
        assert send_raw(port, b"GET /health HTTP/1.1\r\n\r\n") == b""
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30
    while True:
        answer = send_raw(port, b"GET /health HTTP/1.1\r\n\r\n")
        if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.1 200")

    broker.assert_alive()
    import kafka_wire as kw
    with broker.conn() as c:
        err, apis = kw.api_versions_v0(c)
        assert err == 0 and apis
    assert scrape(port)[1][("sluice_requests_total", (("api", "ApiVersions"),))] >= 1


def listening_inodes_of(pid):
    """Socket inodes in LISTEN state owned by the process."""
    owned = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            owned.add(target[len("socket:["):-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in owned:
                    listening.append((fields[1], fields[9]))
    return listening


def test_metrics_off_by_default(make_broker):
    broker = make_broker()
    listening = listening_inodes_of(broker.proc.pid)
    assert len(listening) == 1, listening
    local = listening[0][0]
    assert int(local.split(":")[1], 16) == broker.port
    assert "metrics endpoint listening" not in broker.stderr_text()
