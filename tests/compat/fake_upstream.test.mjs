// The fake upstream on its own: the official SDKs accept its answers as the real services' (so a
// failure in the gateway suites is the gateway's), and its recorder and faults do what they say.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startFake, corpusFile, dataUrl } from './harness.mjs';
import { cannedAnswer, parseFaultHeader, generatePng, imageSize, allNullAnswer } from '../fakes/fake_upstream.mjs';

let fake, oai, ant;

before(async () => {
  fake = await startFake();
  oai = new OpenAI({ baseURL: `${fake.url}/v1`, apiKey: 'sk-direct-secret', maxRetries: 0 });
  ant = new Anthropic({ baseURL: fake.url, apiKey: 'sk-ant-direct-secret', maxRetries: 0 });
});
after(() => fake?.stop());
beforeEach(() => fake.reset());

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const IMG = { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } };

test('fake: openai plain answer parses with the openai sdk and is recorded without the key', async () => {
  const r = await oai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }, IMG] }] });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.content, cannedAnswer('openai', 'gpt-4o', 1));
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.prompt_tokens > 85 && r.usage.completion_tokens > 0);
  const [rec] = await fake.requests('/v1/chat/completions');
  assert.equal(rec.method, 'POST');
  assert.equal(rec.auth_present, true);
  assert.deepEqual(rec.auth_headers, ['authorization']);
  assert.equal(rec.headers.authorization, '[redacted]');
  assert.ok(!JSON.stringify(rec).includes('sk-direct-secret'));
  assert.equal(rec.body.model, 'gpt-4o');
});

