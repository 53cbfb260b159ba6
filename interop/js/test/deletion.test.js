'use strict';
// A deleted publication as the unmodified centrifuge-js SDK sees it: the live deletion
// notice (a publication without an offset, `data: null`, `tags.deleted` = the offset), the
// tombstone in history and in a recovery (its offset kept, so offsets stay contiguous and the
// SDK's position moves on), and `history_remove` leaving the position (a client behind it is
// not recovered).

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const {
  mintToken, uniqueChannel, api, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, traced,
} = require('../lib');

const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.disconnect();
});

async function connect(user) {
  const client = newClient(mintToken(user));
  clients.push(client);
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  await rec.waitCount('connected', 1);
  return client;
}

test('a deleted publication: live notice, tombstone in history and recovery', traced(async () => {
  const channel = uniqueChannel('js-delete');
  const client = await connect('alice-js');
  const sub = client.newSubscription(channel);
  const rec = new Recorder(sub, SUB_EVENTS);
  sub.subscribe();
  const [subscribed] = await rec.waitCount('subscribed', 1);
  const epoch = subscribed.streamPosition.epoch;
  for (let n = 1; n <= 3; n++) await apiPublish(channel, { n });
  await rec.waitCount('publication', 3);

  const r = await api('delete_publication', { channel, offset: 2 });
  assert.deepEqual(r, { result: {} });
  const [, , , notice] = await rec.waitCount('publication', 4);
  assert.equal(notice.data, null);
  assert.deepEqual(notice.tags, { deleted: '2' });
  assert.equal(notice.offset, undefined, 'a notice has no offset');

  const history = await sub.history({ limit: 10 });
  assert.deepEqual(history.publications.map((p) => p.offset), [1, 2, 3]);
  assert.equal(history.publications[1].data, null);
  assert.deepEqual(history.publications[1].tags, { deleted: '2' });
  assert.deepEqual(history.publications[2].data, { n: 3 });

  // A subscriber coming back from offset 1 recovers the tombstone and what follows.
  sub.unsubscribe();
  client.removeSubscription(sub);
  const again = client.newSubscription(channel, { since: { offset: 1, epoch } });
  const rec2 = new Recorder(again, SUB_EVENTS);
  again.subscribe();
  const [back] = await rec2.waitCount('subscribed', 1);
  assert.equal(back.recovered, true, JSON.stringify(back));
  const pubs = await rec2.waitCount('publication', 2);
  assert.deepEqual(pubs.map((p) => [p.offset, p.data, p.tags]), [
    [2, null, { deleted: '2' }],
    [3, { n: 3 }, undefined],
  ]);
  again.unsubscribe();
  client.removeSubscription(again);

  // history_remove: nothing left, the position stays, a client behind it is not recovered.
  assert.deepEqual(await api('history_remove', { channel }), { result: {} });
  const behind = client.newSubscription(channel, { since: { offset: 1, epoch } });
  const rec3 = new Recorder(behind, SUB_EVENTS);
  behind.subscribe();
  const [cleared] = await rec3.waitCount('subscribed', 1);
  assert.equal(cleared.wasRecovering, true);
  assert.equal(cleared.recovered, false, JSON.stringify(cleared));
  assert.deepEqual(cleared.streamPosition, { offset: 3, epoch });
  assert.equal((await apiPublish(channel, { n: 4 })).offset, 4);
}));
