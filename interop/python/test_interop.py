"""Interop: centrifuge-python (client protocol, JSON over WebSocket) and cent (server HTTP API)
against a running roomcast server. Assertions are on exact offsets, payloads and users, so a
server that drops, reorders, duplicates or renumbers anything fails here."""

import asyncio

import pytest
from cent import (
    AsyncClient as ApiClient,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Disconnect,
    DisconnectRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition as ApiStreamPosition,
    UnsubscribeRequest,
)
from centrifuge import ClientState, StreamPosition, SubscriptionState

from conftest import (
    API_URL,
    TOKEN_SECRET,
    mint_token,
    new_client,
    offsets_and_data,
    subscribe,
    unique_channel,
)


async def test_connects_with_hs256_jwt(clients):
    client, _rec, client_id = await clients("alice-py")
    assert client.state == ClientState.CONNECTED
    assert isinstance(client_id, str) and client_id, "server must assign a client id"


async def test_token_with_wrong_secret_is_refused(clients):
    client, rec = new_client(mint_token("mallory-py", secret=TOKEN_SECRET + "-wrong"))
    clients.track(client)
    await client.connect()
    [disconnected] = await rec.wait_count("disconnected", 1)
    # Centrifugo answers a bad token with disconnect 3500 "invalid token"; an error reply
    # 101 "unauthorized" is also terminal for the SDK.
    assert disconnected.code in (3500, 101), disconnected
    assert rec.of("connected") == []
    assert client.state == ClientState.DISCONNECTED, "the SDK must not retry a refused token"


async def test_expired_token_gets_109_and_get_token_is_used(clients):
    asked = []

    async def get_token() -> str:
        asked.append(1)
        return mint_token("bob-py")

    client, rec = new_client(mint_token("bob-py", ttl=-60), get_token=get_token)
    clients.track(client)
    await client.connect()
    await rec.wait_count("connected", 1)
    errors = rec.of("error")
    assert len(errors) == 1, errors
    assert getattr(errors[0].error, "code", None) == 109, f"token expired is 109: {errors[0]!r}"
    assert len(asked) == 1, "get_token is called once after the 109"


async def test_subscribe_and_publish_from_client_and_api(clients, api):
    channel = unique_channel("py-live")
    client, _rec, client_id = await clients("alice-py")
    sub, rec, subscribed = await subscribe(client, channel)

    assert subscribed.channel == channel
    assert subscribed.recoverable is True, "default namespace forces recovery"
    assert subscribed.was_recovering is False
    assert subscribed.recovered is False
    assert subscribed.stream_position is not None
    assert subscribed.stream_position.offset == 0, "a new channel starts empty"
    epoch = subscribed.stream_position.epoch
    assert isinstance(epoch, str) and epoch, f"epoch must be a non-empty string: {epoch!r}"

    await sub.publish({"text": "from the python client"})
    [first] = await rec.wait_count("publication", 1)
    assert first.pub.offset == 1
    assert first.pub.data == {"text": "from the python client"}
    assert first.pub.info is not None, "a client publication carries the sender info"
    assert first.pub.info.user == "alice-py"
    assert first.pub.info.client == client_id

    result = await api.publish(PublishRequest(channel=channel, data={"text": "from cent"}))
    assert result.offset == 2
    assert result.epoch == epoch, "the API reports the same stream epoch"
    pubs = await rec.wait_count("publication", 2)
    assert pubs[1].pub.offset == 2
    assert pubs[1].pub.data == {"text": "from cent"}
    assert pubs[1].pub.info is None, "a server API publication has no client info"

    await asyncio.sleep(0.2)
    assert len(rec.of("publication")) == 2, "each publication is delivered exactly once"


