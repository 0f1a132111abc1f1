// Image URLs are fetched from inside the deployment, so the gateway must refuse every address a client
// could use to reach what it should not: loopback, private networks, link-local (cloud metadata), and
// the same behind a redirect, numeric tricks or IPv6 forms; and stop downloads that are too big or too
// slow. One gateway runs without the tests-only loopback allowance (everything at 127.0.0.1 is refused
// there), one with it (so the fake's /redirect, /big and /slow are reachable).

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startFake, startGateway, post } from './harness.mjs';

let fake, strict, open;
const FETCH_TIMEOUT_MS = 1500; // harness.gatewayConfig fetch_timeout_ms
const FETCH_MAX = 8 * 1024 * 1024; // harness.gatewayConfig fetch_max_bytes

before(async () => {
  fake = await startFake();
  [strict, open] = await Promise.all([startGateway(fake, { loopback: false }), startGateway(fake, { loopback: true })]);
});
after(async () => {
  await Promise.all([strict?.stop(), open?.stop()]);
  await fake?.stop();
});
beforeEach(() => fake.reset());

const withImage = (url) => ({
  model: 'gpt-4o',
  messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this' }, { type: 'image_url', image_url: { url } }] }],
});

async function refused(gw, url, re, status = 400) {
  const r = await post(gw, '/v1/chat/completions', withImage(url));
  assert.equal(r.status, status, `${url}: ${r.status} ${r.text.slice(0, 300)}`);
  assert.equal(r.body?.error?.type, 'invalid_request_error');
  assert.equal(r.body.error.param, 'messages[0].content[1]');
  if (re) assert.match(r.body.error.message, re, `${url}: ${r.body.error.message}`);
  const upstream = await fake.requests('/v1/');
  assert.equal(upstream.length, 0, 'a refused image must not reach the provider');
  return r;
}

test('loopback without the allowance: refused, naming the address', async () => {
  const url = `http://127.0.0.1:${fake.port}/img/photos/Apple_iPhone_4S.jpg`;
  await refused(strict, url, /127\.0\.0\.1.*loopback/);
  assert.equal((await fake.requests('/img/')).length, 0, 'the gateway connected to a refused address');
});

