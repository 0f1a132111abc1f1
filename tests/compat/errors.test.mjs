// Errors as the SDKs see them: bad requests from the client, and upstream failures injected at the
// fake (statuses with and without Retry-After, malformed JSON, dropped connections, truncated streams,
// a slow upstream). The SDKs retry 5xx and 429 by default: every client here has maxRetries: 0.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { connect } from 'node:net';
import { startFake, startGateway, post } from './harness.mjs';

let fake, gw, oai, ant;
const MAX_BODY = 16 * 1024 * 1024; // harness.gatewayConfig

before(async () => {
  fake = await startFake();
  // One attempt: these cases check how a single upstream failure surfaces to clients (retries
  // and fallbacks have their own tests in resilience.test.mjs).
  gw = await startGateway(fake, { config: { retry: { max_attempts: 1 } } }); // providers time out after 2.5 s
  oai = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  ant = new Anthropic({ baseURL: gw.url, apiKey: 'unused', maxRetries: 0 });
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});
beforeEach(() => fake.reset());

const chat = (model = 'gpt-4o', extra = {}) => oai.chat.completions.create({ model, messages: [{ role: 'user', content: 'hello' }], ...extra });
const msg = (model = 'claude-sonnet-4-5', extra = {}) =>
  ant.messages.create({ model, max_tokens: 32, messages: [{ role: 'user', content: 'hello' }], ...extra });
const caught = (p) => p.then((v) => assert.fail(`expected an error, got ${JSON.stringify(v).slice(0, 200)}`), (e) => e);

test('invalid model: openai sdk throws NotFoundError (or BadRequestError), nothing goes upstream', async () => {
  const e = await caught(chat('no-such-model-xyz'));
  assert.ok(e instanceof OpenAI.NotFoundError || e instanceof OpenAI.BadRequestError, `${e?.constructor?.name}: ${e}`);
  assert.match(e.message, /no-such-model-xyz/);
  assert.equal(e.error?.param ?? 'model', 'model');
  assert.equal((await fake.requests()).length, 0);
});

test('invalid model: anthropic sdk throws NotFoundError (or BadRequestError)', async () => {
  const e = await caught(msg('no-such-model-xyz'));
  assert.ok(e instanceof Anthropic.NotFoundError || e instanceof Anthropic.BadRequestError, `${e?.constructor?.name}: ${e}`);
  assert.equal(e.error?.type, 'error');
  assert.match(e.message, /no-such-model-xyz/);
});

test('missing messages: openai sdk throws BadRequestError naming the field', async () => {
  const e = await caught(oai.chat.completions.create({ model: 'gpt-4o', messages: [] }));
  assert.ok(e instanceof OpenAI.BadRequestError, String(e));
  assert.match(e.message, /messages/);
});

test('upstream 500: openai sdk gets an APIError with status 502 naming the provider', async () => {
  await fake.fault({ path: '/v1/chat/completions', status: 500 });
  const e = await caught(chat());
  assert.ok(e instanceof OpenAI.APIError, String(e));
  assert.equal(e.status, 502);
  assert.match(e.message, /openai/);
  assert.match(e.message, /injected status 500/, 'the upstream message should be relayed');
  assert.equal((await fake.requests('/v1/chat/completions')).length, 1, 'exactly one upstream attempt');
});

test('upstream 500: anthropic sdk gets an APIError with status 502', async () => {
  await fake.fault({ path: '/v1/messages', status: 500 });
  const e = await caught(msg());
  assert.ok(e instanceof Anthropic.APIError, String(e));
  assert.equal(e.status, 502);
  assert.equal(e.error?.error?.type, 'api_error');
});

test('upstream 429 with Retry-After: openai sdk gets RateLimitError with a Retry-After', async () => {
  await fake.fault({ path: '/v1/chat/completions', status: 429, retry_after: 7 });
  const e = await caught(chat());
  assert.ok(e instanceof OpenAI.RateLimitError, `${e?.constructor?.name}: ${e}`);
  assert.equal(e.status, 429);
  const ra = e.headers?.get('retry-after');
  assert.ok(ra !== null && Number(ra) >= 1, `retry-after: ${ra}`);
});

test('upstream 429 with Retry-After: the upstream value reaches the client', async () => {
  // The upstream asked for 7 s: a client told to come back sooner only hammers it again.
  await fake.fault({ path: '/v1/chat/completions', status: 429, retry_after: 7 });
  const e = await caught(chat());
  assert.equal(e.headers?.get('retry-after'), '7');
});

test('upstream 429 without Retry-After: anthropic sdk gets RateLimitError', async () => {
  await fake.fault({ path: '/v1/messages', status: 429 });
  const e = await caught(msg());
  assert.ok(e instanceof Anthropic.RateLimitError, `${e?.constructor?.name}: ${e}`);
  assert.equal(e.error?.error?.type, 'rate_limit_error');
});

test('upstream 400 keeps its status: BadRequestError with the upstream message', async () => {
  await fake.fault({ path: '/v1/chat/completions', status: 400, message: 'Invalid image: the fake says no' });
  const e = await caught(chat());
  assert.ok(e instanceof OpenAI.BadRequestError, String(e));
  assert.match(e.message, /the fake says no/);
});

test('upstream malformed JSON: 502', async () => {
  await fake.fault({ path: '/v1/chat/completions', malformed_json: true });
  const e = await caught(chat());
  assert.ok(e instanceof OpenAI.APIError, String(e));
  assert.equal(e.status, 502);
});

test('upstream drops the connection: 502', async () => {
  // Every attempt: libcurl resends a request once when a reused keep-alive connection dies.
  await fake.fault({ path: '/v1/messages', drop: true, count: -1 });
  const e = await caught(msg());
  assert.ok(e instanceof Anthropic.APIError, String(e));
  assert.equal(e.status, 502);
});

