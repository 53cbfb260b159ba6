"""Interop: `cent`'s whole client surface against roomcast (issue 13). Every method of the
installed cent, with its optional fields set; what roomcast does with each field is in the
README ("Server HTTP API"). Methods of Centrifugo PRO (user status, tokens, devices, push
notifications) are not served: each must answer HTTP 404, which cent raises as a
transport error, not hang or break the client. (`history_remove` is left out: the
history-retention work serves it and tests it.)"""

import asyncio
import base64
import json
import time

import pytest
from cent import (
    BatchRequest,
    BlockUserRequest,
    BroadcastRequest,
    CancelPushRequest,
    ChannelOptionsOverride,
    ChannelsRequest,
    DeleteUserStatusRequest,
    DeviceListRequest,
    DeviceRegisterRequest,
    DeviceRemoveRequest,
    DeviceTopicListRequest,
    DeviceTopicUpdateRequest,
    DeviceUpdateRequest,
    Disconnect,
    DisconnectRequest,
    GetUserStatusRequest,
    HistoryRequest,
    InfoRequest,
    InvalidateUserTokensRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    RevokeTokenRequest,
    SendPushNotificationRequest,
    StreamPosition,
    SubscribeRequest,
    UnblockUserRequest,
    UnsubscribeRequest,
    UpdatePushStatusRequest,
    UpdateUserStatusRequest,
    UserTopicListRequest,
)
from cent.dto import BoolValue, PushNotification, PushRecipient, UserTopicUpdateRequest
from cent.exceptions import CentApiResponseError, CentTransportError
from centrifuge import ClientState

from conftest import mint_token, new_client, offsets_and_data, subscribe, unique_channel


def b64(value) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


async def test_publish_and_broadcast_with_every_field(clients, api):
    one, two = unique_channel("py-all-pub"), unique_channel("py-all-bc")
    client, _rec, _id = await clients("pub-all-py")
    _s1, rec1, _ = await subscribe(client, one)
    _s2, rec2, _ = await subscribe(client, two)
    r = await api.publish(
        PublishRequest(
            channel=one,
            data={"n": 1},
            skip_history=False,
            tags={"kind": "greeting"},
            idempotency_key=f"{one}-1",
        )
    )
    assert r.offset == 1 and r.epoch
    # b64data instead of data: it must decode to JSON, which subscribers get.
    r = await api.publish(PublishRequest(channel=one, data=None, b64data=b64({"n": 2})))
    assert r.offset == 2
    r = await api.broadcast(
        BroadcastRequest(
            channels=[one, two],
            data={"n": 3},
            skip_history=True,
            tags={"k": "v"},
            idempotency_key=f"{two}-3",
        )
    )
    assert [x.result.offset for x in r.responses] == [3, 1]
    r = await api.broadcast(BroadcastRequest(channels=[two], data=None, b64data=b64("four")))
    assert r.responses[0].result.offset == 2
    assert offsets_and_data(await rec1.wait_count("publication", 3)) == [
        (1, {"n": 1}),
        (2, {"n": 2}),
        (3, {"n": 3}),
    ]
    assert offsets_and_data(await rec2.wait_count("publication", 2)) == [(1, {"n": 3}), (2, "four")]
    # b64data that is not JSON is refused (HTTP 400: cent's transport error), nothing stored.
    with pytest.raises(CentTransportError) as e:
        await api.publish(PublishRequest(channel=one, data=None, b64data="bm90IGpzb24="))
    assert e.value.status_code == 400