test('the openai sdk sees the refusal as a BadRequestError', async () => {
  const client = new OpenAI({ baseURL: `${strict.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const e = await client.chat.completions.create(withImage('http://169.254.169.254/latest/meta-data/iam/')).catch((e) => e);
  assert.ok(e instanceof OpenAI.BadRequestError, `${e?.constructor?.name}: ${e}`);
  assert.match(e.message, /169\.254\.169\.254/);
});

// Each refused address class (fetch.h lists them), with the words the message must contain. Nothing
// listens at most of these; a gateway that tried to connect would show up as a timeout instead.
const CLASSES = [
  ['http://169.254.169.254/latest/meta-data/', /169\.254\.169\.254.*link-local/],
  ['http://10.0.0.1/a.jpg', /10\.0\.0\.1.*private/],
  ['http://172.16.5.4/a.jpg', /172\.16\.5\.4.*private/],
  ['http://192.168.1.1/a.jpg', /192\.168\.1\.1.*private/],
  ['http://100.64.0.1/a.jpg', /100\.64\.0\.1.*shared/],
  ['http://0.0.0.0/a.jpg', /0\.0\.0\.0/],
  ['http://224.0.0.1/a.jpg', /224\.0\.0\.1.*multicast/],
  ['http://255.255.255.255/a.jpg', /broadcast/],
  ['http://240.0.0.1/a.jpg', /reserved/],
  ['http://198.18.0.1/a.jpg', /benchmarking/],
  ['http://192.0.2.1/a.jpg', /documentation/],
  ['http://127.1.2.3/a.jpg', /127\.1\.2\.3.*loopback/],
  ['http://[::1]/a.jpg', /::1.*loopback/],
  ['http://[::ffff:127.0.0.1]/a.jpg', /127\.0\.0\.1|::ffff/],
  ['http://[::ffff:169.254.169.254]/a.jpg', /169\.254\.169\.254|a9fe/],
  ['http://[fe80::1]/a.jpg', /fe80::1/],
  ['http://[fc00::1]/a.jpg', /fc00::1/],
  ['http://[::]/a.jpg', /::/],
  ['http://0x7f000001/a.jpg', /127\.0\.0\.1|0x7f000001/],
  ['http://2130706433/a.jpg', /127\.0\.0\.1|2130706433/],
  ['http://0177.0.0.1/a.jpg', /127\.0\.0\.1|0177/],
  ['http://127.1/a.jpg', /127\.0\.0\.1|127\.1/],
  ['http://localhost/a.jpg', /loopback/],
];

test('every refused address class', async (t) => {
  for (const [url, re] of CLASSES) await t.test(url, () => refused(strict, url, re));
});

test('the same classes are refused even with the loopback allowance (except loopback)', async (t) => {
  for (const [url, re] of CLASSES.filter(([u]) => /169\.254|10\.0\.0\.1|fe80|fc00/.test(u)))
    await t.test(url, () => refused(open, url, re));
});

test('schemes other than http(s) and credentials in the url: refused', async (t) => {
  for (const [url, re] of [
    ['file:///etc/passwd', /file|data: URL or http/],
    ['ftp://example.com/a.jpg', /ftp|data: URL or http/],
    ['gopher://127.0.0.1:25/', /gopher|data: URL or http/],
    ['http://user:pw@example.com/a.jpg', /credentials/],
  ])
    await t.test(url, () => refused(open, url, re));
});

test('a redirect to the metadata address: refused on the second hop', async () => {
  const to = 'http://169.254.169.254/latest/meta-data/';
  await refused(open, `${fake.url}/redirect?to=${encodeURIComponent(to)}`, /169\.254\.169\.254/);
  assert.equal((await fake.requests('/redirect')).length, 1, 'the first hop should have been fetched');
});

test('a redirector on loopback, without the allowance: refused at the first hop', async () => {
  await refused(strict, `${fake.url}/redirect?to=${encodeURIComponent('http://10.1.1.1/')}`, /127\.0\.0\.1/);
  assert.equal((await fake.requests('/redirect')).length, 0);
});

test('a redirect to a private address through an IPv4-mapped IPv6 literal: refused', async () => {
  await refused(open, `${fake.url}/redirect?to=${encodeURIComponent('http://[::ffff:10.0.0.1]/x.jpg')}`, /10\.0\.0\.1|::ffff/);
});

test('a redirect to a file: url: refused', async () => {
  await refused(open, `${fake.url}/redirect?to=${encodeURIComponent('file:///etc/passwd')}`, /file|scheme/);
});

test('a redirect loop: refused after a bounded number of hops', async () => {
  let url = `${fake.url}/img/photos/Apple_iPhone_4S.jpg`;
  for (let i = 0; i < 8; i++) url = `${fake.url}/redirect?to=${encodeURIComponent(url)}`;
  await refused(open, url, /redirect/);
  const hops = (await fake.requests('/redirect')).length;
  assert.ok(hops <= 6, `${hops} hops followed`);
});

test('a legitimate redirect to an image is followed', async () => {
  const url = `${fake.url}/redirect?to=${encodeURIComponent(`${fake.url}/img/gen.png?w=300&h=200`)}`;
  const r = await post(open, '/v1/chat/completions', withImage(url));
  assert.equal(r.status, 200, r.text);
  assert.equal((await fake.requests('/v1/chat/completions')).length, 1);
});

test('an endless download: refused at the size limit, and the gateway stops reading', async () => {
  const t0 = Date.now();
  const r = await refused(open, `${fake.url}/big`, /larger than|limit|too large/i, 413);
  assert.ok(Date.now() - t0 < FETCH_TIMEOUT_MS + 1000, 'the size limit should stop it, not the timeout');
  assert.ok(r.body.error.message.includes(String(FETCH_MAX)), 'the message should name the limit');
  await new Promise((res) => setTimeout(res, 100));
  const [big] = await fake.requests('/big');
  assert.equal(big.aborted, true, 'the gateway should hang up');
  assert.ok(big.sent_bytes < FETCH_MAX + (8 << 20), `the fake managed to send ${big.sent_bytes} bytes`);
});

test('a download that announces its size: refused without reading it', async () => {
  await refused(open, `${fake.url}/big?length=${1 << 30}`, /larger than|limit|too large/i, 413);
  await new Promise((res) => setTimeout(res, 100));
  const [big] = await fake.requests('/big');
  assert.ok(big.sent_bytes < FETCH_MAX, `read ${big.sent_bytes} bytes of an announced 1 GiB`);
});

test('a slow server: refused after the fetch timeout', async () => {
  const t0 = Date.now();
  await refused(open, `${fake.url}/slow?interval_ms=50`, /timed out/);
  const ms = Date.now() - t0;
  assert.ok(ms >= FETCH_TIMEOUT_MS - 100 && ms < FETCH_TIMEOUT_MS + 2500, `took ${ms} ms for a ${FETCH_TIMEOUT_MS} ms timeout`);
  await new Promise((res) => setTimeout(res, 100));
  const [slow] = await fake.requests('/slow');
  assert.equal(slow.aborted, true);
});

test('a server that never answers: refused after the fetch timeout', async () => {
  const t0 = Date.now();
  await refused(open, `${fake.url}/slow?hold=1`, /timed out/);
  assert.ok(Date.now() - t0 < FETCH_TIMEOUT_MS + 2500);
});

test('a url that is not an image: refused before any model call', async () => {
  await refused(open, `${fake.url}/healthz`, null);
});

test('anthropic url image source at the metadata address: refused in anthropic format', async () => {
  const r = await post(strict, '/v1/messages', {
    model: 'claude-sonnet-4-5',
    max_tokens: 16,
    messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: 'http://169.254.169.254/x.jpg' } }] }],
  });
  assert.equal(r.status, 400, r.text);
  assert.equal(r.body.type, 'error');
  assert.match(r.body.error.message, /169\.254\.169\.254/);
});

test('/v1/analyze image_url at a private address: refused', async () => {
  const r = await post(strict, '/v1/analyze', { image_url: 'http://10.0.0.1/invoice.jpg', model: 'local' });
  assert.equal(r.status, 400, r.text);
  assert.match(r.body.error.message, /10\.0\.0\.1/);
});
