'use strict';
// Interop: the real `centrifuge` npm SDK (JSON protocol over WebSocket) against a running
// roomcast server. Every assertion is on exact offsets, payloads and users, so a server that
// drops, reorders, duplicates or renumbers anything fails here.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const {
  TOKEN_SECRET, mintToken, uniqueChannel, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, sleep, traced, frames,
} = require('../lib');

// Clients created by the running test; all are disconnected after it so the process exits.
const clients = [];
function track(client) {
  clients.push(client);
  return client;
}
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

/** Connects `user` with a fresh token; resolves with the client, its recorder and its id. */
async function connectAs(user, options = {}) {
  const client = track(newClient(mintToken(user), options));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const [connected] = await rec.waitCount('connected', 1, { what: `for ${user}` });
  return { client, rec, id: connected.client };
}

/** Subscribes `client` to `channel`; resolves with the subscription, its recorder and the
 * context of its first 'subscribed' event. */
async function subscribe(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [subscribed] = await rec.waitCount('subscribed', 1, { what: `on ${channel}` });
  return { sub, rec, subscribed };
}

/** The [offset, data] pairs of publication contexts, for whole-sequence comparisons. */
function offsetsAndData(pubs) {
  return pubs.map((p) => [p.offset, p.data]);
}

test('connects with an HS256 JWT over the websocket transport', traced(async () => {
  const { client, id } = await connectAs('alice-js');
  assert.equal(client.state, 'connected');
  assert.equal(typeof id, 'string');
  assert.ok(id.length > 0, 'server must assign a client id');
}));

test('a token signed with another secret is refused for good', traced(async () => {
  const client = track(newClient(mintToken('mallory-js', 300, TOKEN_SECRET + '-wrong')));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const [disconnected] = await rec.waitCount('disconnected', 1);
  // Centrifugo answers a bad token with disconnect 3500 "invalid token" (a close frame or a
  // disconnect push); an error reply 101 "unauthorized" is also terminal for the SDK.
  assert.ok([3500, 101].includes(disconnected.code),
    `expected code 3500 (invalid token) or 101 (unauthorized), got ${JSON.stringify(disconnected)}`);
  assert.equal(rec.of('connected').length, 0, 'must never be connected');
  assert.equal(client.state, 'disconnected', 'the SDK must not retry a refused token');
}));

test('an expired token gets error 109 and the SDK reconnects with a fresh one from getToken', traced(async () => {
  let tokensAsked = 0;
  const client = track(newClient(mintToken('bob-js', -60), {
    getToken: async () => {
      tokensAsked += 1;
      return mintToken('bob-js');
    },
  }));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  await rec.waitCount('connected', 1);
  const errors = rec.of('error').filter((e) => e.type === 'connect');
  assert.equal(errors.length, 1, `one connect error expected, got ${JSON.stringify(rec.of('error'))}`);
  assert.equal(errors[0].error.code, 109, 'token expired is error 109');
  assert.equal(tokensAsked, 1, 'getToken is called once after the 109');
}));

test('subscribe, then client and server API publications arrive with offsets 1 and 2', traced(async () => {
  const channel = uniqueChannel('js-live');
  const { client, id } = await connectAs('alice-js');
  const { sub, rec, subscribed } = await subscribe(client, channel);

  // force_recovery is on in the default namespace: a fresh stream is at offset 0.
  assert.equal(subscribed.channel, channel);
  assert.equal(subscribed.recoverable, true, 'default namespace forces recovery');
  assert.equal(subscribed.wasRecovering, false);
  assert.equal(subscribed.recovered, false);
  assert.ok(subscribed.streamPosition, 'a recoverable subscription reports its stream position');
  assert.equal(subscribed.streamPosition.offset, 0, 'new channel starts empty');
  const epoch = subscribed.streamPosition.epoch;
  assert.ok(typeof epoch === 'string' && epoch.length > 0, `epoch must be a non-empty string, got ${JSON.stringify(epoch)}`);

  assert.deepEqual(await sub.publish({ text: 'from the js client' }), {});
  const [first] = await rec.waitCount('publication', 1);
  assert.equal(first.channel, channel);
  assert.equal(first.offset, 1);
  assert.deepEqual(first.data, { text: 'from the js client' });
  assert.ok(first.info, 'a client publication carries the sender info');
  assert.equal(first.info.user, 'alice-js');
  assert.equal(first.info.client, id);

  const published = await apiPublish(channel, { text: 'from the server api' });
  assert.equal(published.offset, 2);
  assert.equal(published.epoch, epoch, 'the API reports the same stream epoch');
  const pubs = await rec.waitCount('publication', 2);
  assert.equal(pubs[1].offset, 2);
  assert.deepEqual(pubs[1].data, { text: 'from the server api' });
  assert.equal(pubs[1].info, undefined, 'a server API publication has no client info');

  await sleep(200);
  assert.equal(rec.of('publication').length, 2, 'each publication is delivered exactly once');
}));