async def test_history_presence_channels_info_with_every_field(clients, api):
    channel = unique_channel("py-all-reads")
    client, _rec, _id = await clients("reads-all-py")
    await subscribe(client, channel)
    for n in range(1, 6):
        await api.publish(PublishRequest(channel=channel, data={"n": n}))
    top = await api.history(HistoryRequest(channel=channel, limit=0))
    assert top.offset == 5 and top.publications == []
    page = await api.history(
        HistoryRequest(
            channel=channel,
            limit=2,
            since=StreamPosition(offset=1, epoch=top.epoch),
            reverse=False,
        )
    )
    assert offsets_and_data(page.publications) == [(2, {"n": 2}), (3, {"n": 3})]
    back = await api.history(HistoryRequest(channel=channel, limit=2, reverse=True))
    assert [p.offset for p in back.publications] == [5, 4]
    with pytest.raises(CentApiResponseError) as e:
        await api.history(
            HistoryRequest(channel=channel, limit=1, since=StreamPosition(offset=1, epoch="other"))
        )
    assert e.value.code == 112, "another epoch is an unrecoverable position"
    presence = await api.presence(PresenceRequest(channel=channel))
    assert [c.user for c in presence.presence.values()] == ["reads-all-py"]
    stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    channels = await api.channels(ChannelsRequest(pattern=channel))
    assert list(channels.channels) == [channel]
    info = await api.info(InfoRequest())
    assert info.nodes[0].num_channels >= 1


async def test_server_side_subscribe_with_every_field(clients, api):
    channel = unique_channel("py-all-sub")
    client, rec, client_id = await clients("sub-all-py")
    other, other_rec, _ = await clients("sub-all-py")
    await api.publish(PublishRequest(channel=channel, data={"n": 1}))
    epoch = (await api.history(HistoryRequest(channel=channel, limit=0))).epoch
    await api.subscribe(
        SubscribeRequest(
            user="sub-all-py",
            channel=channel,
            client=client_id,
            session="",
            info={"seat": 7},
            data={"welcome": True},
            recover_since=StreamPosition(offset=1, epoch=epoch),
            override=ChannelOptionsOverride(
                presence=BoolValue(value=True),
                join_leave=BoolValue(value=False),
                force_push_join_leave=BoolValue(value=False),
                force_positioning=BoolValue(value=True),
                force_recovery=BoolValue(value=True),
            ),
        )
    )
    [subscribed] = await rec.wait_count("subscribed", 1, lambda c: c.channel == channel)
    assert subscribed.recoverable is True
    assert subscribed.stream_position.offset == 1 and subscribed.stream_position.epoch == epoch
    await api.publish(PublishRequest(channel=channel, data={"n": 2}))
    [pub] = await rec.wait_count("publication", 1, lambda c: c.channel == channel)
    assert (pub.pub.offset, pub.pub.data) == (2, {"n": 2})
    presence = await api.presence(PresenceRequest(channel=channel))
    [entry] = presence.presence.values()
    assert (entry.client, entry.chan_info) == (client_id, {"seat": 7})
    # `client` targeted one connection: the user's other one was not subscribed.
    assert other_rec.of("subscribed") == [] or all(
        c.channel != channel for c in other_rec.of("subscribed")
    )
    # b64info instead of info.
    second = unique_channel("py-all-sub-b64")
    await api.subscribe(SubscribeRequest(user="sub-all-py", channel=second, b64info=b64({"b": 1})))
    await rec.wait_count("subscribed", 1, lambda c: c.channel == second)
    await other_rec.wait_count("subscribed", 1, lambda c: c.channel == second)
    presence = await api.presence(PresenceRequest(channel=second))
    assert [c.chan_info for c in presence.presence.values()] == [{"b": 1}, {"b": 1}]
    # And unsubscribe with every field, for the one client.
    await api.unsubscribe(
        UnsubscribeRequest(user="sub-all-py", channel=second, client=client_id, session="")
    )
    stats = await api.presence_stats(PresenceStatsRequest(channel=second))
    for _ in range(50):
        if stats.num_clients == 1:
            break
        await asyncio.sleep(0.05)
        stats = await api.presence_stats(PresenceStatsRequest(channel=second))
    assert stats.num_clients == 1, "only the named client left"
    assert other.state == ClientState.CONNECTED