test('fake: openai stream with usage parses with the openai sdk', async () => {
  const s = await oai.chat.completions.create({ model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hi' }] });
  let text = '', usage = null, finish = null, n = 0;
  for await (const c of s) {
    n++;
    text += c.choices[0]?.delta?.content || '';
    finish = c.choices[0]?.finish_reason || finish;
    usage = c.usage || usage;
  }
  assert.ok(n > 3, `only ${n} chunks`);
  assert.equal(text, cannedAnswer('openai', 'gpt-4o-mini', 0));
  assert.equal(finish, 'stop');
  assert.ok(usage.total_tokens > 0);
});

test('fake: /chat/completions without /v1 and json mode', async () => {
  const r = await fetch(`${fake.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', response_format: { type: 'json_object' }, messages: [{ role: 'user', content: 'x' }] }),
  }).then((r) => r.json());
  assert.deepEqual(JSON.parse(r.choices[0].message.content).fake, true);
});

test('fake: anthropic plain and streamed answers parse with the anthropic sdk', async () => {
  const content = [
    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } },
    { type: 'text', text: 'what is this' },
  ];
  const m = await ant.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 100, messages: [{ role: 'user', content }] });
  assert.equal(m.type, 'message');
  assert.equal(m.content[0].text, cannedAnswer('anthropic', 'claude-sonnet-4-5', 1));
  assert.equal(m.stop_reason, 'end_turn');
  const stream = ant.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 100, messages: [{ role: 'user', content }] });
  let text = '';
  stream.on('text', (t) => (text += t));
  const final = await stream.finalMessage();
  assert.equal(text, cannedAnswer('anthropic', 'claude-haiku-4-5', 1));
  assert.equal(final.content[0].text, text);
  assert.ok(final.usage.output_tokens > 1);
  const recs = await fake.requests('/v1/messages');
  assert.equal(recs.length, 2);
  // (this sdk sends the key as "Authorization: Bearer"; older ones use x-api-key: either is redacted)
  assert.ok(recs.every((r) => r.auth_present && r.headers[r.auth_headers[0]] === '[redacted]' && r.headers['anthropic-version']));
  assert.ok(!JSON.stringify(recs).includes('sk-ant-direct-secret'));
});

test('fake: anthropic without max_tokens is a 400 like the real one', async () => {
  const r = await fetch(`${fake.url}/v1/messages`, { method: 'POST', body: JSON.stringify({ model: 'claude-x', messages: [] }) });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.type, 'invalid_request_error');
});

test('fake: gemini generateContent, sse stream and json-array stream', async () => {
  const body = { contents: [{ role: 'user', parts: [{ text: 'hi' }, { inline_data: { mime_type: 'image/jpeg', data: 'AAAA' } }] }] };
  const post = (p) => fetch(fake.url + p, { method: 'POST', headers: { 'x-goog-api-key': 'AIza-secret' }, body: JSON.stringify(body) });
  const plain = await (await post('/v1beta/models/gemini-2.5-flash:generateContent')).json();
  assert.equal(plain.candidates[0].content.parts[0].text, cannedAnswer('gemini', 'gemini-2.5-flash', 1));
  assert.equal(plain.candidates[0].finishReason, 'STOP');
  assert.ok(plain.usageMetadata.totalTokenCount > 0);
  const sse = await (await post('/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse')).text();
  const events = sse.split('\r\n\r\n').filter(Boolean).map((e) => JSON.parse(e.replace(/^data: /, '')));
  assert.equal(events.map((e) => e.candidates[0].content.parts[0].text).join(''), cannedAnswer('gemini', 'gemini-2.5-flash', 1));
  assert.equal(events.at(-1).candidates[0].finishReason, 'STOP');
  const arr = JSON.parse(await (await post('/v1beta/models/gemini-2.5-pro:streamGenerateContent')).text());
  assert.equal(arr.map((e) => e.candidates[0].content.parts[0].text).join(''), cannedAnswer('gemini', 'gemini-2.5-pro', 1));
  const recs = await fake.requests('/v1beta/');
  assert.equal(recs.length, 3);
  assert.ok(recs.every((r) => r.auth_present && !JSON.stringify(r).includes('AIza-secret')));
});

test('fake: faults by control endpoint (status + retry-after, count, path) map to sdk errors', async () => {
  await fake.fault({ path: '/v1/chat/completions', status: 429, retry_after: 7, count: 2 });
  for (let i = 0; i < 2; i++) {
    const e = await oai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }).catch((e) => e);
    assert.ok(e instanceof OpenAI.RateLimitError, String(e));
    assert.equal(e.headers.get('retry-after'), '7');
  }
  const ok = await oai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(ok.object, 'chat.completion');
  await fake.fault({ path: '/v1/messages', status: 529 });
  const e = await ant.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }).catch((e) => e);
  assert.ok(e instanceof Anthropic.APIError && e.status === 529, String(e));
  assert.equal(e.error.error.type, 'overloaded_error');
});

test('fake: faults by header; malformed json, drop, truncated and errored streams', async () => {
  assert.deepEqual(parseFaultHeader('status=500,retry_after=2,drop'), { status: 500, retry_after: 2, drop: true });
  const call = (fault, extra = {}) =>
    fetch(`${fake.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'x-fake-fault': fault },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], ...extra }),
    });
  const r500 = await call('{"status":500}');
  assert.equal(r500.status, 500);
  assert.equal((await r500.json()).error.type, 'server_error');
  const bad = await call('malformed_json=true');
  assert.equal(bad.status, 200);
  await assert.rejects(bad.json(), SyntaxError);
  await assert.rejects(call('drop=true'), /fetch failed/);
  const t0 = Date.now();
  const slow = await call('delay_ms=300');
  assert.equal(slow.status, 200);
  assert.ok(Date.now() - t0 >= 290);
  const cut = await call('truncate_stream=true', { stream: true });
  await assert.rejects(cut.text(), /terminated/);
  const cutBody = await call('truncate_stream=true');
  await assert.rejects(cutBody.text(), /terminated/);
  const clean = await (await call('truncate_stream=clean', { stream: true })).text();
  assert.ok(!clean.includes('[DONE]'));
  const errored = await (await call('stream_error=true', { stream: true })).text();
  assert.match(errored, /"error":\{"message":"fake openai: stream interrupted"/);
  // The sdk sees a truncated stream as an error, not as a short answer.
  await fake.fault({ path: '/v1/chat/completions', truncate_stream: true });
  const s = await oai.chat.completions.create({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'x' }] });
  await assert.rejects(async () => {
    for await (const _ of s);
  });
});