test('history through the SDK returns the stream in order, forwards, reversed and since a position', traced(async () => {
  const channel = uniqueChannel('js-history');
  const { client } = await connectAs('alice-js');
  const { sub, rec } = await subscribe(client, channel);
  for (let i = 1; i <= 3; i++) {
    assert.equal((await apiPublish(channel, { n: i })).offset, i);
  }
  await rec.waitCount('publication', 3);

  const all = await sub.history({ limit: 10 });
  assert.deepEqual(offsetsAndData(all.publications), [[1, { n: 1 }], [2, { n: 2 }], [3, { n: 3 }]]);
  assert.equal(all.offset, 3, 'history reports the top offset');
  assert.ok(all.epoch.length > 0);

  const since = await sub.history({ limit: 10, since: { offset: 1, epoch: all.epoch } });
  assert.deepEqual(offsetsAndData(since.publications), [[2, { n: 2 }], [3, { n: 3 }]]);

  const newest = await sub.history({ limit: 2, reverse: true });
  assert.deepEqual(offsetsAndData(newest.publications), [[3, { n: 3 }], [2, { n: 2 }]]);

  const positionOnly = await sub.history({});
  assert.equal(positionOnly.publications.length, 0, 'no limit: only the stream position');
  assert.equal(positionOnly.offset, 3);
}));

test('reconnect recovers every publication missed while away, in order, with recovered=true', traced(async () => {
  const channel = uniqueChannel('js-recover');
  const { client, rec: clientRec } = await connectAs('alice-js');
  const { rec, subscribed } = await subscribe(client, channel);
  const epoch = subscribed.streamPosition.epoch;

  assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
  assert.equal((await apiPublish(channel, { n: 2 })).offset, 2);
  await rec.waitCount('publication', 2);

  client.disconnect();
  await clientRec.waitCount('disconnected', 1);
  assert.equal(client.state, 'disconnected');

  // Made while alice is away: three through the server API and one by another user's client.
  assert.equal((await apiPublish(channel, { n: 3 })).offset, 3);
  assert.equal((await apiPublish(channel, { n: 4 })).offset, 4);
  const { client: bob, id: bobId } = await connectAs('bob-js');
  const { sub: bobSub } = await subscribe(bob, channel);
  await bobSub.publish({ n: 5 });
  assert.equal((await apiPublish(channel, { n: 6 })).offset, 6, 'bob\'s publication took offset 5');
  bob.disconnect();

  client.connect();
  const subscribedEvents = await rec.waitCount('subscribed', 2);
  const again = subscribedEvents[1];
  assert.equal(again.wasRecovering, true, 'the SDK resubscribes with recover');
  assert.equal(again.recovered, true, `all missed publications must be recovered: ${JSON.stringify(again)}`);
  assert.equal(again.hasRecoveredPublications, true);
  assert.equal(again.streamPosition.epoch, epoch, 'the epoch is stable');

  const pubs = await rec.waitCount('publication', 6);
  assert.deepEqual(offsetsAndData(pubs),
    [[1, { n: 1 }], [2, { n: 2 }], [3, { n: 3 }], [4, { n: 4 }], [5, { n: 5 }], [6, { n: 6 }]]);
  assert.equal(pubs[4].info && pubs[4].info.user, 'bob-js', 'recovered client publication keeps its sender');
  assert.equal(pubs[4].info.client, bobId);
  assert.equal(pubs[2].info, undefined);

  // Live again after the recovery: the next publication follows on.
  assert.equal((await apiPublish(channel, { n: 7 })).offset, 7);
  const after = await rec.waitCount('publication', 7);
  assert.deepEqual(offsetsAndData(after.slice(6)), [[7, { n: 7 }]]);
  await sleep(200);
  assert.equal(rec.of('publication').length, 7, 'nothing is delivered twice');
}));