async def test_history_through_sdk_and_api(clients, api):
    channel = unique_channel("py-history")
    client, _rec, _id = await clients("alice-py")
    sub, rec, _subscribed = await subscribe(client, channel)
    for n in (1, 2, 3):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n
    await rec.wait_count("publication", 3)

    full = await sub.history(limit=10)
    assert offsets_and_data(full.publications) == [(1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3})]
    assert full.offset == 3
    assert full.epoch

    since = await sub.history(limit=10, since=StreamPosition(offset=1, epoch=full.epoch))
    assert offsets_and_data(since.publications) == [(2, {"n": 2}), (3, {"n": 3})]

    newest = await sub.history(limit=2, reverse=True)
    assert offsets_and_data(newest.publications) == [(3, {"n": 3}), (2, {"n": 2})]

    # The same stream through the server API.
    via_api = await api.history(HistoryRequest(channel=channel, limit=10))
    assert [(p.offset, p.data) for p in via_api.publications] == [
        (1, {"n": 1}),
        (2, {"n": 2}),
        (3, {"n": 3}),
    ]
    assert via_api.offset == 3
    assert via_api.epoch == full.epoch
    after_two = await api.history(
        HistoryRequest(
            channel=channel, limit=10, since=ApiStreamPosition(offset=2, epoch=full.epoch)
        )
    )
    assert [p.offset for p in after_two.publications] == [3]


async def test_reconnect_recovers_missed_publications_in_order(clients, api):
    channel = unique_channel("py-recover")
    client, client_rec, _id = await clients("alice-py")
    sub, rec, subscribed = await subscribe(client, channel)
    epoch = subscribed.stream_position.epoch

    for n in (1, 2):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n
    await rec.wait_count("publication", 2)

    await client.disconnect()
    await client_rec.wait_count("disconnected", 1)
    assert client.state == ClientState.DISCONNECTED

    # Made while alice is away: through cent, and one by another user's client.
    for n in (3, 4):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n
    bob, _bob_rec, bob_id = await clients("bob-py")
    bob_sub, _bob_sub_rec, _ = await subscribe(bob, channel)
    await bob_sub.publish({"n": 5})
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 6}))).offset == 6
    await bob.disconnect()

    await client.connect()
    subscribed_events = await rec.wait_count("subscribed", 2)
    again = subscribed_events[1]
    assert again.was_recovering is True, "the SDK resubscribes with recover"
    assert again.recovered is True, f"all missed publications must be recovered: {again!r}"
    assert again.stream_position.epoch == epoch, "the epoch is stable"

    pubs = await rec.wait_count("publication", 6)
    assert offsets_and_data(pubs) == [(n, {"n": n}) for n in range(1, 7)]
    assert pubs[4].pub.info is not None and pubs[4].pub.info.user == "bob-py"
    assert pubs[4].pub.info.client == bob_id
    assert pubs[2].pub.info is None

    assert (await api.publish(PublishRequest(channel=channel, data={"n": 7}))).offset == 7
    after = await rec.wait_count("publication", 7)
    assert offsets_and_data(after[6:]) == [(7, {"n": 7})]
    await asyncio.sleep(0.2)
    assert len(rec.of("publication")) == 7, "nothing is delivered twice"


async def test_dropped_socket_mid_stream_loses_and_doubles_nothing(clients, api):
    channel = unique_channel("py-drop")
    client, client_rec, _id = await clients("alice-py")
    _sub, rec, _ = await subscribe(client, channel)
    total = 30
    for n in range(1, total + 1):
        if n == 10:
            # Abort the TCP connection under the SDK (no close handshake), as a network
            # loss would; the SDK reconnects by itself and resubscribes with recover while
            # publishing goes on.
            client._conn.transport.abort()
        result = await api.publish(PublishRequest(channel=channel, data={"n": n}))
        assert result.offset == n
        await asyncio.sleep(0.01)
    # code 1 is "transport closed": the reconnect after the drop (code 0 was connect()).
    await client_rec.wait_count("connecting", 1, where=lambda c: c.code == 1)
    pubs = await rec.wait_count("publication", total)
    assert [p.pub.offset for p in pubs] == list(range(1, total + 1))
    assert [p.pub.data["n"] for p in pubs] == list(range(1, total + 1))
    resubscribed = rec.of("subscribed")[1:]
    assert len(resubscribed) == 1, resubscribed
    assert resubscribed[0].was_recovering is True
    assert resubscribed[0].recovered is True
    await asyncio.sleep(0.2)
    assert len(rec.of("publication")) == total, "nothing is delivered twice"


