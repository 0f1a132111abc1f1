// The official @anthropic-ai/sdk pointed at aperture's /v1/messages: plain and streamed calls with a
// base64 image block and with a url image block; an Anthropic-format request to a gpt-* model is sent
// upstream in OpenAI format and answered in Anthropic format.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startFake, startGateway, corpusFile, jpegInfo, parseDataUrl, anthropicImages, openaiImages } from './harness.mjs';
import { cannedAnswer } from '../fakes/fake_upstream.mjs';

const PHOTO = 'photos/Apple_iPhone_4S.jpg'; // EXIF orientation 6: displayed 2448x3264 (portrait)
let fake, gw, client;

before(async () => {
  fake = await startFake();
  gw = await startGateway(fake);
  client = new Anthropic({ baseURL: gw.url, apiKey: 'client-key-unused', maxRetries: 0 });
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});
beforeEach(() => fake.reset());

const imageBlock = () => ({ type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: corpusFile(PHOTO).toString('base64') } });
const content = (img) => [img, { type: 'text', text: 'What is in this photo?' }];

/** The Anthropic image block that reached the fake: base64 JPEG, upright, within 1568 px / 1.15 MP, no EXIF. */
function assertArrivedForAnthropic(rec) {
  const [src] = anthropicImages(rec.body);
  assert.equal(src?.type, 'base64', `image source ${JSON.stringify(src)?.slice(0, 80)}`);
  assert.equal(src.media_type, 'image/jpeg');
  const buf = Buffer.from(src.data, 'base64');
  const info = jpegInfo(buf);
  assert.equal(buf.indexOf('Exif'), -1, 'EXIF bytes survived');
  assert.ok(info.height > info.width, `not upright: ${info.width}x${info.height}`);
  assert.ok(Math.max(info.width, info.height) <= 1568, `${info.width}x${info.height}`);
  assert.ok(info.width * info.height <= 1150000 * 1.01, `${info.width}x${info.height} over 1.15 MP`);
  return info;
}

test('anthropic sdk: messages.create with a base64 image block', async () => {
  const m = await client.messages.create({
    model: 'claude-sonnet-4-5',
    max_tokens: 256,
    system: 'You describe photos.',
    messages: [{ role: 'user', content: content(imageBlock()) }],
  });
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.equal(m.content[0].type, 'text');
  assert.equal(m.content[0].text, cannedAnswer('anthropic', 'claude-sonnet-4-5', 1));
  assert.equal(m.stop_reason, 'end_turn');
  assert.ok(m.usage.input_tokens > 0 && m.usage.output_tokens > 0);
  const [rec] = await fake.requests('/v1/messages');
  assert.equal(rec.auth_present, true);
  assert.equal(rec.body.model, 'claude-sonnet-4-5');
  assert.equal(rec.body.max_tokens, 256);
  assert.ok(JSON.stringify(rec.body.system).includes('You describe photos.'));
  assertArrivedForAnthropic(rec);
});

test('anthropic sdk: messages.stream yields text events and a final message', async () => {
  const stream = client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 128, messages: [{ role: 'user', content: content(imageBlock()) }] });
  let text = '';
  const types = new Set();
  stream.on('text', (t) => (text += t));
  stream.on('streamEvent', (e) => types.add(e.type));
  const final = await stream.finalMessage();
  assert.equal(text, cannedAnswer('anthropic', 'claude-haiku-4-5', 1));
  assert.equal(final.content[0].text, text);
  assert.equal(final.stop_reason, 'end_turn');
  for (const t of ['message_start', 'content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'])
    assert.ok(types.has(t), `no ${t} event (saw ${[...types]})`);
  const [rec] = await fake.requests('/v1/messages');
  assert.equal(rec.body.stream, true);
  assertArrivedForAnthropic(rec);
});

test('anthropic sdk: messages.create with stream: true', async () => {
  const s = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 64, stream: true, messages: [{ role: 'user', content: content(imageBlock()) }] });
  let text = '';
  let stop = null;
  for await (const e of s) {
    if (e.type === 'content_block_delta' && e.delta.type === 'text_delta') text += e.delta.text;
    if (e.type === 'message_delta') stop = e.delta.stop_reason;
  }
  assert.equal(text, cannedAnswer('anthropic', 'claude-sonnet-4-5', 1));
  assert.equal(stop, 'end_turn');
});

test('anthropic sdk: a url image block is fetched by the gateway and sent as base64', async () => {
  const url = `${fake.url}/img/${PHOTO}`;
  const m = await client.messages.create({
    model: 'claude-sonnet-4-5',
    max_tokens: 64,
    messages: [{ role: 'user', content: content({ type: 'image', source: { type: 'url', url } }) }],
  });
  assert.equal(m.content[0].text, cannedAnswer('anthropic', 'claude-sonnet-4-5', 1));
  const recs = await fake.requests();
  assert.ok(recs.some((r) => r.pathname === `/img/${PHOTO}`), 'the gateway never fetched the image');
  assertArrivedForAnthropic(recs.find((r) => r.pathname === '/v1/messages'));
});

test('anthropic sdk: a gpt model is sent upstream in openai format, answered in anthropic format', async () => {
  const m = await client.messages.create({ model: 'gpt-4o', max_tokens: 64, messages: [{ role: 'user', content: content(imageBlock()) }] });
  assert.equal(m.type, 'message');
  assert.equal(m.content[0].text, cannedAnswer('openai', 'gpt-4o', 1));
  assert.equal(m.stop_reason, 'end_turn');
  const [rec] = await fake.requests('/v1/chat/completions');
  assert.ok(rec, 'nothing arrived at /v1/chat/completions');
  const [url] = openaiImages(rec.body);
  const { type, buf } = parseDataUrl(url);
  assert.equal(type, 'image/jpeg');
  const info = jpegInfo(buf);
  assert.ok(info.height > info.width && Math.min(info.width, info.height) <= 768);
  // and streamed
  const stream = client.messages.stream({ model: 'gpt-4o-mini', max_tokens: 64, messages: [{ role: 'user', content: 'hello' }] });
  let text = '';
  stream.on('text', (t) => (text += t));
  await stream.finalMessage();
  assert.equal(text, cannedAnswer('openai', 'gpt-4o-mini', 0));
});
