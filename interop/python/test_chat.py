"""Interop of the chat layer with the unmodified centrifuge-python SDK, as a chat client uses
it: members added through the server API (plain HTTP), the room list with unread badges in
one `client.rpc("roomcast.rooms")` round trip after connect, and a read on one client
clearing the badge on the other, which hears of it on the user's personal channel."""

import asyncio
import json
import secrets

import aiohttp
from centrifuge import ReplyError

from conftest import API_KEY, API_URL, subscribe, unique_channel


async def call_api(method: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{API_URL}/{method}", data=json.dumps(body), headers={"X-API-Key": API_KEY}
        ) as res:
            assert res.status == 200, await res.text()
            reply = await res.json()
    assert "error" not in reply, reply
    return reply["result"]


async def test_room_list_badges_and_a_read_clearing_the_other_clients_badge(clients):
    user = f"py-chat-{secrets.token_hex(4)}"
    older, newer = unique_channel("py-chat-a"), unique_channel("py-chat-b")
    for channel in (older, newer):
        assert (await call_api("add_members", {"channel": channel, "users": [user]}))["added"] == 1
    for i in range(3):
        await call_api("publish", {"channel": older, "data": {"text": f"a{i}"}})
    await asyncio.sleep(0.005)
    await call_api("publish", {"channel": newer, "data": {"text": "b"}})

    phone, _, _ = await clients(user)
    laptop, _, _ = await clients(user)
    _sub, events, _ = await subscribe(laptop, f"#{user}")

    listing = (await phone.rpc("roomcast.rooms", {})).data
    assert [(r["channel"], r["unread"]) for r in listing["rooms"]] == [(newer, 1), (older, 3)]
    assert listing["total_unread"] == 4
    assert listing["rooms"][0]["preview"]["data"] == {"text": "b"}

    read = (await phone.rpc("roomcast.read", {"channel": older, "offset": 3})).data
    assert read == {"channel": older, "cursor": 3, "top": 3, "unread": 0}
    [event] = await events.wait_count("publication", 1)
    assert event.pub.data == {"type": "read", "channel": older, "cursor": 3, "top": 3, "unread": 0}
    after = (await laptop.rpc("roomcast.rooms", {})).data
    assert [(r["channel"], r["unread"]) for r in after["rooms"]] == [(newer, 1), (older, 0)]
    assert after["total_unread"] == 1

    # The server API sees the same cursor; a bad offset is a clear error over rpc.
    unread = await call_api("unread", {"user": user, "channels": [older]})
    assert unread["channels"][0]["cursor"] == 3
    try:
        await phone.rpc("roomcast.read", {"channel": older, "offset": "three"})
        raise AssertionError("a string offset must be refused")
    except ReplyError as e:
        assert e.code == 107, e
