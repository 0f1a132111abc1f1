// Circuit breakers shared between gateways through Redis, end to end: a real redis-server the
// tests start on a free loopback port, the fake upstream, and several `aperture serve` processes
// pointed at the same Redis with APERTURE_BREAKER_SYNC_URL (so the answer cache stays off and
// every request reaches the fake).
//
// The chain is primary (openai gpt-4o) -> backup (anthropic claude-sonnet-4-5), one attempt per
// step, a breaker that opens after 3 failures in a row and stays open 2 s. What is checked:
//   - A opens its breaker on its own traffic; B, which sent nothing to gpt-4o, reports it open
//     within about a second and sends its traffic straight to the backup (the fake's request log
//     shows no gpt-4o call while only B is asked);
//   - a gateway C started while it is open reads the open set from Redis and is open at once;
//   - after the cooldown one request to A probes, closes, and B and C follow;
//   - a gateway without a sync URL keeps its breakers to itself ("shared": "local");
//   - Redis killed mid-run: the gateways keep answering (200 through the backup) and say
//     shared_connected: false; none of them exits.
//
// Needs redis-server on PATH (or REDIS_SERVER=/path; empty skips; scripts/deps.sh installs it).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFake, startGateway, post, metrics, metricValue, NO_REDIS, freePort, startRedis, killChild } from './harness.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ADMIN_KEY = 'test-admin-key-shared-breaker-0123';
const DEP = 'openai/gpt-4o';
const COOLDOWN_MS = 2000;
const work = mkdtempSync(join(tmpdir(), 'aperture-shared-breaker-'));

// ---- redis (redis-server itself: harness.mjs) -------------------------------------------------

/** Send one RESP command (array of strings) with a one-line reply; resolves to the raw reply, or null. */
function redisCmd(port, args) {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    const done = (v) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(buf || null), 500);
    s.on('error', () => done(null));
    s.on('connect', () => s.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')));
    s.on('data', (d) => {
      buf += d;
      if (buf.endsWith('\r\n')) done(buf); // one-line replies only (PING, HLEN)
    });
  });
}

// ---- gateways, requests, admin ------------------------------------------------------------------

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake?.stop();
  rmSync(work, { recursive: true, force: true });
});

const CONFIG = {
  retry: { max_attempts: 1 },
  // min_requests high: only consecutive failures open a breaker here, never the error rate.
  breaker: { consecutive_failures: 3, cooldown_ms: COOLDOWN_MS, half_open_probes: 1, min_requests: 1000 },
  models: [
    { name: 'primary', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['backup'] },
    { name: 'backup', provider: 'anthropic', upstream: 'claude-sonnet-4-5' },
  ],
};

/** A gateway for test t, stopped when t ends; syncPort: the Redis to share breakers through (null: none). */
async function gateway(t, syncPort) {
  const env = { APERTURE_ADMIN_KEY: ADMIN_KEY };
  if (syncPort) env.APERTURE_BREAKER_SYNC_URL = `redis://127.0.0.1:${syncPort}/0`;
  const gw = await startGateway(fake, { config: CONFIG, env });
  t.after(() => gw.stop());
  return gw;
}

let seq = 0;
const ask = (gw, label) =>
  post(gw, '/v1/chat/completions', { model: 'primary', messages: [{ role: 'user', content: `${label} #${++seq}` }] });
const route = (r) => (r.headers.get('x-aperture-route') || '').split(' ')[0];
const gpt4oCalls = async () => (await fake.requests()).filter((r) => r.model === 'gpt-4o').length;

