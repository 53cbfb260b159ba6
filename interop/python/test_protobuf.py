"""centrifuge-python with use_protobuf=True against roomcast: the protobuf format over
WebSocket. Data is bytes in this format; roomcast stores JSON, so the tests publish the
UTF-8 bytes of JSON text and read the same bytes back (and JSON through the API)."""

import asyncio
import json

from cent import HistoryRequest, PublishRequest
from centrifuge import ClientState

from conftest import subscribe, unique_channel


def pb_data(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def offsets_and_json(pubs):
    out = []
    for p in pubs:
        pub = getattr(p, "pub", p)
        out.append((pub.offset, json.loads(pub.data)))
    return out


async def test_protobuf_connect_subscribe_publish_history_presence(clients, api):
    channel = unique_channel("py-pb")
    client, _rec, client_id = await clients("alice-pb", use_protobuf=True)
    sub, rec, subscribed = await subscribe(client, channel)
    assert subscribed.recoverable is True
    epoch = subscribed.stream_position.epoch

    await sub.publish(pb_data({"text": "hi", "s": 'é"\n'}))
    assert (await api.publish(PublishRequest(channel=channel, data={"from": "api"}))).offset == 2
    pubs = await rec.wait_count("publication", 2)
    assert offsets_and_json(pubs) == [(1, {"text": "hi", "s": 'é"\n'}), (2, {"from": "api"})]
    assert pubs[0].pub.info.user == "alice-pb" and pubs[0].pub.info.client == client_id

    history = await sub.history(limit=10)
    assert offsets_and_json(history.publications) == offsets_and_json(pubs)
    assert (history.offset, history.epoch) == (2, epoch)
    # What a protobuf client published is JSON for the server API.
    api_history = await api.history(HistoryRequest(channel=channel, limit=10))
    assert api_history.publications[0].data == {"text": "hi", "s": 'é"\n'}

    presence = await sub.presence()
    assert presence.clients[client_id].user == "alice-pb"
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_protobuf_reconnect_recovers_missed_publications(clients, api):
    channel = unique_channel("py-pb-recover")
    client, client_rec, _id = await clients("alice-pb", use_protobuf=True)
    _sub, rec, subscribed = await subscribe(client, channel)
    epoch = subscribed.stream_position.epoch
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 1}))).offset == 1
    await rec.wait_count("publication", 1)

    await client.disconnect()
    await client_rec.wait_count("disconnected", 1)
    assert client.state == ClientState.DISCONNECTED
    for n in (2, 3, 4):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n

    await client.connect()
    again = (await rec.wait_count("subscribed", 2))[1]
    assert again.was_recovering is True
    assert again.recovered is True, f"{again!r}"
    assert again.stream_position.epoch == epoch
    pubs = await rec.wait_count("publication", 4)
    assert offsets_and_json(pubs) == [(n, {"n": n}) for n in range(1, 5)]

    assert (await api.publish(PublishRequest(channel=channel, data={"n": 5}))).offset == 5
    await rec.wait_count("publication", 5)
    await asyncio.sleep(0.2)
    assert len(rec.of("publication")) == 5, "nothing is delivered twice"
