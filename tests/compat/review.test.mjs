// The human review queue, end to end: a chain [gpt-4o, review] whose model fails stores the
// request for a person instead of erroring. The client gets HTTP 202 with needs_review: true and
// a review_id ("rv_" + 24 hex digits) in its own dialect (and the official openai SDK resolves,
// not throws), reads its item with its client key, a reviewer lists and resolves it with the
// admin key, and a second resolution is refused (409).
//
// Run against both stores: SQLite (a temporary file) and Redis (a redis-server the tests start
// on a loopback port, like cache.test.mjs; skipped with a message when there is none), where two
// gateways share one queue.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { startFake, startGateway, post, dataUrl, NO_REDIS, freePort, startRedis, killChild } from './harness.mjs';
import { generatePng } from '../fakes/fake_upstream.mjs';

const ADMIN_KEY = 'test-admin-key-review-0123456789';
const CLIENT_KEY = 'aperture-client-key-review-tests';
const REVIEW_ID = /^rv_[0-9a-f]{24}$/;
const IMAGE = dataUrl(generatePng(120, 90), 'image/png');
const work = mkdtempSync(join(tmpdir(), 'aperture-review-test-'));

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake?.stop();
  rmSync(work, { recursive: true, force: true });
});

function reviewConfig() {
  return {
    client_keys_sha256: [createHash('sha256').update(CLIENT_KEY).digest('hex')],
    retry: { max_attempts: 1 },
    breaker: { consecutive_failures: 1000, min_requests: 1000 },
    models: [{ name: 'primary', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['review'] }],
  };
}

const CLIENT = { authorization: `Bearer ${CLIENT_KEY}` };
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };

async function get(gw, path, headers = {}) {
  const r = await fetch(gw.url + path, { headers });
  const text = await r.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: r.status, headers: r.headers, body, text };
}

/** A chat request the failing model cannot answer: it ends in the review step. */
async function toReview(gw, prompt) {
  await fake.fault({ model: 'gpt-4o', status: 500, count: -1 });
  try {
    return await post(
      gw,
      '/v1/chat/completions',
      { model: 'primary', messages: [{ role: 'user', content: [{ type: 'text', text: prompt }, { type: 'image_url', image_url: { url: IMAGE } }] }] },
      CLIENT,
    );
  } finally {
    await fake.clearFaults();
  }
}