test('a socket dropped mid-stream is recovered with nothing lost or doubled', traced(async () => {
  const channel = uniqueChannel('js-drop');
  const { client, rec: clientRec } = await connectAs('alice-js');
  const { rec } = await subscribe(client, channel);
  const total = 30;
  for (let n = 1; n <= total; n++) {
    if (n === 10) {
      // Kill the TCP connection under the SDK (no close handshake), as a network loss would;
      // the SDK reconnects by itself and resubscribes with recover while publishing goes on.
      client._transport._transport.terminate();
    }
    assert.equal((await apiPublish(channel, { n })).offset, n);
    await sleep(10); // spread the stream so the resubscribe lands in the middle of it
  }
  // code 1: "transport closed", the reconnect after the drop (code 0 was connect()).
  await clientRec.waitCount('connecting', 1, { filter: (c) => c.code === 1, what: 'after the dropped socket' });
  const pubs = await rec.waitCount('publication', total);
  assert.deepEqual(pubs.map((p) => p.offset), Array.from({ length: total }, (_, i) => i + 1));
  assert.deepEqual(pubs.map((p) => p.data.n), Array.from({ length: total }, (_, i) => i + 1));
  const resubscribed = rec.of('subscribed').slice(1);
  assert.equal(resubscribed.length, 1, 'one resubscribe after the drop');
  assert.equal(resubscribed[0].wasRecovering, true);
  assert.equal(resubscribed[0].recovered, true);
  await sleep(200);
  assert.equal(rec.of('publication').length, total, 'nothing is delivered twice');
}));

test('join, leave and presence of another user', traced(async () => {
  const channel = uniqueChannel('js-presence');
  const { client: alice, id: aliceId } = await connectAs('alice-js');
  const { sub: aliceSub, rec } = await subscribe(alice, channel, { joinLeave: true });

  const { client: bob, id: bobId } = await connectAs('bob-js');
  const { sub: bobSub } = await subscribe(bob, channel, { joinLeave: true });

  const joins = await rec.waitCount('join', 1, { filter: (j) => j.info.user === 'bob-js' });
  assert.equal(joins.length, 1, 'bob joins once');
  assert.equal(joins[0].channel, channel);
  assert.equal(joins[0].info.client, bobId);

  const presence = await aliceSub.presence();
  const present = Object.fromEntries(Object.entries(presence.clients).map(([k, v]) => [k, [v.client, v.user]]));
  assert.deepEqual(present, { [aliceId]: [aliceId, 'alice-js'], [bobId]: [bobId, 'bob-js'] });
  const stats = await aliceSub.presenceStats();
  assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

  bobSub.unsubscribe();
  const leaves = await rec.waitCount('leave', 1, { filter: (l) => l.info.user === 'bob-js' });
  assert.equal(leaves[0].channel, channel);
  assert.equal(leaves[0].info.client, bobId);

  const afterLeave = await aliceSub.presence();
  assert.deepEqual(Object.keys(afterLeave.clients), [aliceId]);
  assert.deepEqual(await aliceSub.presenceStats(), { numClients: 1, numUsers: 1 });
}));

test('the token channels claim subscribes server-side and delivers publications', traced(async () => {
  const channel = uniqueChannel('js-server-sub');
  const now = Math.floor(Date.now() / 1000);
  const token = require('jsonwebtoken').sign(
    { sub: 'carol-js', exp: now + 300, channels: [channel] }, TOKEN_SECRET, { algorithm: 'HS256', noTimestamp: true });
  const client = track(newClient(token));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  // The personal channel (`#carol-js`) is subscribed server-side too: wait for this one.
  const [subscribed] = await rec.waitCount('subscribed', 1, { filter: (c) => c.channel === channel });
  assert.equal(subscribed.channel, channel);
  assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
  const [pub] = await rec.waitCount('publication', 1);
  assert.equal(pub.channel, channel);
  assert.equal(pub.offset, 1);
  assert.deepEqual(pub.data, { n: 1 });
}));

test('payloads round-trip byte-for-byte in meaning: unicode, escapes, big numbers, nesting, 32 KiB', traced(async () => {
  const channel = uniqueChannel('js-payload');
  const { client } = await connectAs('alice-js');
  const { sub, rec } = await subscribe(client, channel);
  const payload = {
    s: 'héllo 🌍 "quoted" \\ back\nnew line\ttab \u0000 nul',
    n: 9007199254740991,
    neg: -42,
    f: 1.5,
    e: 1e-7,
    a: [1, null, true, false, { x: [] }, ''],
    big: 'x'.repeat(32 * 1024),
  };
  await sub.publish(payload);
  assert.equal((await apiPublish(channel, payload)).offset, 2);
  await sub.publish('a bare string');
  assert.equal((await apiPublish(channel, [1, 2, 3])).offset, 4);
  const pubs = await rec.waitCount('publication', 4);
  assert.deepEqual(offsetsAndData(pubs), [[1, payload], [2, payload], [3, 'a bare string'], [4, [1, 2, 3]]]);
  const history = await sub.history({ limit: 10 });
  assert.deepEqual(offsetsAndData(history.publications), offsetsAndData(pubs), 'history stores what was delivered');
}));