async def test_refresh_and_disconnect_with_every_field(clients, api):
    # A connection whose token expires in 3 s, extended by refresh past that.
    client, rec = new_client(mint_token("refresh-all-py", ttl=3))
    clients.track(client)
    await client.connect()
    [connected] = await rec.wait_count("connected", 1)
    await api.refresh(
        RefreshRequest(
            user="refresh-all-py",
            client=connected.client,
            session="",
            expired=False,
            expire_at=int(time.time()) + 3600,
        )
    )
    await asyncio.sleep(4)
    assert client.state == ClientState.CONNECTED and rec.of("disconnected") == []
    assert len(rec.of("connected")) == 1, "not reconnected either: the connection lived on"
    # expired: closed now as expired (3005); the SDK reconnects with a fresh token.
    await api.refresh(RefreshRequest(user="refresh-all-py", expired=True))
    await rec.wait_count("connecting", 1, lambda c: c.code == 3005)

    keep, keep_rec, keep_id = await clients("disc-all-py")
    gone, gone_rec, _ = await clients("disc-all-py")
    await api.disconnect(
        DisconnectRequest(
            user="disc-all-py",
            client=None,
            session="",
            whitelist=[keep_id],
            disconnect=Disconnect(code=3503, reason="go"),
        )
    )
    [d] = await gone_rec.wait_count("disconnected", 1)
    assert d.code == 3503
    await asyncio.sleep(0.3)
    assert keep.state == ClientState.CONNECTED, "the whitelisted client stays"


async def test_batch_sequential_and_parallel(clients, api):
    channel = unique_channel("py-all-batch")
    r = await api.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channel, data={"n": 1}),
                PublishRequest(channel=channel, data={"n": 2}),
                HistoryRequest(channel=channel, limit=-1),
                PresenceStatsRequest(channel=channel),
                InfoRequest(),
            ],
            parallel=False,
        )
    )
    publish1, publish2, history, stats, info = r.replies
    assert (publish1.offset, publish2.offset) == (1, 2)
    assert offsets_and_data(history.publications) == [(1, {"n": 1}), (2, {"n": 2})]
    assert stats.num_clients == 0 and len(info.nodes) == 1
    r = await api.batch(
        BatchRequest(
            requests=[PublishRequest(channel=f"{channel}-{i}", data=i) for i in range(20)],
            parallel=True,
        )
    )
    assert [x.offset for x in r.replies] == [1] * 20


# `connections` is not here: roomcast serves a method of that name for its admin page, with a
# smaller result than PRO's (README "Server HTTP API"), which cent cannot decode.
PRO_ONLY = [
    ("update_user_status", UpdateUserStatusRequest(users=["u"])),
    ("get_user_status", GetUserStatusRequest(users=["u"])),
    ("delete_user_status", DeleteUserStatusRequest(users=["u"])),
    ("block_user", BlockUserRequest(user="u", expire_at=1)),
    ("unblock_user", UnblockUserRequest(user="u")),
    ("revoke_token", RevokeTokenRequest(uid="t", expire_at=1)),
    ("invalidate_user_tokens", InvalidateUserTokensRequest(user="u", issued_before=1)),
    ("device_register", DeviceRegisterRequest(provider="fcm", token="t", platform="web")),
    ("device_update", DeviceUpdateRequest(ids=["d"])),
    ("device_remove", DeviceRemoveRequest(ids=["d"])),
    ("device_list", DeviceListRequest(limit=1)),
    ("device_topic_list", DeviceTopicListRequest(limit=1)),
    ("device_topic_update", DeviceTopicUpdateRequest(device_id="d", op="add", topics=["t"])),
    ("user_topic_list", UserTopicListRequest(limit=1)),
    ("user_topic_update", UserTopicUpdateRequest(user="u", op="add", topics=["t"])),
    (
        "send_push_notification",
        SendPushNotificationRequest(
            recipient=PushRecipient(fcm_tokens=["t"]), notification=PushNotification()
        ),
    ),
    ("update_push_status", UpdatePushStatusRequest(analytics_uid="a", status="delivered")),
    ("cancel_push", CancelPushRequest(uid="p")),
]


@pytest.mark.parametrize("method,request_", PRO_ONLY, ids=[m for m, _ in PRO_ONLY])
async def test_pro_methods_answer_not_found(api, method, request_):
    with pytest.raises(CentTransportError) as e:
        await getattr(api, method)(request_)
    assert e.value.status_code == 404
    # The client is still usable.
    assert len((await api.info(InfoRequest())).nodes) == 1
