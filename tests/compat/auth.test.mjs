// Client keys and per-key rate limits, as the SDKs see them: a gateway configured with one client key
// (stored as its SHA-256) and a small token bucket. Refusals must arrive as HTTP answers the SDKs turn
// into their own error types, also for POSTs whose body the gateway refuses to read.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startFake, startGateway } from './harness.mjs';
import { cannedAnswer } from '../fakes/fake_upstream.mjs';

const KEY = 'aperture-client-key-for-tests';
const BURST = 3;
let fake, gw;

before(async () => {
  fake = await startFake();
  gw = await startGateway(fake, {
    config: { client_keys_sha256: [createHash('sha256').update(KEY).digest('hex')], rate_rps: 0.05, rate_burst: BURST },
  });
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});

const oai = (apiKey) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 });
const hello = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hello' }] };

test('no key on a GET: 401', async () => {
  const r = await fetch(`${gw.url}/v1/models`);
  assert.equal(r.status, 401);
  assert.match((await r.json()).error.message, /API key/);
});

test('wrong key: the openai sdk throws AuthenticationError', async () => {
  const e = await oai('wrong-key').chat.completions.create(hello).catch((e) => e);
  assert.ok(e instanceof OpenAI.AuthenticationError, `${e?.constructor?.name}: ${e?.message} ${e?.cause?.code ?? ''}`);
  assert.equal(e.status, 401);
});

test('wrong key: the anthropic sdk throws AuthenticationError', async () => {
  const c = new Anthropic({ baseURL: gw.url, apiKey: 'wrong-key', maxRetries: 0 });
  const e = await c.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }).catch((e) => e);
  assert.ok(e instanceof Anthropic.AuthenticationError, `${e?.constructor?.name}: ${e?.message} ${e?.cause?.code ?? ''}`);
  assert.equal(e.error?.error?.type, 'authentication_error');
});

test('the right key works, as a Bearer token and as x-api-key; the key never goes upstream', async () => {
  const r = await oai(KEY).chat.completions.create(hello);
  assert.equal(r.choices[0].message.content, cannedAnswer('openai', 'gpt-4o', 0));
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify(hello),
  });
  assert.equal(res.status, 200);
  const recs = await fake.requests('/v1/chat/completions');
  assert.equal(recs.length, 2);
  assert.ok(!JSON.stringify(recs).includes(KEY), 'the client key was forwarded upstream');
  assert.ok(!gw.stderr().includes(KEY), 'the client key was logged');
});

test('past the burst: RateLimitError with Retry-After', async () => {
  // Two of the BURST tokens were spent above; spend the rest, then one more.
  let e;
  for (let i = 0; i < BURST + 1 && !e; i++) e = await oai(KEY).chat.completions.create(hello).then(() => undefined, (x) => x);
  assert.ok(e instanceof OpenAI.RateLimitError, `${e?.constructor?.name}: ${e?.message} ${e?.cause?.code ?? ''}`);
  assert.ok(Number(e.headers.get('retry-after')) >= 1);
});