async function admin(gw) {
  const r = await fetch(gw.url + '/v1/admin/breakers', { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  const text = await r.text();
  assert.equal(r.status, 200, `GET /v1/admin/breakers: ${r.status} ${text}`);
  return JSON.parse(text);
}
/** The breaker state gw reports for DEP: "open", "closed", "half_open", or "absent". */
async function stateOf(gw) {
  const b = await admin(gw);
  assert.ok(Array.isArray(b.breakers), `breakers is not an array: ${JSON.stringify(b)}`);
  return b.breakers.find((x) => x.deployment === DEP)?.state ?? 'absent';
}
/** Poll fn() until pred(value) or ms pass; resolves to {value, ms} (the last value on time-out). */
async function until(fn, pred, ms, step = 50) {
  const t0 = Date.now();
  let v = await fn();
  while (!pred(v) && Date.now() - t0 < ms) {
    await sleep(step);
    v = await fn();
  }
  return { value: v, ms: Date.now() - t0 };
}

/** Three failing requests to gw: three failures in a row open its breaker; each is answered by the backup. */
async function openOn(gw) {
  await fake.fault({ model: 'gpt-4o', status: 503, count: -1 });
  for (let i = 0; i < 3; i++) {
    const r = await ask(gw, 'open it');
    assert.equal(r.status, 200, r.text);
    assert.equal(route(r), 'backup', `request ${i} while the primary fails`);
  }
  const t = Date.now();
  assert.equal(await stateOf(gw), 'open', 'three failures in a row opened the breaker where they happened');
  return t;
}

// ---- the cases --------------------------------------------------------------------------------------

describe('breakers shared through Redis', { skip: NO_REDIS }, () => {
  let port, redis;
  before(async () => {
    port = await freePort();
    redis = await startRedis(port, work);
  });
  after(async () => {
    await killChild(redis);
  });

  test('A opens; B follows within ~1 s and sends nothing to gpt-4o; C started later is open at once; a probe on A closes all three', async (t) => {
    await fake.reset();
    const A = await gateway(t, port);
    const B = await gateway(t, port);
    for (const g of [A, B]) {
      const st = await admin(g);
      assert.equal(st.shared, 'redis');
      assert.equal(st.shared_connected, true, 'connected to the Redis');
    }
    // B has answered through the primary before: its own breaker for the deployment is closed.
    const warm = await ask(B, 'warm B');
    assert.equal(warm.status, 200, warm.text);
    assert.equal(route(warm), 'primary');
    assert.equal(await stateOf(B), 'closed');

    const tOpen = await openOn(A);
    const seenB = await until(() => stateOf(B), (s) => s === 'open', 3000);
    t.diagnostic(`B saw the opening after ${seenB.ms} ms`);
    assert.equal(seenB.value, 'open', 'B reports the breaker A opened');
    assert.ok(seenB.ms <= 1500, `B took ${seenB.ms} ms to see the opening`);

    // Only B is asked now: none of its requests may reach gpt-4o (it still fails).
    const n0 = await gpt4oCalls();
    for (let i = 0; i < 3; i++) {
      const r = await ask(B, 'B while open');
      assert.equal(r.status, 200, r.text);
      assert.equal(route(r), 'backup', 'B answered from the backup');
    }
    assert.equal(await gpt4oCalls(), n0, 'B sent no request to gpt-4o while the shared breaker is open');
    assert.ok(
      metricValue(await metrics(B), 'aperture_fallbacks_total', { from: 'primary', to: 'backup', reason: 'breaker_open' }) >= 3,
      'B counts its fallbacks as breaker_open',
    );

    // C starts during the cooldown: it reads the open set at start.
    const C = await gateway(t, port);
    const sinceOpen = Date.now() - tOpen;
    assert.equal(await stateOf(C), 'open', `C started ${sinceOpen} ms after the opening is open at once`);
    const n1 = await gpt4oCalls();
    const rc = await ask(C, 'C while open');
    assert.equal(rc.status, 200, rc.text);
    assert.equal(route(rc), 'backup');
    assert.equal(await gpt4oCalls(), n1, 'C sent nothing to gpt-4o');
    assert.ok(Date.now() - tOpen < COOLDOWN_MS, `still inside the cooldown (${Date.now() - tOpen} ms; machine too slow?)`);

    // The primary recovers. After the cooldown one request to A probes and closes it.
    await fake.clearFaults();
    await sleep(Math.max(0, tOpen + COOLDOWN_MS + 300 - Date.now()));
    const n2 = await gpt4oCalls();
    const probe = await ask(A, 'probe on A');
    assert.equal(probe.status, 200, probe.text);
    assert.equal(route(probe), 'primary', 'the probe went to the primary');
    assert.equal(await gpt4oCalls(), n2 + 1, 'one probe');
    assert.equal(await stateOf(A), 'closed', 'a good probe closed A');
    for (const [name, g] of [['B', B], ['C', C]]) {
      const seen = await until(() => stateOf(g), (s) => s === 'closed', 3000);
      t.diagnostic(`${name} saw the closing after ${seen.ms} ms`);
      assert.equal(seen.value, 'closed', `${name} follows A's closing`);
    }
    // Closed there too: B's next request goes to the primary.
    const rb = await ask(B, 'B after the close');
    assert.equal(route(rb), 'primary');
    // And the hash of open breakers is empty again, so a gateway started now starts closed.
    const h = await redisCmd(port, ['HLEN', 'ap:brk:open']);
    assert.equal(h, ':0\r\n', `ap:brk:open after the close: ${JSON.stringify(h)}`);
  });

  /** Forget every shared opening, so the next case's gateways start closed. */
  const forget = () => redisCmd(port, ['DEL', 'ap:brk:open']);

  test('a gateway that learnt the opening from Redis exports it in aperture_breaker_state too', async (t) => {
    // The brief: the state is visible at GET /v1/admin/breakers AND as the metric. A learns it
    // itself; B only through the sync.
    await fake.reset();
    const A = await gateway(t, port);
    const B = await gateway(t, port);
    try {
      await openOn(A);
      assert.equal(metricValue(await metrics(A), 'aperture_breaker_state', { deployment: DEP }), 1, 'A: 1 (open)');
      const seen = await until(() => stateOf(B), (s) => s === 'open', 3000);
      assert.equal(seen.value, 'open', 'B reports it open at the admin endpoint');
      assert.equal(
        metricValue(await metrics(B), 'aperture_breaker_state', { deployment: DEP }),
        1,
        'B: aperture_breaker_state{deployment="openai/gpt-4o"} while B reports the breaker open',
      );
    } finally {
      await fake.clearFaults();
      await forget();
    }
  });

  test('without a sync URL the breakers are local: "shared": "local", and an opening elsewhere is not seen', async (t) => {
    await fake.reset();
    const A = await gateway(t, port);
    const L = await gateway(t, null);
    const st = await admin(L);
    assert.equal(st.shared, 'local');
    assert.equal(st.shared_connected, false);
    try {
      await openOn(A);
      await sleep(700); // more than a shared gateway needs to hear of it
      assert.notEqual(await stateOf(L), 'open', 'the local gateway did not learn of the opening');
      const n0 = await gpt4oCalls();
      const r = await ask(L, 'local still tries the primary');
      assert.equal(r.status, 200, r.text);
      assert.equal(route(r), 'backup');
      assert.equal(await gpt4oCalls(), n0 + 1, 'L still sent its request to gpt-4o first');
    } finally {
      await fake.clearFaults();
      await forget();
    }
  });

  test('Redis killed mid-run: the gateways keep answering (200 through the backup), report shared_connected false, and do not exit', async (t) => {
    await fake.reset();
    const A = await gateway(t, port);
    const B = await gateway(t, port);
    for (const g of [A, B]) assert.equal((await admin(g)).shared_connected, true);

    await killChild(redis, 'SIGKILL');
    for (const [name, g] of [['A', A], ['B', B]]) {
      const seen = await until(async () => (await admin(g)).shared_connected, (v) => v === false, 3000);
      t.diagnostic(`${name} noticed the outage after ${seen.ms} ms`);
      assert.equal(seen.value, false, `${name} reports shared_connected false with Redis gone`);
      assert.equal((await admin(g)).shared, 'redis', 'still configured to share');
    }

    // The primary fails during the outage: every request is still answered, through the backup,
    // and A's breaker opens on its own (locally).
    await fake.fault({ model: 'gpt-4o', status: 503, count: -1 });
    try {
      for (let i = 0; i < 4; i++) {
        for (const g of [A, B]) {
          const r = await ask(g, 'during the outage');
          assert.equal(r.status, 200, r.text);
          assert.equal(route(r), 'backup');
        }
      }
      assert.equal(await stateOf(A), 'open', 'A opened locally without Redis');
      assert.equal(await stateOf(B), 'open', 'B opened locally without Redis');
      const n0 = await gpt4oCalls();
      const r = await ask(A, 'open, Redis down');
      assert.equal(r.status, 200, r.text);
      assert.equal(await gpt4oCalls(), n0, 'the local breaker keeps A off gpt-4o');
    } finally {
      await fake.clearFaults();
    }
    for (const [name, g] of [['A', A], ['B', B]]) {
      assert.equal(g.child.exitCode, null, `${name} exited: ${g.stderr().slice(-2000)}`);
      assert.equal(g.child.signalCode, null, `${name} was killed by a signal: ${g.stderr().slice(-2000)}`);
    }

    // Redis back on the same port: both reconnect (the sync retries every 500 ms).
    redis = await startRedis(port, work);
    for (const [name, g] of [['A', A], ['B', B]]) {
      const seen = await until(async () => (await admin(g)).shared_connected, (v) => v === true, 5000, 100);
      t.diagnostic(`${name} reconnected after ${seen.ms} ms`);
      assert.equal(seen.value, true, `${name} reconnects once Redis is back`);
    }
  });
});
