'use strict';
// Interop: centrifuge-js over its fallback transports against a running roomcast server:
// HTTP-streaming (`http_stream`, JSON and the protobuf build) and SSE (`sse`), each with the
// bidirectional emulation endpoint (`/emulation`) carrying the commands after the connect.
// Node 20 has `fetch` and `ReadableStream`; `EventSource` comes from the `eventsource`
// package.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { EventSource } = require('eventsource');
const { Centrifuge } = require('centrifuge');
const { Centrifuge: PbCentrifuge } = require('centrifuge/build/protobuf');
const {
  BASE_URL, WAIT_MS, mintToken, uniqueChannel, api, apiPublish, Recorder, SUB_EVENTS, CLIENT_EVENTS, sleep, traced,
} = require('../lib');

const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// The three ways to run: how to build the client, how data is written and read.
const TRANSPORTS = {
  http_stream: {
    make: (opts) => new Centrifuge([{ transport: 'http_stream', endpoint: `${BASE_URL}/connection/http_stream` }], opts),
    data: (v) => v,
    read: (d) => d,
  },
  sse: {
    make: (opts) => new Centrifuge([{ transport: 'sse', endpoint: `${BASE_URL}/connection/sse` }], opts),
    data: (v) => v,
    read: (d) => d,
  },
  'http_stream protobuf': {
    make: (opts) => new PbCentrifuge([{ transport: 'http_stream', endpoint: `${BASE_URL}/connection/http_stream` }], opts),
    data: (v) => encoder.encode(JSON.stringify(v)),
    read: (d) => JSON.parse(decoder.decode(d)),
  },
};

async function connectAs(kind, user) {
  const client = TRANSPORTS[kind].make({
    token: mintToken(user),
    eventsource: EventSource,
    emulationEndpoint: `${BASE_URL}/emulation`,
    name: 'roomcast-interop-js-transports',
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: WAIT_MS,
  });
  clients.push(client);
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const [connected] = await rec.waitCount('connected', 1, { what: `for ${user} over ${kind}` });
  return { client, rec, connected };
}

async function subscribe(client, channel) {
  const sub = client.newSubscription(channel, { joinLeave: true });
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [subscribed] = await rec.waitCount('subscribed', 1, { what: `to ${channel}` });
  return { sub, rec, subscribed };
}

for (const kind of Object.keys(TRANSPORTS)) {
  const { data, read } = TRANSPORTS[kind];
  const seen = (pubs) => pubs.map((p) => [p.offset, read(p.data)]);

  test(`${kind}: connect, subscribe, publish, history and presence`, traced(async () => {
    const channel = uniqueChannel('stream');
    const { client, connected } = await connectAs(kind, 'alice-stream');
    assert.equal(connected.transport, kind.split(' ')[0]);
    const { sub, rec, subscribed } = await subscribe(client, channel);
    assert.equal(subscribed.recoverable, true);

    await sub.publish(data({ text: 'hi' }));
    assert.equal((await apiPublish(channel, { from: 'api' })).offset, 2);
    const pubs = await rec.waitCount('publication', 2);
    assert.deepEqual(seen(pubs), [[1, { text: 'hi' }], [2, { from: 'api' }]]);
    assert.equal(pubs[0].info.client, connected.client);

    const history = await sub.history({ limit: 10 });
    assert.deepEqual(seen(history.publications), seen(pubs));
    assert.equal(history.epoch, subscribed.streamPosition.epoch);

    const presence = await sub.presence();
    assert.equal(presence.clients[connected.client].user, 'alice-stream');
    const stats = await sub.presenceStats();
    assert.deepEqual([stats.numClients, stats.numUsers], [1, 1]);

    // A second client joins over the same transport: the first sees it.
    const other = await connectAs(kind, 'bob-stream');
    await subscribe(other.client, channel);
    const [join] = await rec.waitCount('join', 1, { filter: (j) => j.info.user === 'bob-stream' });
    assert.notEqual(join.info.client, connected.client);
    await assert.rejects(client.rpc('nope', data({})), (err) => err.code === 108);
  }));

  test(`${kind}: reconnect recovers the publications missed while away`, traced(async () => {
    const channel = uniqueChannel('stream-recover');
    const { client, rec: clientRec } = await connectAs(kind, 'carol-stream');
    const { rec, subscribed } = await subscribe(client, channel);
    const epoch = subscribed.streamPosition.epoch;
    assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
    await rec.waitCount('publication', 1);

    // The client goes away, comes back.
    client.disconnect();
    await clientRec.waitCount('disconnected', 1);
    for (const n of [2, 3]) assert.equal((await apiPublish(channel, { n })).offset, n);
    client.connect();
    let again = (await rec.waitCount('subscribed', 2))[1];
    assert.equal(again.recovered, true, JSON.stringify(again));
    assert.equal(again.streamPosition.epoch, epoch);
    await rec.waitCount('publication', 3);

    // The server ends the stream (force reconnect, a disconnect push on the stream): the
    // SDK reconnects by itself and recovers what was published meanwhile.
    await api('disconnect', { user: 'carol-stream', disconnect: { code: 3011, reason: 'force reconnect' } });
    for (const n of [4, 5]) assert.equal((await apiPublish(channel, { n })).offset, n);
    again = (await rec.waitCount('subscribed', 3))[2];
    assert.equal(again.recovered, true, JSON.stringify(again));
    const pubs = await rec.waitCount('publication', 5);
    assert.deepEqual(seen(pubs), [1, 2, 3, 4, 5].map((n) => [n, { n }]));
    const disconnects = clientRec.of('connecting').map((c) => c.code);
    assert.ok(disconnects.includes(3011), `connecting codes: ${JSON.stringify(disconnects)}`);

    await sleep(200);
    assert.equal(rec.of('publication').length, 5, 'nothing is delivered twice');
  }));
}
