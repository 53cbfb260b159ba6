'use strict';
// Interop: personal channels and send-to-user through the unmodified `centrifuge` SDK. Every
// connection is subscribed server-side to `#<user>` (reported in the connect reply's `subs`,
// so the SDK emits client-level 'subscribed' and 'publication' for it); `POST
// /api/user_publish` reaches it there and not another user; what was sent while the client
// was away is recovered when it reconnects (the SDK sends the position back in connect's
// `subs`); `client.rpc('roomcast.status', ...)` answers online/offline.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { mintToken, api, newClient, Recorder, CLIENT_EVENTS, sleep, traced } = require('../lib');

const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

/** A user id unique to this run. */
function uniqueUser(prefix) {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

async function connectAs(user) {
  const client = newClient(mintToken(user));
  clients.push(client);
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  const personal = `#${user}`;
  const [subscribed] = await rec.waitCount('subscribed', 1, { filter: (c) => c.channel === personal, what: personal });
  return { client, rec, subscribed, personal };
}

async function userPublish(user, data) {
  return (await api('user_publish', { user, data })).result;
}

test('user_publish reaches the user on the personal channel and nobody else', traced(async () => {
  const alice = uniqueUser('alice-js');
  const a = await connectAs(alice);
  assert.equal(a.subscribed.recoverable, true, JSON.stringify(a.subscribed));
  const b = await connectAs(uniqueUser('bob-js'));

  assert.equal((await userPublish(alice, { text: 'for alice' })).offset, 1);
  const [pub] = await a.rec.waitCount('publication', 1);
  assert.equal(pub.channel, a.personal);
  assert.equal(pub.offset, 1);
  assert.deepEqual(pub.data, { text: 'for alice' });
  await sleep(200);
  assert.equal(b.rec.of('publication').length, 0, 'another user gets nothing');
}));

test('what was user_published while away is recovered on reconnect', traced(async () => {
  const carol = uniqueUser('carol-js');
  const c = await connectAs(carol);
  assert.equal((await userPublish(carol, { n: 1 })).offset, 1);
  await c.rec.waitCount('publication', 1);
  c.client.disconnect();
  await c.rec.waitCount('disconnected', 1);
  assert.equal((await userPublish(carol, { n: 2 })).offset, 2);
  assert.equal((await userPublish(carol, { n: 3 })).offset, 3);
  c.client.connect();
  const subscribed = await c.rec.waitCount('subscribed', 2, { filter: (s) => s.channel === c.personal });
  assert.equal(subscribed[1].wasRecovering, true, JSON.stringify(subscribed[1]));
  assert.equal(subscribed[1].recovered, true, JSON.stringify(subscribed[1]));
  const pubs = await c.rec.waitCount('publication', 3);
  assert.deepEqual(pubs.map((p) => [p.offset, p.data.n]), [[1, 1], [2, 2], [3, 3]]);
}));

test('rpc roomcast.status: online and offline users', traced(async () => {
  const dora = uniqueUser('dora-js');
  const gone = uniqueUser('gone-js');
  const d = await connectAs(dora);
  const g = await connectAs(gone);
  const before = Date.now();
  g.client.disconnect();
  await g.rec.waitCount('disconnected', 1);
  let statuses;
  for (let i = 0; i < 50; i++) {
    statuses = (await d.client.rpc('roomcast.status', { users: [dora, gone, uniqueUser('never')] })).data.statuses;
    if (statuses[1].online === false) break;
    await sleep(50);
  }
  assert.deepEqual(statuses[0], { user: dora, online: true });
  assert.equal(statuses[1].online, false, JSON.stringify(statuses));
  assert.ok(statuses[1].last_seen >= before && statuses[1].last_seen <= Date.now(), JSON.stringify(statuses));
  assert.deepEqual(statuses[2].online, false);
  await assert.rejects(d.client.rpc('roomcast.status', { users: 'nope' }),
    (err) => err.code === 107 || assert.fail(`expected 107 bad request, got ${JSON.stringify(err)}`));
}));