test('fake: images from the corpus, generated png, redirect, slow and big', async () => {
  const photo = await fetch(`${fake.url}/img/photos/Apple_iPhone_4S.jpg`);
  assert.equal(photo.headers.get('content-type'), 'image/jpeg');
  assert.deepEqual(Buffer.from(await photo.arrayBuffer()), corpusFile('photos/Apple_iPhone_4S.jpg'));
  assert.equal((await fetch(`${fake.url}/img/../MANIFEST.md`)).status, 404);
  assert.equal((await fetch(`${fake.url}/img/%2e%2e/MANIFEST.md`)).status, 404);
  const png = Buffer.from(await (await fetch(`${fake.url}/img/gen.png?w=33&h=17`)).arrayBuffer());
  assert.equal(png.readUInt32BE(16), 33);
  assert.equal(png.readUInt32BE(20), 17);
  const red = await fetch(`${fake.url}/redirect?to=${encodeURIComponent('http://169.254.169.254/x')}`, { redirect: 'manual' });
  assert.equal(red.status, 302);
  assert.equal(red.headers.get('location'), 'http://169.254.169.254/x');
  // /slow trickles: after 350 ms only a few bytes have come.
  const ac = new AbortController();
  const slow = await fetch(`${fake.url}/slow?interval_ms=100`, { signal: ac.signal });
  const reader = slow.body.getReader();
  let got = 0;
  const t0 = Date.now();
  while (Date.now() - t0 < 350) got += (await reader.read()).value?.length || 0;
  assert.ok(got >= 2 && got <= 6, `slow sent ${got} bytes in 350 ms`);
  ac.abort();
  // /big never ends: read 20 MB and walk away.
  const big = await fetch(`${fake.url}/big`);
  assert.equal(big.headers.get('content-length'), null);
  const br = big.body.getReader();
  let n = 0;
  while (n < 20 << 20) n += (await br.read()).value.length;
  await br.cancel();
  const sized = await fetch(`${fake.url}/big?length=100000`);
  assert.equal((await sized.arrayBuffer()).byteLength, 100000);
  await new Promise((r) => setTimeout(r, 50));
  const recs = await fake.requests();
  assert.deepEqual(recs.map((r) => r.pathname), ['/img/photos/Apple_iPhone_4S.jpg', '/img/../MANIFEST.md', '/img/%2e%2e/MANIFEST.md', '/img/gen.png', '/redirect', '/slow', '/big', '/big'].map((p) => new URL(p, 'http://x').pathname));
  assert.equal(recs.find((r) => r.pathname === '/slow').aborted, true);
  assert.ok(recs.filter((r) => r.pathname === '/big')[0].sent_bytes >= 20 << 20);
});

test('fake: a photo as a data url round-trips unchanged through the recorder', async () => {
  const url = dataUrl(corpusFile('photos/Apple_iPhone_4S.jpg'));
  await oai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }] }] });
  const [rec] = await fake.requests('/v1/chat/completions');
  assert.equal(rec.body.messages[0].content[0].image_url.url, url);
});

// ---- the fault fields chaos and routing tests lean on ---------------------------------------------

