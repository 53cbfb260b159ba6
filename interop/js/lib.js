'use strict';
// Helpers shared by the centrifuge-js interop tests: where the server is, how to mint a
// connection JWT, how to call the server HTTP API, and a small event recorder that lets a
// test wait for "the Nth publication" with a deadline instead of sleeping.
//
// The server under test is described by environment variables set by interop/run.sh:
//   INTEROP_URL           http://127.0.0.1:PORT  (HTTP base; the WebSocket URL is derived)
//   INTEROP_API_KEY       key for POST /api/<method>
//   INTEROP_TOKEN_SECRET  HMAC secret the server verifies connection JWTs with

const crypto = require('node:crypto');
const jwt = require('jsonwebtoken');
const WebSocket = require('ws');
const assert = require('node:assert/strict');
const { Centrifuge } = require('centrifuge');

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through interop/run.sh`);
  }
  return value;
}

const BASE_URL = requireEnv('INTEROP_URL').replace(/\/$/, '');
const WS_URL = BASE_URL.replace(/^http/, 'ws') + '/connection/websocket';
const API_KEY = requireEnv('INTEROP_API_KEY');
const TOKEN_SECRET = requireEnv('INTEROP_TOKEN_SECRET');

// Every wait in the tests is bounded by this, so a missing event fails the test instead of
// hanging it.
const WAIT_MS = Number(process.env.INTEROP_WAIT_MS || 5000);

/** A connection JWT (HS256) for `user`, valid for `ttlSeconds` (negative: already expired). */
function mintToken(user, ttlSeconds = 300, secret = TOKEN_SECRET) {
  const now = Math.floor(Date.now() / 1000);
  return jwt.sign({ sub: user, exp: now + ttlSeconds }, secret, { algorithm: 'HS256', noTimestamp: true });
}

/** A channel name in the default namespace, unique to this run so reruns never collide. */
function uniqueChannel(prefix) {
  return `${prefix}-${crypto.randomBytes(6).toString('hex')}`;
}

/** POST /api/<method>; returns the parsed body. Throws on a non-200 status or an error body. */
async function api(method, body) {
  const res = await fetch(`${BASE_URL}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) {
    throw new Error(`api ${method} -> HTTP ${res.status}: ${text}`);
  }
  const parsed = JSON.parse(text);
  if (parsed.error) {
    throw new Error(`api ${method} -> error ${JSON.stringify(parsed.error)}`);
  }
  return parsed;
}

/** Publishes through the server API and returns its result ({offset, epoch}). */
async function apiPublish(channel, data) {
  const body = await api('publish', { channel, data });
  return body.result;
}

// Every WebSocket frame of the running test, both ways, so a failure can show exactly what
// the SDK sent and what the server answered. Cleared by `traced` at the start of each test.
const frames = [];
let socketSeq = 0;

/** Node 20 has no global WebSocket: the SDK gets `ws`, wrapped to record frames. */
class TracingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.traceId = ++socketSeq;
    const start = Date.now();
    this.on('message', (data) => frames.push([Date.now(), this.traceId, '<', String(data)]));
    this.on('close', (code, reason) => frames.push([Date.now(), this.traceId, 'close', `${code} ${reason}`]));
    frames.push([start, this.traceId, 'open', String(args[0])]);
  }

  send(data, ...rest) {
    frames.push([Date.now(), this.traceId, '>', String(data)]);
    return super.send(data, ...rest);
  }
}

function formatFrames() {
  if (frames.length === 0) return '(no frames)';
  const t0 = frames[0][0];
  return frames.map(([t, id, dir, text]) => `  +${t - t0}ms socket#${id} ${dir} ${text}`).join('\n');
}

/**
 * Wraps a test body: on failure the error message gets every frame the test's sockets sent
 * and received, which is what a server discrepancy report needs.
 */
function traced(fn) {
  return async (t) => {
    frames.length = 0;
    try {
      await fn(t);
      if (process.env.INTEROP_TRACE === '1') {
        process.stderr.write(`--- websocket frames of "${t.name}" ---\n${formatFrames()}\n`);
      }
    } catch (err) {
      err.message = `${err.message}\n--- websocket frames of this test ---\n${formatFrames()}`;
      throw err;
    }
  };
}

/**
 * Wraps a test body that checks behaviour roomcast is known to get wrong (a reported server
 * bug): the test passes while the body fails, with the failure as a diagnostic, and fails as
 * soon as the body passes, so the marker is removed once the server is fixed (pytest's
 * strict xfail).
 */
function knownServerBug(bug, fn) {
  return traced(async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const closes = frames.filter(([, , dir]) => dir === 'close').map(([, id, , text]) => `socket#${id} ${text}`);
      t.diagnostic(`known server bug still present: ${bug}`);
      t.diagnostic(`  failure: ${err.message.split('\n')[0].slice(0, 300)}`);
      t.diagnostic(`  socket closes: ${[...new Set(closes.map((c) => c.replace(/^socket#\d+ /, '')))].join(', ') || 'none'} (${closes.length})`);
      return;
    }
    assert.fail(`known server bug no longer reproduces (${bug}): drop knownServerBug from this test`);
  });
}

/** A centrifuge-js client for the server under test. */
function newClient(token, extra = {}) {
  return new Centrifuge(WS_URL, {
    token,
    websocket: TracingWebSocket,
    name: 'roomcast-interop-js',
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: WAIT_MS,
    ...extra,
  });
}

/**
 * Records every event of the given names emitted by an emitter (a client or a subscription),
 * in arrival order, and lets a test wait until a condition on the record holds.
 */
class Recorder {
  constructor(emitter, names) {
    this.events = [];
    this._waiters = [];
    for (const name of names) {
      emitter.on(name, (ctx) => {
        this.events.push({ name, ctx });
        this._wake();
      });
    }
  }

  of(name) {
    return this.events.filter((e) => e.name === name).map((e) => e.ctx);
  }

  /** Resolves with of(name) once it has at least `count` entries (matching `filter`). */
  waitCount(name, count, { filter = () => true, what = '' } = {}) {
    const check = () => {
      const got = this.of(name).filter(filter);
      return got.length >= count ? got : null;
    };
    return this._waitFor(check, `${count} '${name}' event(s)${what ? ' ' + what : ''}`);
  }

  _waitFor(check, description) {
    const ready = check();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const waiter = { check, resolve };
      waiter.timer = setTimeout(() => {
        this._waiters = this._waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${description}; ` +
          `recorded: ${JSON.stringify(this.events.map((e) => [e.name, e.ctx]))}`));
      }, WAIT_MS);
      this._waiters.push(waiter);
    });
  }

  _wake() {
    for (const waiter of [...this._waiters]) {
      const result = waiter.check();
      if (result) {
        clearTimeout(waiter.timer);
        this._waiters = this._waiters.filter((w) => w !== waiter);
        waiter.resolve(result);
      }
    }
  }
}

const SUB_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];
const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error', 'subscribed', 'publication'];

/** Resolves after `ms`; used only to give the server time to NOT send something. */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

module.exports = {
  BASE_URL, WS_URL, API_KEY, TOKEN_SECRET, WAIT_MS,
  mintToken, uniqueChannel, api, apiPublish, newClient, Recorder, SUB_EVENTS, CLIENT_EVENTS, sleep,
  traced, knownServerBug, frames,
};
