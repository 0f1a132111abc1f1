// The official openai SDK pointed at aperture: plain and streamed chat completions with images as
// data URLs and as http URLs; the preprocessed image is checked where it lands, at the fake
// upstream; OpenAI-format requests routed to Anthropic and Gemini models come back in OpenAI format.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
  startFake, startGateway, corpusFile, dataUrl, jpegInfo, parseDataUrl, openaiImages,
  anthropicImages, geminiImages, KEYS,
} from './harness.mjs';
import { cannedAnswer } from '../fakes/fake_upstream.mjs';

const PHOTO = 'photos/Apple_iPhone_4S.jpg'; // EXIF orientation 6: stored 3264x2448, displayed 2448x3264
let fake, gw, client;

before(async () => {
  fake = await startFake();
  gw = await startGateway(fake);
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key-unused', maxRetries: 0 });
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});
beforeEach(() => fake.reset());

const photoUrl = () => dataUrl(corpusFile(PHOTO));
const userMsg = (url, text = 'What is in this photo?', detail) => [
  { role: 'user', content: [{ type: 'text', text }, { type: 'image_url', image_url: { url, ...(detail ? { detail } : {}) } }] },
];

/** The one image that reached the fake, decoded: asserts a JPEG data URL without EXIF. */
function arrivedJpeg(url) {
  const { type, buf } = parseDataUrl(url);
  assert.equal(type, 'image/jpeg');
  const info = jpegInfo(buf);
  assert.equal(buf.indexOf('Exif'), -1, 'EXIF bytes survived preprocessing');
  assert.ok(!info.markers.some((m) => m.id === 'Exif'), 'an APP1 Exif segment survived');
  return info;
}

/** Upright (portrait, as displayed) and within OpenAI's high-detail bounds. */
function assertOpenaiHigh(info) {
  assert.ok(info.height > info.width, `not upright: ${info.width}x${info.height}`);
  assert.ok(Math.min(info.width, info.height) <= 768, `short side ${Math.min(info.width, info.height)} > 768`);
  assert.ok(Math.max(info.width, info.height) <= 2048, `long side > 2048`);
  // and not needlessly small: the short side is filled to 768 (+-1)
  assert.ok(Math.min(info.width, info.height) >= 767, `short side ${info.width} shrank below 768`);
  // aspect kept: 2448x3264 is 3:4
  assert.ok(Math.abs(info.height / info.width - 4 / 3) < 0.01, `aspect changed: ${info.width}x${info.height}`);
}

test('openai sdk: plain call with a data-url photo arrives upright, resized, stripped', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-4o', messages: userMsg(photoUrl()) })
    .withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.choices[0].message.content, cannedAnswer('openai', 'gpt-4o', 1));
  assert.equal(data.choices[0].finish_reason, 'stop');
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(response.headers.get('x-aperture-provider'), 'openai');
  // OpenAI would shrink the photo to 768x1024 itself, so the estimate is the same before and after.
  const before = Number(response.headers.get('x-aperture-image-tokens-before'));
  const after = Number(response.headers.get('x-aperture-image-tokens-after'));
  assert.ok(after > 0 && before >= after, `image tokens ${before} -> ${after}`);

  const recs = await fake.requests('/v1/chat/completions');
  assert.equal(recs.length, 1);
  const rec = recs[0];
  assert.equal(rec.auth_present, true);
  assert.deepEqual(rec.auth_headers, ['authorization']);
  assert.equal(rec.body.model, 'gpt-4o');
  const urls = openaiImages(rec.body);
  assert.equal(urls.length, 1);
  assertOpenaiHigh(arrivedJpeg(urls[0]));
  assert.ok(rec.body_bytes < corpusFile(PHOTO).length, 'the upstream request should be smaller than the photo');
});

test('openai sdk: streamed call relays every chunk and the usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: userMsg(photoUrl()),
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '', chunks = 0, finish = null, usage = null;
  for await (const c of stream) {
    chunks++;
    assert.equal(c.object, 'chat.completion.chunk');
    text += c.choices[0]?.delta?.content ?? '';
    finish = c.choices[0]?.finish_reason ?? finish;
    usage = c.usage ?? usage;
  }
  assert.equal(text, cannedAnswer('openai', 'gpt-4o-mini', 1));
  assert.ok(chunks >= 4, `${chunks} chunks`);
  assert.equal(finish, 'stop');
  assert.ok(usage?.total_tokens > 0, 'no usage chunk');
  const [rec] = await fake.requests('/v1/chat/completions');
  assert.equal(rec.body.stream, true);
  assertOpenaiHigh(arrivedJpeg(openaiImages(rec.body)[0]));
});

test('openai sdk: detail low gets the 512 px preset', async () => {
  await client.chat.completions.create({ model: 'gpt-4o', messages: userMsg(photoUrl(), 'x', 'low') });
  const [rec] = await fake.requests('/v1/chat/completions');
  const info = arrivedJpeg(openaiImages(rec.body)[0]);
  assert.ok(Math.max(info.width, info.height) <= 512, `${info.width}x${info.height}`);
  assert.ok(info.height > info.width);
});

