"""Interop: a deleted publication and `history_remove` as centrifuge-python and cent see them.
The live deletion notice is a publication without an offset (`data` None, `tags["deleted"]`
the offset); history and recovery carry a tombstone at its offset, so offsets stay contiguous;
after `history_remove` the position stays and a client behind it is refused with 112 (the SDK
sets the reject-unrecovered flag when given `get_state`) and calls `get_state` again."""

import asyncio
import json
import urllib.request

from cent import HistoryRemoveRequest, PublishRequest
from centrifuge import StreamPosition

from conftest import API_KEY, API_URL, WAIT_S, subscribe, unique_channel


def _post(method: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{API_URL}/{method}",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=WAIT_S) as res:
        return json.loads(res.read())


async def delete_publication(channel: str, offset: int) -> dict:
    """`delete_publication` (not in cent): plain HTTP, off the event loop."""
    return await asyncio.to_thread(_post, "delete_publication", {"channel": channel, "offset": offset})


async def test_deleted_publication_notice_history_and_recovery(clients, api):
    channel = unique_channel("py-delete")
    client, _rec, _id = await clients("alice-py")
    sub, rec, subscribed = await subscribe(client, channel)
    epoch = subscribed.stream_position.epoch
    for n in (1, 2, 3):
        assert (await api.publish(PublishRequest(channel=channel, data={"n": n}))).offset == n
    await rec.wait_count("publication", 3)

    assert await delete_publication(channel, 2) == {"result": {}}
    pubs = await rec.wait_count("publication", 4)
    notice = pubs[3].pub
    assert notice.offset == 0, "a notice has no offset"
    assert notice.data is None
    assert notice.tags == {"deleted": "2"}

    history = await sub.history(limit=10)
    assert [p.offset for p in history.publications] == [1, 2, 3]
    assert history.publications[1].data is None
    assert history.publications[1].tags == {"deleted": "2"}
    assert history.publications[2].data == {"n": 3}

    await sub.unsubscribe()
    client.remove_subscription(sub)

    # A subscriber whose app state is at offset 1 (get_state) recovers the tombstone and
    # what follows.
    async def at_one(_channel):
        return StreamPosition(offset=1, epoch=epoch)

    again, rec2, back = await subscribe(client, channel, get_state=at_one)
    assert back.recovered is True, back
    recovered = await rec2.wait_count("publication", 2)
    assert [(p.pub.offset, p.pub.data, p.pub.tags) for p in recovered] == [
        (2, None, {"deleted": "2"}),
        (3, {"n": 3}, {}),
    ]
    await again.unsubscribe()
    client.remove_subscription(again)

    # After history_remove the position stays; offset 1 is unrecoverable: the SDK asked
    # for error 112 (its get_state flag) and calls get_state again, and the position it
    # then returns (the top) subscribes.
    await api.history_remove(HistoryRemoveRequest(channel=channel))
    asked = []

    async def reload(_channel):
        asked.append(_channel)
        return StreamPosition(offset=1 if len(asked) == 1 else 3, epoch=epoch)

    behind, _rec3, cleared = await subscribe(client, channel, get_state=reload)
    assert len(asked) == 2, f"get_state called again after 112: {asked}"
    assert cleared.stream_position.offset == 3
    assert (await api.publish(PublishRequest(channel=channel, data={"n": 4}))).offset == 4