async def test_join_leave_and_presence(clients, api):
    channel = unique_channel("py-presence")
    alice, _rec, alice_id = await clients("alice-py")
    alice_sub, rec, _ = await subscribe(alice, channel, join_leave=True)
    bob, _bob_rec, bob_id = await clients("bob-py")
    bob_sub, _bob_sub_rec, _ = await subscribe(bob, channel, join_leave=True)

    joins = await rec.wait_count("join", 1, where=lambda j: j.info.user == "bob-py")
    assert len(joins) == 1, "bob joins once"
    assert joins[0].info.client == bob_id

    presence = await alice_sub.presence()
    assert {k: (v.client, v.user) for k, v in presence.clients.items()} == {
        alice_id: (alice_id, "alice-py"),
        bob_id: (bob_id, "bob-py"),
    }
    stats = await alice_sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)

    # The same through the server API.
    via_api = await api.presence(PresenceRequest(channel=channel))
    assert {k: (v.client, v.user) for k, v in via_api.presence.items()} == {
        alice_id: (alice_id, "alice-py"),
        bob_id: (bob_id, "bob-py"),
    }
    api_stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
    assert (api_stats.num_clients, api_stats.num_users) == (2, 2)

    await bob_sub.unsubscribe()
    leaves = await rec.wait_count("leave", 1, where=lambda l: l.info.user == "bob-py")
    assert leaves[0].info.client == bob_id
    after = await alice_sub.presence()
    assert list(after.clients) == [alice_id]


async def test_idempotent_publish_through_cent(clients, api):
    channel = unique_channel("py-idem")
    client, _rec, _id = await clients("alice-py")
    _sub, rec, _ = await subscribe(client, channel)
    request = PublishRequest(channel=channel, data={"n": 1}, idempotency_key="interop-once")
    first = await api.publish(request)
    retry = await api.publish(request)
    assert first.offset == 1
    assert (retry.offset, retry.epoch) == (first.offset, first.epoch), "a retry is the same publication"
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 2}))).offset == 2
    pubs = await rec.wait_count("publication", 2)
    assert offsets_and_data(pubs) == [(1, {"n": 1}), (2, {"n": 2})]
    await asyncio.sleep(0.2)
    assert len(rec.of("publication")) == 2, "the retried publish is delivered once"


async def test_cent_with_wrong_api_key_is_unauthorized():
    async with ApiClient(API_URL, api_key="not-the-key") as wrong:
        with pytest.raises(CentUnauthorizedError):
            await wrong.publish(PublishRequest(channel=unique_channel("py-nokey"), data={}))


async def test_cent_publish_to_unknown_namespace_is_an_api_error(api):
    with pytest.raises(CentApiResponseError) as err:
        await api.publish(PublishRequest(channel="no-such-namespace:room", data={}))
    assert err.value.code == 102, "unknown channel is error 102"


async def test_token_channels_claim_subscribes_server_side(clients, api):
    channel = unique_channel("py-server-sub")
    client, rec = new_client(mint_token("carol-py", channels=[channel]))
    clients.track(client)
    await client.connect()
    # The personal channel (`#carol-py`) is subscribed server-side too: wait for this one.
    [subscribed] = await rec.wait_count("subscribed", 1, lambda c: c.channel == channel)
    assert subscribed.channel == channel
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 1}))).offset == 1
    [pub] = await rec.wait_count("publication", 1)
    assert pub.channel == channel
    assert (pub.pub.offset, pub.pub.data) == (1, {"n": 1})


async def test_cent_unsubscribe_reaches_the_subscription(clients, api):
    channel = unique_channel("py-api-unsub")
    client, _rec, _id = await clients("erin-py")
    sub, rec, _ = await subscribe(client, channel)
    await api.unsubscribe(UnsubscribeRequest(user="erin-py", channel=channel))
    [unsubscribed] = await rec.wait_count("unsubscribed", 1)
    assert unsubscribed.code == 2000, f"server unsubscribe is code 2000: {unsubscribed!r}"
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert client.state == ClientState.CONNECTED, "only the subscription ends"
    stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (0, 0)


