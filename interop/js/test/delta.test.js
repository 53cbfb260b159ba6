'use strict';
// Interop: fossil delta compression (`delta: 'fossil'` on a subscription) through the
// `centrifuge` SDK, JSON and protobuf builds. run.sh configures namespace `delta` with
// `allowed_delta_types = ["fossil"]`; the default namespace allows none.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const ProtobufCentrifuge = require('centrifuge/build/protobuf').Centrifuge;
const {
  WS_URL, WAIT_MS, mintToken, uniqueChannel, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, traced, frames,
} = require('../lib');
const WebSocket = require('ws');

const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

const decoder = new TextDecoder();

async function connect(user, protobuf) {
  const client = protobuf
    ? new ProtobufCentrifuge(WS_URL, {
      token: mintToken(user), websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, timeout: WAIT_MS,
    })
    : newClient(mintToken(user));
  clients.push(client);
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  await rec.waitCount('connected', 1, { what: `for ${user}` });
  return { client, rec };
}

async function subscribe(client, channel) {
  const sub = client.newSubscription(channel, { delta: 'fossil' });
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  await rec.waitCount('subscribed', 1, { what: `to ${channel}` });
  return { sub, rec };
}

/** A document that changes a little from one publication to the next. */
function doc(n) {
  return {
    title: 'Board of the quarter, ünïcödé 日本語 "quoted"\n',
    rows: Array.from({ length: 20 }, (_, i) => ({ id: i, score: i === n % 20 ? n : i * 10, label: `row ${i}` })),
    rev: n,
  };
}

const data = (pubs, protobuf) => pubs.map((p) => (protobuf ? JSON.parse(decoder.decode(p.data)) : p.data));

for (const protobuf of [false, true]) {
  const format = protobuf ? 'protobuf' : 'json';

  test(`delta (${format}): a sequence of publications arrives whole, as deltas after the first`, traced(async () => {
    const channel = `delta:${uniqueChannel(`js-${format}`)}`;
    const { client } = await connect(`alice-delta-${format}`, protobuf);
    const { sub, rec } = await subscribe(client, channel);
    for (let n = 1; n <= 8; n++) assert.equal((await apiPublish(channel, doc(n))).offset, n);
    const pubs = await rec.waitCount('publication', 8);
    assert.deepEqual(data(pubs, protobuf), Array.from({ length: 8 }, (_, i) => doc(i + 1)));
    assert.deepEqual(pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8]);
    const stats = sub.deltaStats();
    assert.equal(stats.numFullPayloads, 1, JSON.stringify(stats));
    assert.equal(stats.numDeltaPayloads, 7, JSON.stringify(stats));
    assert.ok(stats.bytesReceived * 3 < stats.bytesDecoded, `deltas are small: ${JSON.stringify(stats)}`);
    if (!protobuf) {
      // One reply or push per line; the subscribe reply says "delta":true too.
      const lines = frames.filter(([, , dir]) => dir === '<').flatMap(([, , , text]) => text.split('\n'));
      const deltas = lines.filter((l) => l.includes('"push"') && l.includes('"delta":true'));
      assert.equal(deltas.length, 7, 'delta pushes on the wire');
      assert.equal(lines.filter((l) => l.includes('"subscribe"') && l.includes('"delta":true')).length, 1);
    }
  }));

  test(`delta (${format}): recovery after a disconnect, then deltas again`, traced(async () => {
    const channel = `delta:${uniqueChannel(`js-${format}-recover`)}`;
    const { client, rec: clientRec } = await connect(`bob-delta-${format}`, protobuf);
    const { sub, rec } = await subscribe(client, channel);
    for (let n = 1; n <= 3; n++) await apiPublish(channel, doc(n));
    await rec.waitCount('publication', 3);
    client.disconnect();
    await clientRec.waitCount('disconnected', 1);
    for (let n = 4; n <= 6; n++) await apiPublish(channel, doc(n));
    client.connect();
    const again = (await rec.waitCount('subscribed', 2))[1];
    assert.equal(again.recovered, true, JSON.stringify(again));
    await rec.waitCount('publication', 6);
    for (let n = 7; n <= 9; n++) await apiPublish(channel, doc(n));
    const pubs = await rec.waitCount('publication', 9);
    assert.deepEqual(data(pubs, protobuf), Array.from({ length: 9 }, (_, i) => doc(i + 1)));
    assert.ok(sub.deltaStats().numDeltaPayloads >= 4, JSON.stringify(sub.deltaStats()));
  }));
}

test('delta: a namespace that does not allow it sends full publications', traced(async () => {
  const channel = uniqueChannel('js-no-delta');
  const { client } = await connect('carol-delta', false);
  const { sub, rec } = await subscribe(client, channel);
  for (let n = 1; n <= 3; n++) await apiPublish(channel, doc(n));
  const pubs = await rec.waitCount('publication', 3);
  assert.deepEqual(pubs.map((p) => p.data), [doc(1), doc(2), doc(3)]);
  assert.equal(sub.deltaStats().numDeltaPayloads, 0);
  assert.ok(!frames.some(([, , , text]) => String(text).includes('"delta":true')));
}));