test('refusals reach the SDK with the protocol codes: 103 publish unsubscribed, 102 unknown namespace', traced(async () => {
  const { client } = await connectAs('alice-js');
  // Publishing needs a subscription in the default namespace (allow_publish_for_subscriber).
  await assert.rejects(client.publish(uniqueChannel('js-nosub'), { n: 1 }),
    (err) => err.code === 103 || assert.fail(`expected 103 permission denied, got ${JSON.stringify(err)}`));
  const sub = client.newSubscription(`no-such-namespace:${uniqueChannel('room')}`);
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [unsubscribed] = await rec.waitCount('unsubscribed', 1);
  assert.equal(unsubscribed.code, 102, `unknown channel: ${JSON.stringify(unsubscribed)}`);
  assert.equal(sub.state, 'unsubscribed', 'a permanent error stops the subscription');
  assert.equal(client.state, 'connected', 'and leaves the connection alone');
}));

test('a user-limited channel admits the users it names and refuses others with 103', traced(async () => {
  const channel = `${uniqueChannel('js-dm')}#alice-js,bob-js`;
  const { client: alice } = await connectAs('alice-js');
  const { sub: aliceSub, rec: aliceRec } = await subscribe(alice, channel);
  const { client: mallory } = await connectAs('mallory-js');
  const sub = mallory.newSubscription(channel);
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [unsubscribed] = await rec.waitCount('unsubscribed', 1);
  assert.equal(unsubscribed.code, 103, `permission denied: ${JSON.stringify(unsubscribed)}`);
  await aliceSub.publish({ text: 'only for bob' });
  const [pub] = await aliceRec.waitCount('publication', 1);
  assert.equal(pub.offset, 1);
}));

test('an expiring connection token is refreshed in place through getToken', traced(async () => {
  let tokensAsked = 0;
  const client = track(newClient(mintToken('dave-js', 3), {
    getToken: async () => {
      tokensAsked += 1;
      return mintToken('dave-js', 300);
    },
  }));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  await rec.waitCount('connected', 1);
  await sleep(5000); // past the first token's exp: the SDK must have refreshed before it
  assert.ok(tokensAsked >= 1, 'getToken was asked for a new token');
  const sent = frames.filter(([, , dir]) => dir === '>').map(([, , , text]) => text);
  assert.ok(sent.some((text) => text.includes('"refresh":')), 'the SDK sent a refresh command');
  assert.equal(client.state, 'connected');
  assert.deepEqual(rec.of('disconnected'), []);
  assert.equal(rec.of('connecting').length, 1, 'no reconnect: the token was refreshed on the open connection');
  assert.deepEqual(rec.of('error'), []);
}));

test('a server-side subscription (token channels) recovers across a reconnect', traced(async () => {
  const channel = uniqueChannel('js-server-recover');
  const now = Math.floor(Date.now() / 1000);
  const token = require('jsonwebtoken').sign(
    { sub: 'carol-js', exp: now + 300, channels: [channel] }, TOKEN_SECRET, { algorithm: 'HS256', noTimestamp: true });
  const client = track(newClient(token));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const onChannel = { filter: (c) => c.channel === channel }; // not the personal channel
  await rec.waitCount('subscribed', 1, onChannel);
  assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
  await rec.waitCount('publication', 1);

  client.disconnect();
  await rec.waitCount('disconnected', 1);
  assert.equal((await apiPublish(channel, { n: 2 })).offset, 2);
  assert.equal((await apiPublish(channel, { n: 3 })).offset, 3);
  client.connect();
  const subscribed = await rec.waitCount('subscribed', 2, onChannel);
  assert.equal(subscribed[1].channel, channel);
  assert.equal(subscribed[1].wasRecovering, true, `connect carried the position: ${JSON.stringify(subscribed[1])}`);
  assert.equal(subscribed[1].recovered, true);
  const pubs = await rec.waitCount('publication', 3);
  assert.deepEqual(offsetsAndData(pubs), [[1, { n: 1 }], [2, { n: 2 }], [3, { n: 3 }]]);
}));