test('openai sdk: an http image url is fetched, preprocessed and sent inline', async () => {
  // Apple_iPhone_5.jpg: EXIF orientation 3 (upside down), GPS tags, displayed 3264x2448.
  const url = `${fake.url}/img/photos/Apple_iPhone_5.jpg`;
  const r = await client.chat.completions.create({ model: 'gpt-4o', messages: userMsg(url) });
  assert.equal(r.choices[0].message.content, cannedAnswer('openai', 'gpt-4o', 1));
  const recs = await fake.requests();
  const get = recs.find((x) => x.pathname === '/img/photos/Apple_iPhone_5.jpg');
  assert.ok(get, 'the gateway never fetched the image');
  assert.equal(get.method, 'GET');
  assert.equal(get.auth_present, false, 'the image fetch must not carry provider credentials');
  const post = recs.find((x) => x.pathname === '/v1/chat/completions');
  const [sent] = openaiImages(post.body);
  assert.ok(sent.startsWith('data:image/jpeg;base64,'), 'the image should go upstream inline, not as the url');
  const info = arrivedJpeg(sent);
  assert.ok(info.width > info.height, 'landscape photo should stay landscape');
  assert.ok(info.height <= 768 && info.width <= 2048, `${info.width}x${info.height}`);
  const raw = parseDataUrl(sent).buf;
  assert.equal(raw.indexOf('GPS'), -1);
});

test('openai sdk: a claude model is sent to /v1/messages in anthropic format and answered in openai format', async () => {
  const r = await client.chat.completions.create({
    model: 'claude-sonnet-4-5',
    max_tokens: 300,
    messages: [{ role: 'system', content: 'Be brief.' }, ...userMsg(photoUrl())],
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, cannedAnswer('anthropic', 'claude-sonnet-4-5', 1));
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
  assert.equal((await fake.requests('/v1/chat/completions')).length, 0);
  const [rec] = await fake.requests('/v1/messages');
  assert.ok(rec, 'nothing arrived at /v1/messages');
  assert.equal(rec.auth_present, true);
  assert.ok(rec.headers['anthropic-version'], 'anthropic-version header missing');
  assert.equal(rec.body.model, 'claude-sonnet-4-5');
  assert.equal(rec.body.max_tokens, 300);
  assert.ok(JSON.stringify(rec.body.system ?? '').includes('Be brief.'), 'system prompt should move to "system"');
  assert.ok(rec.body.messages.every((m) => m.role !== 'system'));
  const [src] = anthropicImages(rec.body);
  assert.equal(src?.type, 'base64');
  assert.equal(src.media_type, 'image/jpeg');
  const info = arrivedJpeg(`data:image/jpeg;base64,${src.data}`);
  assert.ok(info.height > info.width, 'not upright');
  assert.ok(Math.max(info.width, info.height) <= 1568, `${info.width}x${info.height} exceeds Anthropic's 1568`);
  assert.ok(info.width * info.height <= 1150000 * 1.01, `${info.width}x${info.height} exceeds Anthropic's 1.15 MP`);
});

test('openai sdk: a claude model streamed comes back as openai chunks', async () => {
  const stream = await client.chat.completions.create({ model: 'claude-haiku-4-5', max_tokens: 100, messages: userMsg(photoUrl()), stream: true });
  let text = '', finish = null;
  for await (const c of stream) {
    text += c.choices[0]?.delta?.content ?? '';
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, cannedAnswer('anthropic', 'claude-haiku-4-5', 1));
  assert.equal(finish, 'stop');
  const [rec] = await fake.requests('/v1/messages');
  assert.equal(rec.body.stream, true);
});

test('openai sdk: a gemini model goes to generateContent with inline data', async () => {
  const r = await client.chat.completions.create({ model: 'gemini-2.5-flash', messages: userMsg(photoUrl()) });
  assert.equal(r.choices[0].message.content, cannedAnswer('gemini', 'gemini-2.5-flash', 1));
  const [rec] = await fake.requests('/v1beta/models/');
  assert.ok(rec, 'nothing arrived at the gemini endpoint');
  assert.equal(rec.pathname, '/v1beta/models/gemini-2.5-flash:generateContent');
  assert.equal(rec.auth_present, true);
  const [img] = geminiImages(rec.body);
  assert.equal(img?.mime_type, 'image/jpeg');
  const info = arrivedJpeg(`data:image/jpeg;base64,${img.data}`);
  assert.ok(info.height > info.width, 'not upright');
  assert.ok(Math.max(info.width, info.height) <= 768, `${info.width}x${info.height} exceeds the gemini 768x768 tile`);
});

test('openai sdk: a gemini model streamed comes back as openai chunks', async () => {
  const stream = await client.chat.completions.create({ model: 'gemini-2.5-flash', messages: userMsg(photoUrl()), stream: true });
  let text = '';
  for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
  assert.equal(text, cannedAnswer('gemini', 'gemini-2.5-flash', 1));
  const [rec] = await fake.requests('/v1beta/models/');
  assert.match(rec.path, /^\/v1beta\/models\/gemini-2\.5-flash:streamGenerateContent\?alt=sse/);
});

test('openai sdk: models.list includes local', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('local'), `models: ${ids}`);
});

test('gateway log never contains the provider keys', () => {
  const out = gw.stderr();
  for (const v of Object.values(KEYS)) assert.ok(!out.includes(v), 'a provider key appears in the gateway output');
  const lines = gw.logLines().filter((l) => l.endpoint === '/v1/chat/completions');
  assert.ok(lines.length > 0, 'no request log lines');
});
