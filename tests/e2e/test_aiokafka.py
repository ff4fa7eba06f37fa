"""aiokafka produce (acks=all) + assign/seek consume round trip."""

import asyncio
import os

from conftest import create_topic, unique_topic


def test_aiokafka_round_trip(broker):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = unique_topic("aio")
    create_topic(broker.bootstrap, topic, partitions=2)
    msgs = [(f"k{i}".encode(), os.urandom(i * 11), [("h", str(i).encode())]) for i in range(40)]

    async def run():
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                enable_idempotence=False)
        await prod.start()
        try:
            metas = []
            for i, (k, v, h) in enumerate(msgs):
                metas.append(await prod.send_and_wait(topic, value=v, key=k, headers=h,
                                                      partition=i % 2, timestamp_ms=1_600_000_000_000 + i))
        finally:
            await prod.stop()

        cons = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
        await cons.start()
        try:
            tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
            cons.assign(tps)
            for tp in tps:
                cons.seek(tp, 0)
            got = []
            async def collect():
                while len(got) < len(msgs):
                    batch = await cons.getmany(timeout_ms=500)
                    for recs in batch.values():
                        got.extend(recs)
            await asyncio.wait_for(collect(), 60)
            end = await cons.end_offsets(tps)
        finally:
            await cons.stop()
        return metas, got, end

    metas, got, end = asyncio.run(run())
    assert [m.offset for m in metas[0::2]] == list(range(20))
    assert [m.offset for m in metas[1::2]] == list(range(20))
    assert len(got) == len(msgs)
    idx = {(r.partition, r.offset): r for r in got}
    for i, (m, (k, v, h)) in enumerate(zip(metas, msgs)):
        r = idx[(m.partition, m.offset)]
        assert r.key == k and r.value == v
        assert list(r.headers) == h
        assert r.timestamp == 1_600_000_000_000 + i
    assert set(end.values()) == {20}