const chat = (model, extra = {}, headers = {}) =>
  fetch(`${fake.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }], ...extra }),
  });

test('fake: a fault with model applies only to requests for that model (body or gemini path)', async () => {
  await fake.fault([
    { model: 'gpt-4o-mini', status: 500, count: -1 },
    { model: 'gemini-2.5-pro', status: 503, count: -1 },
  ]);
  assert.equal((await chat('gpt-4o')).status, 200);
  assert.equal((await chat('gpt-4o-mini')).status, 500);
  assert.equal((await chat('gpt-4o-mini-2')).status, 200, 'exact match, not a prefix');
  const gem = (m) => fetch(`${fake.url}/v1beta/models/${m}:generateContent`, { method: 'POST', body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }] }) });
  assert.equal((await gem('gemini-2.5-flash')).status, 200);
  assert.equal((await gem('gemini-2.5-pro')).status, 503);
  const recs = await fake.requests();
  assert.deepEqual(recs.map((r) => [r.model, r.status, r.fault?.status ?? null]), [
    ['gpt-4o', 200, null], ['gpt-4o-mini', 500, 500], ['gpt-4o-mini-2', 200, null],
    ['gemini-2.5-flash', 200, null], ['gemini-2.5-pro', 503, 503],
  ]);
  const byModel = await (await fetch(`${fake.url}/__requests?model=gemini-2.5-pro`)).json();
  assert.deepEqual(byModel.map((r) => r.seq), [recs[4].seq]);
});

test('fake: answer imposes the exact assistant text in all three formats, plain and streamed', async () => {
  const TEXT = 'invoice';
  await fake.fault({ answer: TEXT, count: 6 });
  const r = await oai.chat.completions.create({ model: 'classifier', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.choices[0].message.content, TEXT);
  const s = await oai.chat.completions.create({ model: 'classifier', stream: true, messages: [{ role: 'user', content: 'x' }] });
  let streamed = '';
  for await (const c of s) streamed += c.choices[0]?.delta?.content || '';
  assert.equal(streamed, TEXT);
  const m = await ant.messages.create({ model: 'claude-x', max_tokens: 9, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(m.content[0].text, TEXT);
  const st = ant.messages.stream({ model: 'claude-x', max_tokens: 9, messages: [{ role: 'user', content: 'x' }] });
  assert.equal((await st.finalMessage()).content[0].text, TEXT);
  const body = JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }] });
  const g = await (await fetch(`${fake.url}/v1beta/models/g:generateContent`, { method: 'POST', body })).json();
  assert.equal(g.candidates[0].content.parts[0].text, TEXT);
  const sse = await (await fetch(`${fake.url}/v1beta/models/g:streamGenerateContent?alt=sse`, { method: 'POST', body })).text();
  const parts = sse.split('\r\n\r\n').filter(Boolean).map((e) => JSON.parse(e.replace(/^data: /, '')).candidates[0].content.parts[0].text);
  assert.equal(parts.join(''), TEXT);
  // Longer text is split into several stream pieces and still arrives whole.
  const LONG = '{"class": "photo", "why": "a landscape with no text in it at all"}';
  await fake.fault({ answer: LONG });
  const s2 = await oai.chat.completions.create({ model: 'x', stream: true, messages: [{ role: 'user', content: 'x' }] });
  let n = 0, text = '';
  for await (const c of s2) {
    n++;
    text += c.choices[0]?.delta?.content || '';
  }
  assert.equal(text, LONG);
  assert.ok(n > 4);
  assert.equal((await chat('x')).status, 200);
  const last = (await fake.requests()).at(-1);
  assert.equal(last.fault, null, 'the counted faults are used up');
});

test('fake: all_null answers a JSON object whose every field is null (default and named fields)', async () => {
  await fake.fault([{ all_null: true }, { all_null: ['a', 'b'] }]);
  const r = await (await chat('m', { response_format: { type: 'json_object' } })).json();
  assert.deepEqual(JSON.parse(r.choices[0].message.content), { vendor: null, invoice_number: null, date: null, total: null });
  const r2 = await (await chat('m')).json();
  assert.deepEqual(JSON.parse(r2.choices[0].message.content), { a: null, b: null });
  assert.equal(allNullAnswer(), '{"vendor":null,"invoice_number":null,"date":null,"total":null}');
  const m = await ant.messages.create({ model: 'claude-x', max_tokens: 9, messages: [{ role: 'user', content: 'x' }] }, { headers: { 'x-fake-fault': 'all_null=true' } });
  assert.deepEqual(JSON.parse(m.content[0].text), { vendor: null, invoice_number: null, date: null, total: null });
});

test('fake: 429 with Retry-After, with retry-after-ms, and with neither', async () => {
  await fake.fault([{ status: 429, retry_after: 1 }, { status: 429, retry_after_ms: 250 }, { status: 429 }]);
  const a = await chat('m');
  assert.equal(a.status, 429);
  assert.equal(a.headers.get('retry-after'), '1');
  assert.equal(a.headers.get('retry-after-ms'), null);
  const b = await chat('m');
  assert.equal(b.status, 429);
  assert.equal(b.headers.get('retry-after-ms'), '250');
  assert.equal(b.headers.get('retry-after'), null);
  const c = await chat('m');
  assert.equal(c.status, 429);
  assert.equal(c.headers.get('retry-after'), null);
  assert.equal(c.headers.get('retry-after-ms'), null);
  assert.equal((await c.json()).error.code, 'rate_limit_exceeded');
  assert.equal((await chat('m')).status, 200);
});

test('fake: a delay longer than the caller waits is a timeout: nothing is written, the fake carries on', async () => {
  await fake.fault({ delay_ms: 400, status: 500 });
  const t0 = Date.now();
  await assert.rejects(
    fetch(`${fake.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'slow', messages: [] }), signal: AbortSignal.timeout(100) }),
    /abort|timeout/i,
  );
  assert.ok(Date.now() - t0 < 390, `gave up after ${Date.now() - t0} ms`);
  await sleep(450);
  const [rec] = await fake.requests();
  assert.equal(rec.model, 'slow');
  assert.equal(rec.fault.delay_ms, 400);
  assert.equal(rec.aborted, true);
  assert.equal(rec.status, 0, 'no status line went out');
  assert.ok(rec.done_time - rec.time < 350, 'the exchange ended when the caller left');
  assert.equal((await chat('after')).status, 200, 'still serving');
});

