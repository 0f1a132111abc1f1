// The chaos suite: one fault kind at a time hits 30% of every upstream call, and no client
// request may be lost: retries, circuit breakers and the fallback chain
//   primary (openai gpt-4o) -> backup (anthropic claude-sonnet-4-5) -> selfhosted (vllm qwen2-vl-7b)
// must turn every one of them into a 200. Then the breaker on its own (opens after 5 failures in
// a row, keeps traffic off the deployment during its cooldown, closes after a good probe), the
// upstream's Retry-After / retry-after-ms, and a chain whose every step is open (503 at once).
//
// Every fault is injected by the fake upstream (tests/fakes/fake_upstream.mjs), which records
// each call with the fault it applied: the tests check both what the client saw and that the
// faults really happened.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startFake, startGateway, gatewayConfig, post, metrics, metricValue, pool, dataUrl } from './harness.mjs';
import { generatePng } from '../fakes/fake_upstream.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ADMIN_KEY = 'test-admin-key-chaos-0123456789';
const N = 60; // client requests per fault kind
const CONCURRENCY = 6;
const SMALL_PNG = dataUrl(generatePng(64, 48), 'image/png');
const ROUTE = /^(primary|backup|selfhosted) \(step [1-3] of 3\)$/;

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake?.stop();
});

/** Providers: the harness's three plus a self-hosted OpenAI-compatible one at the fake's /v1. */
function chaosConfig(overrides = {}) {
  return {
    providers: [
      ...gatewayConfig(fake).providers,
      { name: 'vllm', type: 'openai-compatible', base_url: `${fake.url}/v1`, timeout_ms: 2500 },
    ],
    retry: { max_attempts: 3, base_ms: 20, cap_ms: 100, attempt_timeout_ms: 400 },
    breaker: { consecutive_failures: 5, cooldown_ms: 1000, min_requests: 1000 },
    models: [
      { name: 'primary', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['backup', 'selfhosted'] },
      { name: 'backup', provider: 'anthropic', upstream: 'claude-sonnet-4-5' },
      { name: 'selfhosted', provider: 'vllm', upstream: 'qwen2-vl-7b' },
    ],
    ...overrides,
  };
}

/** Request i of a run: every third one carries a small PNG as a data URL. */
function chaosBody(i, json) {
  const content = [{ type: 'text', text: `chaos request ${i}${json ? ': answer in JSON' : ''}` }];
  if (i % 3 === 0) content.push({ type: 'image_url', image_url: { url: SMALL_PNG } });
  return {
    model: 'primary',
    messages: [{ role: 'user', content }],
    ...(json ? { response_format: { type: 'json_object' } } : {}),
  };
}

const ask = (gw, text, headers = {}) =>
  post(gw, '/v1/chat/completions', { model: 'primary', messages: [{ role: 'user', content: text }] }, headers);
/** How many answers came from each step. */
function routeCounts(results) {
  const n = {};
  for (const r of results) {
    const step = (r.headers.get('x-aperture-route') || 'none').split(' ')[0];
    n[step] = (n[step] || 0) + 1;
  }
  return n;
}
const upstreamFor = async (model) => (await fake.requests()).filter((r) => r.model === model);

// ---- one fault kind at a time, 30% of all upstream calls --------------------------------------

const KINDS = [
  { name: '429 with Retry-After: 1', fault: { status: 429, retry_after: 1 } },
  { name: '429 with Retry-After: 0', fault: { status: 429, retry_after: 0 } },
  { name: '429 without Retry-After', fault: { status: 429 } },
  { name: '429 with retry-after-ms: 50', fault: { status: 429, retry_after_ms: 50 } },
  { name: '500', fault: { status: 500 } },
  { name: '503', fault: { status: 503 } },
  { name: 'timeout (1500 ms delay > 400 ms attempt timeout)', fault: { delay_ms: 1500 } },
  { name: 'malformed JSON in a 200', fault: { malformed_json: true } },
  { name: 'dropped connection', fault: { drop: true } },
  { name: 'all-null JSON answer (fails the built-in check)', fault: { all_null: true }, json: true },
];