test('upstream truncated body (non-streamed): 502', async () => {
  await fake.fault({ path: '/v1/chat/completions', truncate_stream: true });
  const e = await caught(chat());
  assert.equal(e.status, 502, String(e));
});

test('upstream slower than the provider timeout: 504', async () => {
  await fake.fault({ path: '/v1/chat/completions', delay_ms: 4000 });
  const t0 = Date.now();
  const e = await caught(chat());
  assert.ok(e instanceof OpenAI.APIError, String(e));
  assert.equal(e.status, 504);
  const ms = Date.now() - t0;
  assert.ok(ms >= 2400 && ms < 3900, `gave up after ${ms} ms; the provider timeout is 2.5 s`);
});

test('truncated upstream stream: the openai sdk stream fails instead of ending quietly', async () => {
  await fake.fault({ path: '/v1/chat/completions', truncate_stream: true });
  const s = await chat('gpt-4o', { stream: true });
  let text = '';
  await assert.rejects(async () => {
    for await (const c of s) text += c.choices[0]?.delta?.content ?? '';
  });
});

test('truncated upstream stream translated for the anthropic sdk: the stream fails', async () => {
  await fake.fault({ path: '/v1/messages', truncate_stream: true });
  const stream = ant.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 32, messages: [{ role: 'user', content: 'x' }] });
  await assert.rejects(stream.finalMessage());
});

test('upstream error status on a streamed call: an SDK error before any chunk', async () => {
  await fake.fault({ path: '/v1/messages', status: 529 });
  const e = await caught(msg('claude-sonnet-4-5', { stream: true }).then(async (s) => {
    for await (const _ of s);
  }));
  assert.ok(e instanceof Anthropic.APIError, String(e));
  assert.ok(e.status >= 500, `status ${e.status}`);
});

test('malformed JSON from the client: 400 with an openai error object naming the problem', async () => {
  const r = await post(gw, '/v1/chat/completions', '{"model": "gpt-4o", "messages": [');
  assert.equal(r.status, 400);
  assert.equal(r.headers.get('content-type'), 'application/json');
  assert.equal(r.body?.error?.type, 'invalid_request_error');
  assert.match(r.body.error.message, /json/i);
  assert.match(r.body.error.message, /line \d+, column \d+/);
  assert.ok('param' in r.body.error && 'code' in r.body.error, 'OpenAI error objects carry param and code');
  assert.equal((await fake.requests()).length, 0);
});

test('malformed JSON to /v1/messages: 400 in anthropic format', async () => {
  const r = await post(gw, '/v1/messages', '{"model": ');
  assert.equal(r.status, 400);
  assert.equal(r.body?.type, 'error');
  assert.equal(r.body?.error?.type, 'invalid_request_error');
});

test('a JSON body that is not an object: 400', async () => {
  const r = await post(gw, '/v1/chat/completions', '[1,2,3]');
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /object/);
});

test('oversized body announced with Expect: 100-continue: 413 as soon as the headers are in', async () => {
  // A client that asks permission before uploading gets the refusal without sending a byte.
  const sock = connect(gw.port, '127.0.0.1');
  let resp = '';
  sock.setEncoding('latin1');
  sock.on('data', (d) => (resp += d));
  sock.on('error', () => {});
  const closed = new Promise((r) => sock.on('close', r));
  sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n`);
  await Promise.race([closed, new Promise((r) => setTimeout(r, 3000))]);
  sock.destroy();
  assert.match(resp, /^HTTP\/1\.1 413 /);
  const body = JSON.parse(resp.slice(resp.indexOf('\r\n\r\n') + 4));
  assert.equal(body.error.type, 'invalid_request_error');
  assert.match(body.error.message, /limit/);
});

test('oversized body with Content-Length sent by fetch (as the SDKs do): the client receives the 413', async () => {
  // fetch writes the whole body before it reads the answer: a server that answers early and closes
  // at once leaves it with EPIPE / "other side closed" instead of the 413.
  const big = Buffer.alloc(MAX_BODY + 1024, 0x20);
  const r = await post(gw, '/v1/chat/completions', big);
  assert.equal(r.status, 413);
  assert.equal(r.body?.error?.type, 'invalid_request_error');
  assert.match(r.body.error.message, /limit/);
});

test('oversized chunked body (no Content-Length): 413', async () => {
  const chunk = Buffer.alloc(1 << 20, 0x20);
  let sent = 0;
  const body = new ReadableStream({
    pull(c) {
      if (sent > MAX_BODY + (2 << 20)) return c.close();
      sent += chunk.length;
      c.enqueue(chunk);
    },
  });
  const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, duplex: 'half' });
  assert.equal(r.status, 413);
  assert.match((await r.json()).error.message, /limit/);
});

test('an oversized data-url image inside a small-enough body is refused with 413', async () => {
  // max_image_bytes is 20 MiB by default; the body limit is 16 MiB: use a config where the image
  // limit is the smaller one.
  const g2 = await startGateway(fake, { config: { max_image_bytes: 1024 * 1024 } });
  try {
    const url = `data:image/jpeg;base64,${Buffer.alloc(2 * 1024 * 1024, 0xff).toString('base64')}`;
    const r = await post(g2, '/v1/chat/completions', { model: 'gpt-4o', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }] }] });
    assert.equal(r.status, 413, r.text);
    assert.equal(r.body.error.param, 'messages[0].content[0]');
  } finally {
    await g2.stop();
  }
});

test('unknown path: 404; wrong method: 405', async () => {
  assert.equal((await fetch(`${gw.url}/v1/nope`)).status, 404);
  assert.equal((await fetch(`${gw.url}/v1/chat/completions`)).status, 405);
});
