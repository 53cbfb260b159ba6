'use strict';
// Interop: the `centrifuge` npm SDK's protobuf build (`centrifuge/build/protobuf`: binary
// WebSocket frames, the `centrifuge-protobuf` subprotocol) against a running roomcast server.
// Publication data is bytes in this format; roomcast stores JSON, so the tests publish the
// UTF-8 bytes of JSON text and read JSON back, from the API and from JSON clients alike.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { Centrifuge } = require('centrifuge/build/protobuf');
const {
  WS_URL, WAIT_MS, mintToken, uniqueChannel, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, sleep, traced,
} = require('../lib');
const WebSocket = require('ws');

const clients = [];
function track(client) {
  clients.push(client);
  return client;
}
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (value) => encoder.encode(JSON.stringify(value));
const json = (data) => JSON.parse(decoder.decode(data));

/** Connects `user` over protobuf; resolves with the client, its recorder and its id. */
async function connectAs(user) {
  const client = track(new Centrifuge(WS_URL, {
    token: mintToken(user),
    websocket: WebSocket,
    name: 'roomcast-interop-js-protobuf',
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: WAIT_MS,
  }));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const [connected] = await rec.waitCount('connected', 1, { what: `for ${user}` });
  return { client, rec, id: connected.client };
}

async function subscribe(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [subscribed] = await rec.waitCount('subscribed', 1, { what: `to ${channel}` });
  return { sub, rec, subscribed };
}

const offsetsAndData = (pubs) => pubs.map((p) => [p.offset, json(p.data)]);

test('protobuf: connect, subscribe, publish, history and presence', traced(async () => {
  const channel = uniqueChannel('pb');
  const { client, id } = await connectAs('alice-pb');
  const { sub, rec, subscribed } = await subscribe(client, channel);
  assert.equal(subscribed.recoverable, true);
  assert.ok(subscribed.streamPosition.epoch);

  await sub.publish(bytes({ text: 'hi', n: 2 ** 53 - 1, s: 'é"\n' }));
  assert.equal((await apiPublish(channel, { from: 'api' })).offset, 2);
  const pubs = await rec.waitCount('publication', 2);
  assert.deepEqual(offsetsAndData(pubs), [[1, { text: 'hi', n: 2 ** 53 - 1, s: 'é"\n' }], [2, { from: 'api' }]]);
  assert.equal(pubs[0].info.user, 'alice-pb');
  assert.equal(pubs[0].info.client, id);

  const history = await sub.history({ limit: 10 });
  assert.deepEqual(offsetsAndData(history.publications), offsetsAndData(pubs));
  assert.equal(history.offset, 2);
  assert.equal(history.epoch, subscribed.streamPosition.epoch);
  const reversed = await sub.history({ limit: 1, reverse: true });
  assert.deepEqual(offsetsAndData(reversed.publications), [[2, { from: 'api' }]]);

  const presence = await sub.presence();
  assert.equal(presence.clients[id].user, 'alice-pb');
  const stats = await sub.presenceStats();
  assert.deepEqual([stats.numClients, stats.numUsers], [1, 1]);

  await assert.rejects(client.rpc('nope', bytes({})), (err) => err.code === 108);
}));

test('protobuf: a JSON client and a protobuf client share a room', traced(async () => {
  const channel = uniqueChannel('pb-mixed');
  const { client: pb } = await connectAs('pat-pb');
  const { sub: pbSub, rec: pbRec } = await subscribe(pb, channel);
  const jsonClient = track(newClient(mintToken('jay-json')));
  const jsonRec = new Recorder(jsonClient, CLIENT_EVENTS);
  jsonClient.connect();
  await jsonRec.waitCount('connected', 1);
  const jsonSub = jsonClient.newSubscription(channel);
  const jsonSubRec = new Recorder(jsonSub, SUB_EVENTS);
  jsonSub.subscribe();
  await jsonSubRec.waitCount('subscribed', 1);

  await pbSub.publish(bytes([1, 'two']));
  await jsonSub.publish({ three: 3 });
  const seenByJson = await jsonSubRec.waitCount('publication', 2);
  assert.deepEqual(seenByJson.map((p) => [p.offset, p.data]), [[1, [1, 'two']], [2, { three: 3 }]]);
  assert.equal(seenByJson[0].info.user, 'pat-pb');
  const seenByPb = await pbRec.waitCount('publication', 2);
  assert.deepEqual(offsetsAndData(seenByPb), [[1, [1, 'two']], [2, { three: 3 }]]);
}));

test('protobuf: reconnect recovers the publications missed while away', traced(async () => {
  const channel = uniqueChannel('pb-recover');
  const { client, rec: clientRec } = await connectAs('alice-pb');
  const { rec, subscribed } = await subscribe(client, channel);
  const epoch = subscribed.streamPosition.epoch;
  assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
  await rec.waitCount('publication', 1);

  client.disconnect();
  await clientRec.waitCount('disconnected', 1);
  for (const n of [2, 3, 4]) assert.equal((await apiPublish(channel, { n })).offset, n);

  client.connect();
  const again = (await rec.waitCount('subscribed', 2))[1];
  assert.equal(again.wasRecovering, true);
  assert.equal(again.recovered, true, JSON.stringify(again));
  assert.equal(again.streamPosition.epoch, epoch);
  const pubs = await rec.waitCount('publication', 4);
  assert.deepEqual(offsetsAndData(pubs), [[1, { n: 1 }], [2, { n: 2 }], [3, { n: 3 }], [4, { n: 4 }]]);

  assert.equal((await apiPublish(channel, { n: 5 })).offset, 5);
  await rec.waitCount('publication', 5);
  await sleep(200);
  assert.equal(rec.of('publication').length, 5, 'nothing is delivered twice');
}));