describe('chaos: each fault kind on 30% of upstream calls loses no request', () => {
  for (const kind of KINDS) {
    test(`chaos: ${kind.name}: ${N} requests, ${CONCURRENCY} at a time, all answered 200 by some step`, async (t) => {
      const gw = await startGateway(fake, { config: chaosConfig() });
      try {
        await fake.reset();
        await fake.fault({ path: '/', ...kind.fault, rate: 0.3, count: -1 });
        const results = await pool(N, CONCURRENCY, (i) => post(gw, '/v1/chat/completions', chaosBody(i, kind.json)));
        await fake.clearFaults();

        assert.equal(results.length, N, 'one response per request');
        const bad = results.map((r, i) => ({ i, r })).filter(({ r }) => r.status !== 200);
        assert.equal(bad.length, 0, `${bad.length} of ${N} not 200:\n${bad.slice(0, 5).map(({ i, r }) => `#${i}: ${r.status} ${r.text.slice(0, 300)}`).join('\n')}`);
        for (const [i, r] of results.entries()) {
          const route = r.headers.get('x-aperture-route');
          assert.match(route || '', ROUTE, `request ${i}: x-aperture-route ${route}`);
          assert.equal(typeof r.body?.choices?.[0]?.message?.content, 'string', `request ${i}: an answer`);
        }

        // The faults really happened, and were ridden out by further upstream calls.
        await sleep(50);
        const recs = (await fake.requests()).filter((r) => r.model);
        const faulted = recs.filter((r) => r.fault);
        t.diagnostic(`${recs.length} upstream calls, ${faulted.length} faulted; routes: ${JSON.stringify(routeCounts(results))}`);
        assert.ok(faulted.length > 0, `no fault was injected in ${recs.length} upstream calls`);
        assert.ok(recs.length > N, `${recs.length} upstream calls for ${N} requests: no retry or fallback happened`);
        // Images went upstream (every third request had one; fallbacks re-send it).
        assert.ok(recs.some((r) => r.n_images === 1), 'some upstream calls carried the image');

        if (kind.json) {
          // An all-null answer is served only when no later step was left to try.
          for (const [i, r] of results.entries()) {
            const step = r.headers.get('x-aperture-route');
            if (step.startsWith('selfhosted')) continue;
            const obj = JSON.parse(r.body.choices[0].message.content);
            assert.ok(Object.values(obj).some((v) => v !== null), `request ${i}: all-null answer served from ${step}`);
          }
          const m = await metrics(gw);
          assert.ok(metricValue(m, 'aperture_fallbacks_total', { reason: 'failed_checks' }) > 0, 'fallbacks for failed_checks counted');
        }
      } finally {
        await fake.clearFaults();
        await gw.stop();
      }
    });
  }
});

// ---- the breaker, Retry-After, and a chain with nothing healthy --------------------------------

/** The entry for deployment anywhere in the admin endpoint's JSON (its shape is the server's). */
function findDeployment(v, dep) {
  if (Array.isArray(v)) {
    for (const x of v) {
      const f = findDeployment(x, dep);
      if (f) return f;
    }
    return null;
  }
  if (!v || typeof v !== 'object') return null;
  if (v.deployment === dep || v.name === dep) return v;
  if (v[dep] && typeof v[dep] === 'object') return { deployment: dep, ...v[dep] };
  for (const x of Object.values(v)) {
    const f = findDeployment(x, dep);
    if (f) return f;
  }
  return null;
}

async function adminBreakers(gw) {
  const r = await fetch(gw.url + '/v1/admin/breakers', { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  const text = await r.text();
  assert.equal(r.status, 200, `GET /v1/admin/breakers: ${r.status} ${text}`);
  return JSON.parse(text);
}

/** Run fn(gw) against a fresh gateway (fresh breakers) with the chaos config and the admin key. */
async function withGateway(fn) {
  const gw = await startGateway(fake, { config: chaosConfig(), env: { APERTURE_ADMIN_KEY: ADMIN_KEY } });
  try {
    await fake.reset();
    await fn(gw);
  } finally {
    await fake.clearFaults();
    await gw.stop();
  }
}

/** Two requests while the primary fails: 3 + 2 failed attempts, the fifth opens its breaker. */
async function openPrimary(gw) {
  await fake.fault({ model: 'gpt-4o', status: 500, count: -1 });
  for (let i = 0; i < 2; i++) {
    const r = await ask(gw, `open it ${i}`);
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('x-aperture-route'), /^backup /);
  }
  return Date.now();
}

describe('chaos: circuit breaker, Retry-After, nothing healthy', () => {
  test('breaker: 5 failures in a row open it; during the cooldown no call reaches it and clients get 200 from the backup; a probe closes it', () =>
    withGateway(async (gw) => {
      const tOpen = await openPrimary(gw);
      assert.equal((await upstreamFor('gpt-4o')).length, 5, 'exactly 5 attempts reached the primary (no sixth once open)');
      assert.equal(metricValue(await metrics(gw), 'aperture_breaker_state', { deployment: 'openai/gpt-4o' }), 1);
      for (let i = 0; i < 5; i++) {
        const r = await ask(gw, `while open ${i}`);
        assert.equal(r.status, 200, r.text);
        assert.match(r.headers.get('x-aperture-route'), /^backup /);
      }
      assert.ok(Date.now() - tOpen < 1000, 'still inside the cooldown (machine too slow?)');
      assert.equal((await upstreamFor('gpt-4o')).length, 5, 'no call reached the open deployment');
      assert.ok(metricValue(await metrics(gw), 'aperture_fallbacks_total', { from: 'primary', to: 'backup', reason: 'breaker_open' }) >= 5);

      // The primary recovers; after the cooldown one probe goes through and closes the breaker.
      await fake.clearFaults();
      await sleep(Math.max(0, tOpen + 1200 - Date.now()));
      const probe = await ask(gw, 'probe');
      assert.equal(probe.status, 200, probe.text);
      assert.match(probe.headers.get('x-aperture-route'), /^primary /);
      assert.equal((await upstreamFor('gpt-4o')).length, 6, 'one probe');
      assert.equal(metricValue(await metrics(gw), 'aperture_breaker_state', { deployment: 'openai/gpt-4o' }), 0);
    }));

  test('breaker: GET /v1/admin/breakers lists the open deployment, then closed after the probe', () =>
    withGateway(async (gw) => {
      const tOpen = await openPrimary(gw);
      const entry = findDeployment(await adminBreakers(gw), 'openai/gpt-4o');
      assert.ok(entry, 'the admin endpoint lists openai/gpt-4o');
      assert.ok(entry.state === 'open' || entry.state === 1, `state ${JSON.stringify(entry)}`);
      await fake.clearFaults();
      await sleep(Math.max(0, tOpen + 1200 - Date.now()));
      assert.equal((await ask(gw, 'probe')).status, 200);
      const closed = findDeployment(await adminBreakers(gw), 'openai/gpt-4o');
      assert.ok(closed && (closed.state === 'closed' || closed.state === 0), `after the probe: ${JSON.stringify(closed)}`);
      // Admin only.
      const none = await fetch(gw.url + '/v1/admin/breakers');
      assert.ok(none.status === 401 || none.status === 403, `no key: ${none.status}`);
      const wrong = await fetch(gw.url + '/v1/admin/breakers', { headers: { authorization: 'Bearer not-the-admin-key' } });
      assert.ok(wrong.status === 401 || wrong.status === 403, `wrong key: ${wrong.status}`);
    }));

  test('Retry-After: 1 on a 429: the retry reaches the upstream at least ~950 ms later', () =>
    withGateway(async (gw) => {
      await fake.fault({ model: 'gpt-4o', status: 429, retry_after: 1, count: 1 });
      const r = await ask(gw, 'retry after one second');
      assert.equal(r.status, 200, r.text);
      assert.match(r.headers.get('x-aperture-route'), /^primary /);
      const recs = await upstreamFor('gpt-4o');
      assert.equal(recs.length, 2);
      const gap = recs[1].time - recs[0].done_time;
      assert.ok(gap >= 950, `retried ${gap} ms after the 429`);
    }));

  test('retry-after-ms: 300 on a 429: the retry waits ~300 ms (not less; not rounded up to whole seconds)', () =>
    withGateway(async (gw) => {
      // OpenAI sends retry-after-ms alone at times; backoff without it would be <= 20 ms here.
      await fake.fault({ model: 'gpt-4o', status: 429, retry_after_ms: 300, count: 1 });
      const r = await ask(gw, 'retry after 300 ms');
      assert.equal(r.status, 200, r.text);
      assert.match(r.headers.get('x-aperture-route'), /^primary /);
      const recs = await upstreamFor('gpt-4o');
      assert.equal(recs.length, 2);
      const gap = recs[1].time - recs[0].done_time;
      assert.ok(gap >= 280, `retried only ${gap} ms after the 429`);
      assert.ok(gap < 900, `retried ${gap} ms after a 429 asking for 300 ms`);
    }));

  test('every step of the chain open: 503 at once with Retry-After >= 1, no upstream call', () =>
    withGateway(async (gw) => {
      await fake.fault({ path: '/', status: 503, count: -1 });
      // Two requests: 3 + 2 failures at each of the three steps open all three breakers.
      for (let i = 0; i < 2; i++) await ask(gw, `break everything ${i}`);
      const m = await metrics(gw);
      for (const dep of ['openai/gpt-4o', 'anthropic/claude-sonnet-4-5', 'vllm/qwen2-vl-7b'])
        assert.equal(metricValue(m, 'aperture_breaker_state', { deployment: dep }), 1, `${dep} open`);
      const n = (await fake.requests()).length;
      const t0 = Date.now();
      const r = await ask(gw, 'nothing left');
      const took = Date.now() - t0;
      assert.equal(r.status, 503, r.text);
      assert.ok(Number(r.headers.get('retry-after')) >= 1, `Retry-After ${r.headers.get('retry-after')}`);
      assert.ok(took < 500, `answered in ${took} ms`);
      assert.equal((await fake.requests()).length, n, 'no upstream call');
    }));
});