async def test_cent_disconnect_is_final_by_default(clients, api):
    client, rec, _id = await clients("frank-py")
    await api.disconnect(DisconnectRequest(user="frank-py"))
    [disconnected] = await rec.wait_count("disconnected", 1)
    assert disconnected.code == 3503, f"force disconnect (no reconnect) is 3503: {disconnected!r}"
    await asyncio.sleep(0.5)
    assert client.state == ClientState.DISCONNECTED, "the SDK does not reconnect"
    assert len(rec.of("connected")) == 1


async def test_cent_force_reconnect_then_sdk_recovers(clients, api):
    channel = unique_channel("py-api-reconnect")
    client, client_rec, first_id = await clients("grace-py")
    _sub, rec, _ = await subscribe(client, channel)
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 1}))).offset == 1
    await rec.wait_count("publication", 1)
    await api.disconnect(
        DisconnectRequest(user="grace-py", disconnect=Disconnect(code=3011, reason="force reconnect"))
    )
    # Published while the SDK is reconnecting (or already back: recovery covers both).
    for n in (2, 3):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n
    connected = await client_rec.wait_count("connected", 2)
    assert connected[1].client != first_id, "a new connection"
    pubs = await rec.wait_count("publication", 3)
    assert offsets_and_data(pubs) == [(1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3})]
    resubscribed = rec.of("subscribed")[1:]
    assert len(resubscribed) == 1 and resubscribed[0].was_recovering is True
    assert resubscribed[0].recovered is True
    assert client_rec.of("disconnected") == [], "a reconnect code never reports disconnected"


async def test_cent_broadcast_info_and_channels(clients, api):
    one, two = unique_channel("py-bc-one"), unique_channel("py-bc-two")
    client, _rec, _id = await clients("heidi-py")
    _s1, rec1, _ = await subscribe(client, one)
    _s2, rec2, _ = await subscribe(client, two)
    assert (await api.publish(PublishRequest(channel=two, data={"first": True}))).offset == 1
    result = await api.broadcast(BroadcastRequest(channels=[one, two], data={"to": "both"}))
    assert [r.error for r in result.responses] == [None, None], result
    assert [r.result.offset for r in result.responses] == [1, 2], "each channel numbers on its own"
    assert offsets_and_data(await rec1.wait_count("publication", 1)) == [(1, {"to": "both"})]
    assert offsets_and_data(await rec2.wait_count("publication", 2)) == [
        (1, {"first": True}),
        (2, {"to": "both"}),
    ]

    info = await api.info(InfoRequest())
    assert len(info.nodes) == 1
    assert info.nodes[0].uid and info.nodes[0].num_clients >= 1 and info.nodes[0].num_users >= 1

    channels = await api.channels(ChannelsRequest(pattern="py-bc-*"))
    assert channels.channels[one].num_clients == 1
    assert channels.channels[two].num_clients == 1


# The recovery reply is one message over the outbox cap (1 MiB); replies to the client's own
# commands do not count against it (this test caught the server closing such connections).
async def test_large_gap_is_recovered_in_full(clients, api):
    channel = unique_channel("py-big-gap")
    client, client_rec, _id = await clients("alice-py")
    _sub, rec, _ = await subscribe(client, channel)
    await client.disconnect()
    await client_rec.wait_count("disconnected", 1)

    count, pad = 2000, "p" * 1024  # ~2 MB missed: far below the 10,000-publication limit
    pending = iter(range(count))
    published = {}

    async def publisher():
        for i in pending:
            result = await api.publish(PublishRequest(channel=channel, data={"i": i, "pad": pad}))
            assert result.offset not in published
            published[result.offset] = i

    await asyncio.gather(*(publisher() for _ in range(32)))
    assert sorted(published) == list(range(1, count + 1))

    await client.connect()
    subscribed = await rec.wait_count("subscribed", 2)
    assert subscribed[1].recovered is True, subscribed[1]
    pubs = await rec.wait_count("publication", count)
    assert [p.pub.offset for p in pubs] == list(range(1, count + 1))
    assert [p.pub.data["i"] for p in pubs] == [published[o] for o in range(1, count + 1)]
