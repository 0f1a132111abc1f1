// Retries, circuit breakers and fallback chains against the fake upstream's injected faults.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startFake, startGateway, post } from './harness.mjs';

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake.stop();
});

const ask = (gw, model, text, headers = {}) =>
  post(gw, '/v1/chat/completions', { model, messages: [{ role: 'user', content: text }] }, headers);
const count = async (path) => (await fake.requests(path)).length;

describe('retries', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, { config: { retry: { max_attempts: 3, base_ms: 50, cap_ms: 200 } } });
  });
  after(async () => gw.stop());

  test('a 503 then a good answer: one client request, two upstream attempts, 200', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 503, count: 1 });
    const r = await ask(gw, 'gpt-4o', 'retry me');
    assert.equal(r.status, 200, r.text);
    assert.equal(await count('/v1/chat/completions'), 2);
    const m = await (await fetch(gw.url + '/metrics')).text();
    assert.match(m, /aperture_retries_total\{deployment="openai\/gpt-4o",reason="http_5xx"\} 1/);
  });

  test('Retry-After is honoured: the retry waits at least that long', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 429, retry_after: 1, count: 1 });
    const t0 = Date.now();
    const r = await ask(gw, 'gpt-4o', 'retry after');
    assert.equal(r.status, 200, r.text);
    assert.ok(Date.now() - t0 >= 950, `waited ${Date.now() - t0} ms`);
    assert.equal(await count('/v1/chat/completions'), 2);
  });

  test('a client that went away is not retried for', async () => {
    await fake.reset();
    // The first attempt fails after 600 ms; the client gives up after 150 ms.
    await fake.fault({ path: '/v1/chat/completions', status: 503, delay_ms: 600, count: 1 });
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), 150);
    await fetch(gw.url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'gone' }] }),
      signal: ac.signal,
    }).catch(() => {});
    clearTimeout(t);
    await new Promise((r) => setTimeout(r, 1200)); // the 503 arrives, backoff <= 200 ms passes
    assert.equal(await count('/v1/chat/completions'), 1, 'no second attempt for nobody');
    const m = await (await fetch(gw.url + '/metrics')).text();
    assert.match(m, /aperture_client_gone_total 1/);
  });

  test('a 400 is not retried', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 400, count: 1 });
    const r = await ask(gw, 'gpt-4o', 'no retry');
    assert.equal(r.status, 400);
    assert.equal(await count('/v1/chat/completions'), 1);
  });

  test('attempts stop at max_attempts and the last error reaches the client', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 500, count: 3 });
    const r = await ask(gw, 'gpt-4o', 'always failing');
    assert.equal(r.status, 502);
    assert.equal(await count('/v1/chat/completions'), 3);
    await fake.clearFaults();
  });
});

describe('fallback chain and breaker', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        retry: { max_attempts: 2, base_ms: 20, cap_ms: 50 },
        breaker: { consecutive_failures: 3, cooldown_ms: 1500, half_open_probes: 1, min_requests: 1000 },
        models: [
          { name: 'primary', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['backup'] },
          { name: 'backup', provider: 'anthropic', upstream: 'claude-sonnet-4-5' },
        ],
      },
    });
  });
  after(async () => gw.stop());

  test('the primary failing falls through to the backup on another provider', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 500, count: 2 });
    const r = await ask(gw, 'primary', 'fall through');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('x-aperture-route'), /backup \(step 2 of 2\)/);
    assert.equal(await count('/v1/chat/completions'), 2, 'two attempts at the primary');
    assert.equal(await count('/v1/messages'), 1, 'then the backup, in anthropic format');
  });

  test('the breaker opens, skips the primary during cooldown, then closes after a good probe', async () => {
    await fake.reset();
    await fake.fault({ path: '/v1/chat/completions', status: 503, count: -1 });
    // Two requests = 4 failed attempts: the breaker opens at 3.
    for (let i = 0; i < 2; i++) assert.equal((await ask(gw, 'primary', `open ${i}`)).status, 200);
    const m = await (await fetch(gw.url + '/metrics')).text();
    assert.match(m, /aperture_breaker_state\{deployment="openai\/gpt-4o"\} 1/);
    const before = await count('/v1/chat/completions');
    // While open: no traffic to the primary at all, answers come from the backup at once.
    for (let i = 0; i < 5; i++) {
      const r = await ask(gw, 'primary', `skip ${i}`);
      assert.equal(r.status, 200);
      assert.match(r.headers.get('x-aperture-route'), /backup/);
    }
    assert.equal(await count('/v1/chat/completions'), before, 'no request reached the open deployment');
    // After the cooldown the primary is healthy again: one probe goes through and closes it.
    await fake.clearFaults();
    await new Promise((r) => setTimeout(r, 1700));
    const probe = await ask(gw, 'primary', 'probe');
    assert.equal(probe.status, 200);
    assert.match(probe.headers.get('x-aperture-route'), /primary/);
    const m2 = await (await fetch(gw.url + '/metrics')).text();
    assert.match(m2, /aperture_breaker_state\{deployment="openai\/gpt-4o"\} 0/);
    assert.match(m2, /aperture_fallbacks_total\{from="primary",to="backup",reason="breaker_open"\}/);
  });

  test('no healthy step: 503 at once with Retry-After, no upstream call', async () => {
    await fake.reset();
    await fake.fault({ path: '/', status: 503, count: -1 });
    for (let i = 0; i < 2; i++) await ask(gw, 'primary', `kill ${i}`);
    // Both deployments now fail; open the backup's breaker too.
    for (let i = 0; i < 2; i++) await ask(gw, 'backup', `kill backup ${i}`);
    const n = (await fake.requests()).length;
    const t0 = Date.now();
    const r = await ask(gw, 'primary', 'nothing left');
    assert.equal(r.status, 503);
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
    assert.ok(Date.now() - t0 < 500, 'answered at once');
    assert.equal((await fake.requests()).length, n, 'no upstream call while open');
    await fake.clearFaults();
    await new Promise((r) => setTimeout(r, 1700));
  });
});

describe('chaos: 30% of upstream calls fail', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        retry: { max_attempts: 3, base_ms: 10, cap_ms: 40 },
        breaker: { consecutive_failures: 50, cooldown_ms: 1000, min_requests: 1000 },
        models: [
          { name: 'primary', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['backup'] },
          { name: 'backup', provider: 'anthropic', upstream: 'claude-sonnet-4-5' },
        ],
      },
    });
  });
  after(async () => gw.stop());

  test('every client request ends in an answer from some step of its chain', async () => {
    await fake.reset();
    await fake.fault([
      { path: '/v1/chat/completions', status: 500, rate: 0.1, count: -1 },
      { path: '/v1/chat/completions', status: 429, rate: 0.1, count: -1 },
      { path: '/v1/chat/completions', drop: true, rate: 0.1, count: -1 },
      { path: '/v1/messages', status: 503, rate: 0.3, count: -1 },
    ]);
    const N = 60;
    const results = [];
    for (let b = 0; b < N; b += 10)
      results.push(...(await Promise.all(Array.from({ length: 10 }, (_, i) => ask(gw, 'primary', `chaos ${b + i}`)))));
    await fake.clearFaults();
    const bad = results.filter((r) => r.status !== 200);
    assert.equal(bad.length, 0, `failed: ${bad.map((r) => r.status + ' ' + r.text).join('\n')}`);
    const upstream = (await fake.requests()).length;
    assert.ok(upstream > N, `faults were injected (${upstream} upstream calls for ${N} requests)`);
  });
});
