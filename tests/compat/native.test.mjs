// aperture's own surface: /v1/analyze (JSON and multipart; the offline local provider on a corpus
// invoice, and a task routed to the fake), /v1/preprocess, /metrics, /healthz, /readyz.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, startFake, startGateway, corpusFile, post, jpegInfo } from './harness.mjs';
import { cannedAnswer } from '../fakes/fake_upstream.mjs';

const INVOICE = 'documents/invoices/AmazonWebServices_p1_200dpi_gray.jpg';
const PHOTO = 'photos/Apple_iPhone_4S.jpg';
// The local provider is being written alongside this suite; until its source exists the case is
// reported as todo rather than failing the run.
const LOCAL_TODO = existsSync(join(ROOT, 'src/provider/local.c')) ? false : 'local provider (src/provider/local.c) not written yet';

let fake, gw;

before(async () => {
  fake = await startFake();
  gw = await startGateway(fake);
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});
beforeEach(() => fake.reset());

test('/v1/analyze: a corpus invoice against model "local" returns an answer object', { todo: LOCAL_TODO, timeout: 60000 }, async (t) => {
  const r = await post(gw, '/v1/analyze', { image: corpusFile(INVOICE).toString('base64'), task: 'invoice_extraction', model: 'local' });
  assert.equal(r.status, 200, r.text.slice(0, 500));
  assert.equal(r.body.model, 'local');
  assert.equal(r.body.provider, 'local');
  assert.equal(r.body.task, 'invoice_extraction');
  assert.equal(typeof r.body.answer, 'object', `answer: ${JSON.stringify(r.body.answer)}`);
  assert.ok(r.body.answer !== null && !Array.isArray(r.body.answer));
  for (const k of ['vendor', 'invoice_number', 'date', 'total', 'currency']) assert.ok(k in r.body.answer, `answer has no "${k}": ${JSON.stringify(r.body.answer)}`);
  t.diagnostic(`local answer: ${JSON.stringify(r.body.answer)} (expected invoice_number 42183017, date 2014-08-03, total 4.11, USD)`);
  assert.equal(r.body.images.length, 1);
  assert.equal((await fake.requests()).length, 0, 'the local provider must not call out');
});

test('/v1/analyze: multipart upload to a provider model, JSON answer parsed, image facts reported', async () => {
  const form = new FormData();
  form.append('image', new Blob([corpusFile(PHOTO)], { type: 'image/jpeg' }), 'photo.jpg');
  form.append('task', 'invoice_extraction');
  form.append('model', 'gpt-4o');
  const res = await fetch(`${gw.url}/v1/analyze`, { method: 'POST', body: form });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.deepEqual(body.answer, JSON.parse(cannedAnswer('openai', 'gpt-4o', 1, true)));
  assert.equal(body.provider, 'openai');
  const [img] = body.images;
  assert.equal(img.original_width, 2448);
  assert.equal(img.original_height, 3264);
  assert.equal(img.orientation, 6);
  assert.ok(img.processed_height > img.processed_width);
  assert.ok(img.processed_bytes < img.original_bytes);
  assert.ok(body.image_tokens.after > 0 && body.image_tokens.before >= body.image_tokens.after);
  const [rec] = await fake.requests('/v1/chat/completions');
  assert.equal(rec.body.response_format?.type, 'json_object', 'an extraction task should ask for JSON');
});

test('/v1/analyze: no image is a 400 naming the field', async () => {
  const r = await post(gw, '/v1/analyze', { task: 'describe', model: 'gpt-4o' });
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /image/);
});

test('/v1/preprocess: raw bytes in, an upright stripped JPEG out', async () => {
  const res = await fetch(`${gw.url}/v1/preprocess?target=openai-high`, { method: 'POST', headers: { 'content-type': 'image/jpeg' }, body: corpusFile(PHOTO) });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'image/jpeg');
  const buf = Buffer.from(await res.arrayBuffer());
  const info = jpegInfo(buf);
  assert.equal(buf.indexOf('Exif'), -1);
  assert.equal(`${info.width}x${info.height}`, `${res.headers.get('x-aperture-width')}x${res.headers.get('x-aperture-height')}`);
  assert.ok(info.height > info.width && info.width <= 768);
});

test('/healthz and /readyz', async () => {
  assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
  const ready = await fetch(`${gw.url}/readyz`);
  assert.equal(ready.status, 200);
  assert.equal((await ready.json()).status, 'ready');
});

test('/metrics: prometheus text with aperture_requests_total', async () => {
  await post(gw, '/v1/chat/completions', { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
  const res = await fetch(`${gw.url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/plain/);
  const text = await res.text();
  assert.match(text, /^# TYPE aperture_requests_total counter$/m);
  assert.match(text, /^aperture_requests_total\{[^}]*endpoint="\/v1\/chat\/completions"[^}]*\} \d+/m);
  assert.match(text, /aperture_request_duration_seconds/);
});