/** The cases both stores must pass; gws() gives {gw} once the describe's before has run. */
function commonCases(label, gws) {
  test(`${label}: openai dialect: the model failing ends in review: 202, needs_review and review_id`, async () => {
    const { gw } = gws();
    await fake.reset();
    const r = await toReview(gw, 'read this invoice');
    assert.equal(r.status, 202, r.text);
    assert.equal(r.body.object, 'chat.completion');
    assert.equal(r.body.needs_review, true);
    assert.match(r.body.review_id, REVIEW_ID);
    assert.deepEqual(JSON.parse(r.body.choices[0].message.content), { needs_review: true, review_id: r.body.review_id });
    assert.equal(r.body.choices[0].message.role, 'assistant');
    assert.ok((await fake.requests()).some((c) => c.model === 'gpt-4o'), 'the model was tried first');
  });

  test(`${label}: anthropic dialect: 202 with a message object carrying needs_review and review_id`, async () => {
    const { gw } = gws();
    await fake.fault({ model: 'gpt-4o', status: 500, count: -1 });
    let r;
    try {
      r = await post(gw, '/v1/messages', { model: 'primary', max_tokens: 200, messages: [{ role: 'user', content: 'read this invoice' }] }, { 'x-api-key': CLIENT_KEY });
    } finally {
      await fake.clearFaults();
    }
    assert.equal(r.status, 202, r.text);
    assert.equal(r.body.type, 'message');
    assert.equal(r.body.role, 'assistant');
    assert.equal(r.body.needs_review, true);
    assert.match(r.body.review_id, REVIEW_ID);
    const text = r.body.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
    assert.deepEqual(JSON.parse(text), { needs_review: true, review_id: r.body.review_id });
  });

  test(`${label}: the openai sdk resolves (does not throw) with needs_review and review_id`, async () => {
    const { gw } = gws();
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0 });
    await fake.fault({ model: 'gpt-4o', status: 500, count: -1 });
    let res;
    try {
      res = await client.chat.completions.create({ model: 'primary', messages: [{ role: 'user', content: 'sdk to review' }] });
    } finally {
      await fake.clearFaults();
    }
    assert.equal(res.needs_review, true);
    assert.match(res.review_id, REVIEW_ID);
    assert.deepEqual(JSON.parse(res.choices[0].message.content), { needs_review: true, review_id: res.review_id });
  });

  test(`${label}: the client reads its pending item with its key; no key 401; unknown id 404`, async () => {
    const { gw } = gws();
    const { body } = await toReview(gw, 'poll me');
    const id = body.review_id;
    const r = await get(gw, `/v1/review/${id}`, CLIENT);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.id, id);
    assert.equal(r.body.status, 'pending');
    assert.equal(r.body.model, 'primary');
    assert.equal((await get(gw, `/v1/review/${id}`)).status, 401);
    assert.equal((await get(gw, `/v1/review/rv_${'0'.repeat(24)}`, CLIENT)).status, 404);
  });

  test(`${label}: the admin lists it under status=pending; a client key cannot list`, async () => {
    const { gw } = gws();
    const { body } = await toReview(gw, 'list me');
    const id = body.review_id;
    const r = await get(gw, '/v1/review?status=pending&limit=500', ADMIN);
    assert.equal(r.status, 200, r.text);
    const items = r.body.items ?? r.body.data ?? r.body;
    assert.ok(Array.isArray(items), r.text.slice(0, 300));
    const it = items.find((x) => x.id === id);
    assert.ok(it, `${id} is listed`);
    assert.equal(it.status, 'pending');
    assert.ok(items.every((x) => x.status === 'pending'));
    const denied = await get(gw, '/v1/review?status=pending', CLIENT);
    assert.ok(denied.status === 401 || denied.status === 403, `client key listing: ${denied.status}`);
  });

  test(`${label}: the admin resolves it; the client then reads status resolved and the answer; a second resolve is 409`, async () => {
    const { gw } = gws();
    const { body } = await toReview(gw, 'resolve me');
    const id = body.review_id;
    const answer = { vendor: 'ACME Office Supply', total: '118.40' };
    const asClient = await post(gw, `/v1/review/${id}`, { answer, reviewer: 'x' }, CLIENT);
    assert.ok(asClient.status === 401 || asClient.status === 403, `a client resolving: ${asClient.status}`);
    const res = await post(gw, `/v1/review/${id}`, { answer, reviewer: 'x' }, ADMIN);
    assert.equal(res.status, 200, res.text);
    const r = await get(gw, `/v1/review/${id}`, CLIENT);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.status, 'resolved');
    assert.deepEqual(r.body.answer, answer);
    assert.equal(r.body.reviewer, 'x');
    const again = await post(gw, `/v1/review/${id}`, { answer: { total: '0' }, reviewer: 'y' }, ADMIN);
    assert.equal(again.status, 409, again.text);
    assert.deepEqual((await get(gw, `/v1/review/${id}`, CLIENT)).body.answer, answer, 'the first answer stands');
    const pending = await get(gw, '/v1/review?status=pending&limit=500', ADMIN);
    assert.ok(!(pending.body.items ?? []).some((x) => x.id === id), 'no longer pending');
  });
}

describe('review queue: sqlite', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: reviewConfig(),
      env: { APERTURE_ADMIN_KEY: ADMIN_KEY, APERTURE_REVIEW_URL: `sqlite://${join(work, 'review.db')}` },
    });
  });
  after(async () => gw?.stop());
  commonCases('sqlite', () => ({ gw }));
});

// ---- redis ----------------------------------------------------------------------------------------

describe('review queue: redis', { skip: NO_REDIS }, () => {
  let redis, gw, gw2;
  before(async () => {
    const port = await freePort();
    redis = await startRedis(port, work);
    const env = { APERTURE_ADMIN_KEY: ADMIN_KEY, APERTURE_REVIEW_URL: `redis://127.0.0.1:${port}/0` };
    gw = await startGateway(fake, { config: reviewConfig(), env });
    gw2 = await startGateway(fake, { config: reviewConfig(), env });
  });
  after(async () => {
    await gw?.stop();
    await gw2?.stop();
    await killChild(redis);
  });
  commonCases('redis', () => ({ gw }));

  test('redis: two gateways share one queue: an item made on one is read and resolved on the other', async () => {
    const { body } = await toReview(gw, 'shared queue');
    const id = body.review_id;
    assert.match(id, REVIEW_ID);
    const r = await get(gw2, `/v1/review/${id}`, CLIENT);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.status, 'pending');
    assert.equal((await post(gw2, `/v1/review/${id}`, { answer: { ok: true }, reviewer: 'other' }, ADMIN)).status, 200);
    const back = await get(gw, `/v1/review/${id}`, CLIENT);
    assert.equal(back.body.status, 'resolved');
    assert.deepEqual(back.body.answer, { ok: true });
  });
});
