'use strict';
// Recovery at its edges, through the SDK: positions given with the `since` option (right and
// wrong epoch, past the top), and a gap as large as the documented recovery limit.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const {
  mintToken, uniqueChannel, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, traced,
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
  return { client, rec };
}

/** Publishes `count` publications through the server API, `parallel` at a time; returns
 * the data published at each offset (index 0 is offset 1), checking offsets are 1..count. */
async function publishMany(channel, count, makeData, parallel = 32) {
  const byOffset = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < count) {
      const data = makeData(next++);
      const { offset } = await apiPublish(channel, data);
      assert.ok(offset >= 1 && offset <= count && byOffset[offset - 1] === undefined, `offset ${offset} unique and in 1..${count}`);
      byOffset[offset - 1] = data;
    }
  }));
  return byOffset;
}

test('subscribing from a known position (since) recovers after it, and refuses a wrong epoch', traced(async () => {
  const channel = uniqueChannel('js-since');
  let epoch;
  for (let n = 1; n <= 3; n++) epoch = (await apiPublish(channel, { n })).epoch;
  const { client } = await connect('alice-js');

  const cases = [
    // [since, recovered, offsets delivered]
    [{ offset: 1, epoch }, true, [2, 3]],
    [{ offset: 3, epoch }, true, []],
    [{ offset: 1, epoch: 'not-the-epoch' }, false, []],
    [{ offset: 100, epoch }, false, []],
  ];
  for (const [since, recovered, offsets] of cases) {
    const sub = client.newSubscription(channel, { since });
    const rec = new Recorder(sub, SUB_EVENTS);
    sub.subscribe();
    const [subscribed] = await rec.waitCount('subscribed', 1);
    const what = `since ${JSON.stringify(since)}: ${JSON.stringify(subscribed)}`;
    assert.equal(subscribed.wasRecovering, true, what);
    assert.equal(subscribed.recovered, recovered, what);
    assert.deepEqual(subscribed.streamPosition, { offset: 3, epoch }, `the reply carries the top position, ${what}`);
    if (offsets.length) await rec.waitCount('publication', offsets.length);
    assert.deepEqual(rec.of('publication').map((p) => [p.offset, p.data.n]), offsets.map((o) => [o, o]), what);
    sub.unsubscribe();
    client.removeSubscription(sub);
  }
}));

// The recovery reply is one message larger than the outbox cap (1 MiB): replies to the
// client's own commands do not count against the cap (fixed after this test first caught it).
test('a gap of 10,000 publications (the documented recovery limit) is recovered in full',
  traced(
    async () => {
      const channel = uniqueChannel('js-big-gap');
      const { client, rec: clientRec } = await connect('alice-js');
      const sub = client.newSubscription(channel);
      const rec = new Recorder(sub, SUB_EVENTS);
      sub.subscribe();
      await rec.waitCount('subscribed', 1);
      client.disconnect();
      await clientRec.waitCount('disconnected', 1);

      const count = 10000;
      const pad = 'p'.repeat(512); // ~5.5 MB of missed publications: a busy room's night
      const published = await publishMany(channel, count, (i) => ({ i, pad }));

      client.connect();
      const [, again] = await rec.waitCount('subscribed', 2);
      assert.equal(again.recovered, true, `within the limit: ${JSON.stringify(again)}`);
      const pubs = await rec.waitCount('publication', count);
      assert.deepEqual(pubs.map((p) => p.offset), Array.from({ length: count }, (_, i) => i + 1));
      for (let k = 0; k < count; k++) {
        if (pubs[k].data.i !== published[k].i) assert.fail(`offset ${k + 1}: got ${pubs[k].data.i}, published ${published[k].i}`);
      }
    }));
