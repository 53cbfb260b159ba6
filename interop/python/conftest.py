"""Shared helpers for the centrifuge-python / cent interop tests.

The server under test is described by environment variables set by interop/run.sh:
  INTEROP_URL           http://127.0.0.1:PORT  (HTTP base; the WebSocket URL is derived)
  INTEROP_API_KEY       key for POST /api/<method> (cent sends it as X-API-Key)
  INTEROP_TOKEN_SECRET  HMAC secret the server verifies connection JWTs with

Events are recorded in arrival order by `Recorder` handlers, and tests wait for "the Nth
publication" with a deadline instead of sleeping.
"""

import asyncio
import logging
import os
import secrets
import time
from typing import Any, Callable, List, Optional, Tuple

import jwt
import pytest
from cent import AsyncClient as ApiClient
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests through interop/run.sh", returncode=2)
    return value


BASE_URL = _require_env("INTEROP_URL").rstrip("/")
WS_URL = BASE_URL.replace("http", "ws", 1) + "/connection/websocket"
API_URL = BASE_URL + "/api"
API_KEY = _require_env("INTEROP_API_KEY")
TOKEN_SECRET = _require_env("INTEROP_TOKEN_SECRET")

# The SDK's own debug log carries the frames; the websockets library's frame dump repeats them.
logging.getLogger("websockets").setLevel(logging.INFO)

# Every wait is bounded by this, so a missing event fails the test instead of hanging it.
WAIT_S = float(os.environ.get("INTEROP_WAIT_MS", "5000")) / 1000


def mint_token(user: str, ttl: int = 300, secret: str = TOKEN_SECRET, **claims: Any) -> str:
    """A connection JWT (HS256) for `user`, valid for `ttl` seconds (negative: expired)."""
    payload = {"sub": user, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def unique_channel(prefix: str) -> str:
    """A channel in the default namespace, unique to this run so reruns never collide."""
    return f"{prefix}-{secrets.token_hex(6)}"


class Recorder:
    """Arrival-ordered (name, ctx) events, with bounded waits on them."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Any]] = []
        self._changed = asyncio.Condition()

    async def record(self, name: str, ctx: Any) -> None:
        self.events.append((name, ctx))
        async with self._changed:
            self._changed.notify_all()

    def of(self, name: str) -> List[Any]:
        return [ctx for (n, ctx) in self.events if n == name]

    async def wait_count(
        self, name: str, count: int, where: Optional[Callable[[Any], bool]] = None
    ) -> List[Any]:
        """Returns of(name) (filtered by `where`) once it has at least `count` entries."""
        where = where or (lambda _: True)

        def matching() -> List[Any]:
            return [ctx for ctx in self.of(name) if where(ctx)]

        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(matching()) >= count), WAIT_S
                )
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out after {WAIT_S}s waiting for {count} {name!r} event(s); "
                f"recorded: {self.events!r}"
            ) from None
        return matching()


class ClientRecorder(ClientEventHandler):
    def __init__(self) -> None:
        self.rec = Recorder()

    async def on_connecting(self, ctx):
        await self.rec.record("connecting", ctx)

    async def on_connected(self, ctx):
        await self.rec.record("connected", ctx)

    async def on_disconnected(self, ctx):
        await self.rec.record("disconnected", ctx)

    async def on_error(self, ctx):
        await self.rec.record("error", ctx)

    async def on_subscribed(self, ctx):
        await self.rec.record("subscribed", ctx)

    async def on_publication(self, ctx):
        await self.rec.record("publication", ctx)


class SubRecorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.rec = Recorder()

    async def on_subscribing(self, ctx):
        await self.rec.record("subscribing", ctx)

    async def on_subscribed(self, ctx):
        await self.rec.record("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        await self.rec.record("unsubscribed", ctx)

    async def on_publication(self, ctx):
        await self.rec.record("publication", ctx)

    async def on_join(self, ctx):
        await self.rec.record("join", ctx)

    async def on_leave(self, ctx):
        await self.rec.record("leave", ctx)

    async def on_error(self, ctx):
        await self.rec.record("error", ctx)


def new_client(token: str, **options: Any) -> Tuple[Client, Recorder]:
    handler = ClientRecorder()
    client = Client(
        WS_URL,
        events=handler,
        token=token,
        name="roomcast-interop-python",
        timeout=WAIT_S,
        min_reconnect_delay=0.1,
        max_reconnect_delay=1.0,
        proxy=None,
        **options,
    )
    return client, handler.rec


@pytest.fixture
async def clients():
    """Factory for connected clients; all are disconnected when the test ends."""
    made: List[Client] = []

    async def connect_as(user: str, **options: Any):
        client, rec = new_client(mint_token(user), **options)
        made.append(client)
        await client.connect()
        [connected] = await rec.wait_count("connected", 1)
        return client, rec, connected.client

    connect_as.track = made.append  # for clients a test builds itself
    yield connect_as
    for client in made:
        await client.disconnect()


async def subscribe(client: Client, channel: str, **options: Any):
    """Subscribes; returns (subscription, recorder, context of the first 'subscribed')."""
    handler = SubRecorder()
    sub = client.new_subscription(channel, events=handler, **options)
    await sub.subscribe()
    [subscribed] = await handler.rec.wait_count("subscribed", 1)
    return sub, handler.rec, subscribed


@pytest.fixture
async def api():
    """The `cent` server API client (async flavour, so it doesn't block the event loop)."""
    client = ApiClient(API_URL, api_key=API_KEY, timeout=WAIT_S)
    yield client
    await client.close()


def offsets_and_data(pubs) -> List[Tuple[int, Any]]:
    """[(offset, data)] of publication contexts (PublicationContext or Publication)."""
    out = []
    for p in pubs:
        pub = getattr(p, "pub", p)
        out.append((pub.offset, pub.data))
    return out
