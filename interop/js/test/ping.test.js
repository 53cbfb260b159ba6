'use strict';
// Interop of the keepalive: the server pings an idle connection (an empty `{}` reply) at the
// interval it announced in the connect reply, the SDK answers each with an empty `{}` command
// when the reply said `pong: true`, and neither side gives up on the other. Waits one full
// ping interval plus the server's pong timeout, so it takes about 35 s with the defaults.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const {
  mintToken, uniqueChannel, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, sleep, traced, frames,
} = require('../lib');

/** The JSON objects of the recorded frames in direction `dir` ('<' in, '>' out). */
function objects(dir) {
  const out = [];
  for (const [t, , d, text] of frames) {
    if (d !== dir) continue;
    for (const line of text.split('\n')) {
      if (line.trim()) out.push([t, JSON.parse(line)]);
    }
  }
  return out;
}

const isEmpty = (o) => Object.keys(o).length === 0;

test('an idle connection survives server pings: the SDK pongs and stays connected', traced(async () => {
  // The SDK gives up after ping interval + this without a ping; tighter than its default 10 s,
  // so a server that pings late or in a shape the SDK doesn't take is caught.
  const client = newClient(mintToken('idle-js'), { maxServerPingDelay: 3000 });
  try {
    const rec = new Recorder(client, CLIENT_EVENTS);
    client.connect();
    await rec.waitCount('connected', 1);
    const connectedAt = Date.now();
    const channel = uniqueChannel('js-ping');
    const sub = client.newSubscription(channel);
    const subRec = new Recorder(sub, SUB_EVENTS);
    sub.subscribe();
    await subRec.waitCount('subscribed', 1);

    const reply = objects('<').map(([, o]) => o).find((o) => o.connect);
    assert.ok(reply, 'connect reply recorded');
    const ping = reply.connect.ping;
    assert.ok(Number.isInteger(ping) && ping > 0 && ping <= 60, `connect reply announces a ping interval: ${JSON.stringify(reply)}`);
    assert.equal(reply.connect.pong, true, 'protocol v2 clients are asked to pong');

    // One ping interval, then the server's pong timeout (8 s) and a margin.
    await sleep(ping * 1000 + 8000 + 2000);

    const pings = objects('<').filter(([t, o]) => isEmpty(o) && t >= connectedAt);
    assert.ok(pings.length >= 1, `a server ping within ${ping} s`);
    const firstPingAt = pings[0][0];
    assert.ok(firstPingAt - connectedAt <= ping * 1000 + 1500, `first ping after ${firstPingAt - connectedAt} ms, announced ${ping} s`);
    const pongs = objects('>').filter(([t, o]) => isEmpty(o) && t >= firstPingAt);
    assert.ok(pongs.length >= 1, 'the SDK answered the ping with {}');

    assert.deepEqual(rec.of('disconnected'), [], 'no disconnect');
    assert.deepEqual(rec.of('connecting'), [rec.of('connecting')[0]], 'no reconnect after the first connect');
    assert.equal(client.state, 'connected');

    // Still live: a publication arrives on the same subscription.
    assert.equal((await apiPublish(channel, { n: 1 })).offset, 1);
    const [pub] = await subRec.waitCount('publication', 1);
    assert.equal(pub.offset, 1);
    assert.equal(subRec.of('subscribed').length, 1, 'never resubscribed');
  } finally {
    client.disconnect();
  }
}));
