'use strict';
// Interop of the chat layer as a chat client uses it with the unmodified centrifuge-js SDK:
// members added through the server API (plain HTTP), the room list with unread badges in one
// `client.rpc('roomcast.rooms')` round trip after connect, and a read on one client (the
// phone) clearing the badge on the other (the laptop), which hears of it on the user's
// personal channel `#<user>`.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {
  mintToken, uniqueChannel, api, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, traced,
} = require('../lib');

async function connected(user) {
  const client = newClient(mintToken(user));
  const rec = new Recorder(client, CLIENT_EVENTS);
  client.connect();
  await rec.waitCount('connected', 1);
  return client;
}

test('room list with badges on connect; a read on one client clears the badge on the other', traced(async () => {
  const user = `js-chat-${crypto.randomBytes(4).toString('hex')}`;
  const older = uniqueChannel('js-chat-a');
  const newer = uniqueChannel('js-chat-b');
  for (const channel of [older, newer]) {
    const r = await api('add_members', { channel, users: [user] });
    assert.equal(r.result.added, 1);
  }
  for (let i = 1; i <= 3; i++) await apiPublish(older, { text: `a${i}` });
  await new Promise((r) => setTimeout(r, 5));
  await apiPublish(newer, { text: 'b1' });

  const phone = await connected(user);
  const laptop = await connected(user);
  try {
    const personal = laptop.newSubscription(`#${user}`);
    const events = new Recorder(personal, SUB_EVENTS);
    personal.subscribe();
    await events.waitCount('subscribed', 1);

    // Badges for every room in one round trip, newest activity first.
    const { data: list } = await phone.rpc('roomcast.rooms', {});
    assert.deepEqual(list.rooms.map((r) => [r.channel, r.unread, r.top, r.cursor]), [
      [newer, 1, 1, 0],
      [older, 3, 3, 0],
    ]);
    assert.equal(list.total_unread, 4);
    assert.deepEqual(list.rooms[0].preview.data, { text: 'b1' });

    // The phone reads the older room; the laptop hears it and its badge is clear.
    const { data: read } = await phone.rpc('roomcast.read', { channel: older, offset: 3 });
    assert.deepEqual(read, { channel: older, cursor: 3, top: 3, unread: 0 });
    const [event] = await events.waitCount('publication', 1);
    assert.deepEqual(event.data, { type: 'read', channel: older, cursor: 3, top: 3, unread: 0 });
    const { data: after } = await laptop.rpc('roomcast.rooms', {});
    assert.deepEqual(after.rooms.map((r) => [r.channel, r.unread]), [[newer, 1], [older, 0]]);
    assert.equal(after.total_unread, 1);

    const { data: unread } = await laptop.rpc('roomcast.unread', { channels: [newer] });
    assert.equal(unread.total, 1);
    assert.equal(unread.channels[0].unread, 1);

    // A malformed read is an error the SDK reports, not a dropped connection.
    await assert.rejects(phone.rpc('roomcast.read', { channel: older, offset: -1 }), (e) => e.code === 107);
    // Not a roomcast.* method and no other handler: 108 "not available" (issue 13).
    await assert.rejects(phone.rpc('not-ours', {}), (e) => e.code === 108);
    assert.equal(phone.state, 'connected');
  } finally {
    phone.disconnect();
    laptop.disconnect();
  }
}));
