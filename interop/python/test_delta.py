"""Fossil delta compression (`delta=DeltaType.FOSSIL`) through centrifuge-python, JSON and
protobuf: run.sh configures namespace `delta` with `allowed_delta_types = ["fossil"]`."""

import json

import pytest
from cent import PublishRequest
from centrifuge import DeltaType

from conftest import subscribe, unique_channel


def doc(n):
    """A document that changes a little from one publication to the next."""
    rows = [{"id": i, "score": n if i == n % 20 else i * 10, "label": f"row {i}"} for i in range(20)]
    return {"title": 'Board, ünïcödé 日本語 "quoted"\n', "rows": rows, "rev": n}


def decoded(pubs, protobuf):
    return [json.loads(p.pub.data) if protobuf else p.pub.data for p in pubs]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_delta_publications_arrive_whole_and_as_deltas(clients, api, protobuf):
    channel = "delta:" + unique_channel("py-delta")
    client, _rec, _id = await clients("alice-delta", use_protobuf=protobuf)
    sub, rec, _subscribed = await subscribe(client, channel, delta=DeltaType.FOSSIL)
    assert sub._delta_negotiated, "the reply says delta: true"
    for n in range(1, 9):
        assert (await api.publish(PublishRequest(channel=channel, data=doc(n)))).offset == n
    pubs = await rec.wait_count("publication", 8)
    assert decoded(pubs, protobuf) == [doc(n) for n in range(1, 9)]
    assert [p.pub.offset for p in pubs] == list(range(1, 9))
    assert [p.pub.delta for p in pubs] == [False] + [True] * 7, "full first, then deltas"


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_delta_survives_a_reconnect_with_recovery(clients, api, protobuf):
    channel = "delta:" + unique_channel("py-delta-recover")
    client, client_rec, _id = await clients("bob-delta", use_protobuf=protobuf)
    _sub, rec, _subscribed = await subscribe(client, channel, delta=DeltaType.FOSSIL)
    for n in (1, 2, 3):
        await api.publish(PublishRequest(channel=channel, data=doc(n)))
    await rec.wait_count("publication", 3)
    await client.disconnect()
    await client_rec.wait_count("disconnected", 1)
    for n in (4, 5, 6):
        await api.publish(PublishRequest(channel=channel, data=doc(n)))
    await client.connect()
    again = (await rec.wait_count("subscribed", 2))[1]
    assert again.recovered is True, f"{again!r}"
    await rec.wait_count("publication", 6)
    for n in (7, 8, 9):
        await api.publish(PublishRequest(channel=channel, data=doc(n)))
    pubs = await rec.wait_count("publication", 9)
    assert decoded(pubs, protobuf) == [doc(n) for n in range(1, 10)]
    assert [p.pub.delta for p in pubs[6:]] == [False, True, True], "full after recovery, then deltas"


async def test_delta_not_allowed_means_full_publications(clients, api):
    channel = unique_channel("py-no-delta")
    client, _rec, _id = await clients("carol-delta")
    sub, rec, _subscribed = await subscribe(client, channel, delta=DeltaType.FOSSIL)
    assert not sub._delta_negotiated
    for n in (1, 2):
        await api.publish(PublishRequest(channel=channel, data=doc(n)))
    pubs = await rec.wait_count("publication", 2)
    assert [p.pub.data for p in pubs] == [doc(1), doc(2)]
    assert not any(p.pub.delta for p in pubs)