test('fake: a dropped connection is recorded as status 0 with its fault', async () => {
  await fake.fault({ drop: true, model: 'd' });
  await assert.rejects(chat('d'), /fetch failed/);
  await sleep(20);
  const [rec] = await fake.requests();
  assert.equal(rec.status, 0);
  assert.equal(rec.fault.drop, true);
  assert.equal(rec.fault.model, 'd');
  assert.equal(rec.fault.count, undefined, 'bookkeeping fields are left out');
});

test('fake: the log records model, times, images with their sizes, and how many were in flight', async () => {
  const png = generatePng(40, 30);
  const jpg = corpusFile('photos/Apple_iPhone_4S.jpg');
  assert.deepEqual(imageSize(png), { width: 40, height: 30 });
  assert.deepEqual(imageSize(jpg), { width: 3264, height: 2448 });
  await fake.fault({ model: 'slow-one', delay_ms: 400 });
  const t0 = Date.now();
  await Promise.all([
    oai.chat.completions.create({ model: 'slow-one', messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'image_url', image_url: { url: dataUrl(png, 'image/png') } }, { type: 'image_url', image_url: { url: 'https://example.com/x.jpg' } }] }] }),
    // The second call starts once the fake has the slow one in hand.
    (async () => {
      while (!(await fake.requests()).some((r) => r.model === 'slow-one')) await sleep(10);
    })().then(() =>
      ant.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: jpg.toString('base64') } }] }] })),
  ]);
  await fetch(`${fake.url}/v1beta/models/gemini-2.5-flash:generateContent`, {
    method: 'POST',
    body: JSON.stringify({ contents: [{ parts: [{ inline_data: { mime_type: 'image/png', data: png.toString('base64') } }] }] }),
  });
  await sleep(20);
  const recs = await fake.requests();
  const [o, a, g] = ['slow-one', 'claude-x', 'gemini-2.5-flash'].map((m) => recs.find((r) => r.model === m));
  assert.equal(o.model, 'slow-one');
  assert.equal(o.n_images, 2);
  assert.deepEqual(o.images, [
    { source: 'data', media_type: 'image/png', bytes: png.length, width: 40, height: 30 },
    { source: 'url', url: 'https://example.com/x.jpg' },
  ]);
  assert.ok(o.time >= t0 && o.done_time - o.time >= 390, `${o.time} ${o.done_time}`);
  assert.equal(o.status, 200);
  assert.equal(o.in_flight, 1);
  assert.equal(a.model, 'claude-x');
  assert.ok(a.time < o.done_time, 'the anthropic call came while the slow one ran (loaded machine?)');
  assert.equal(a.in_flight, 2, 'the slow openai call was still running');
  assert.deepEqual(a.images, [{ source: 'data', media_type: 'image/jpeg', bytes: jpg.length, width: 3264, height: 2448 }]);
  assert.ok(a.done_time < o.done_time);
  assert.equal(g.model, 'gemini-2.5-flash');
  assert.deepEqual(g.images, [{ source: 'data', media_type: 'image/png', bytes: png.length, width: 40, height: 30 }]);
  assert.equal(g.in_flight, 1);
});
