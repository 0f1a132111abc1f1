// The answer cache, end to end: aperture serve with the embedded SQLite store (a temporary file) and
// with a real redis-server the tests start on a loopback port, in front of the fake upstream.
//
// The fake's answers are deterministic but carry a per-request id (chatcmpl-fakeN), so "served from
// the cache" is checked three ways: the x-aperture-cache header, the id of the first answer coming
// back, and the fake's request log (GET /__requests) not growing. Every case uses its own prompt
// (a nonce), so cases never share keys, not even across the two backends.
//
// Fixtures made at test time: a JPEG with a COM segment and one with an APP1 Exif segment spliced in
// (same pixels: they must share a key), and two invoices drawn with Pillow from one template (same
// layout, other number and total: pHash-close, so they must be told apart by their text).
//
// Needs: redis-server on PATH (or REDIS_SERVER=/path; empty skips) for the Redis cases (skipped with
// a message otherwise; scripts/deps.sh installs it), /usr/bin/python3 with PIL and a TrueType font for the invoice cases (skipped likewise).

import { describe, test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { startFake, startGateway, corpusFile, dataUrl, post, NO_REDIS, freePort, startRedis, killChild } from './harness.mjs';
import { cannedAnswer, generatePng } from '../fakes/fake_upstream.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ADMIN_KEY = 'test-admin-key-0123456789';
const MODEL = 'gpt-4o';
const NEAR = 'phash/near-duplicates/';
const PHOTO = NEAR + 'nikon_d90__original.jpg';

// ---- fixtures -----------------------------------------------------------------------------------

const work = mkdtempSync(join(tmpdir(), 'aperture-cache-test-'));

/** Splice a segment (marker, payload) into a JPEG after SOI and a leading APP0 (JFIF stays first). */
function spliceSegment(jpeg, marker, payload) {
  let at = 2;
  if (jpeg[2] === 0xff && jpeg[3] === 0xe0) at = 4 + jpeg.readUInt16BE(4);
  const seg = Buffer.alloc(4 + payload.length);
  seg[0] = 0xff;
  seg[1] = marker;
  seg.writeUInt16BE(payload.length + 2, 2);
  payload.copy(seg, 4);
  return Buffer.concat([jpeg.subarray(0, at), seg, jpeg.subarray(at)]);
}
/** The same JPEG with a comment segment. */
const withComment = (jpeg) => spliceSegment(jpeg, 0xfe, Buffer.from('made by a test: same pixels, other bytes'));
/** The same JPEG with a minimal Exif block: one IFD entry, Orientation = 1 (no rotation). */
function withExif(jpeg) {
  const tiff = Buffer.from([
    0x49, 0x49, 0x2a, 0x00, 0x08, 0x00, 0x00, 0x00, // II*\0, IFD0 at 8
    0x01, 0x00, // one entry
    0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // 0x0112 SHORT 1 = 1
    0x00, 0x00, 0x00, 0x00, // no next IFD
  ]);
  return spliceSegment(jpeg, 0xe1, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff]));
}

const FONTS = [
  '/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf',
  '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf',
  '/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf',
  '/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf',
  '/usr/share/fonts/truetype/roboto/unhinted/RobotoTTF/Roboto-Bold.ttf',
];
const INVOICE_PY = String.raw`
import sys
from PIL import Image, ImageDraw, ImageFont
out, font = sys.argv[1], sys.argv[2]
big, mid = ImageFont.truetype(font, 44), ImageFont.truetype(font, 30)
def invoice(number, total):
    im = Image.new('RGB', (900, 1200), 'white')
    d = ImageDraw.Draw(im)
    d.rectangle([40, 40, 860, 150], outline='black', width=4)
    d.text((70, 70), 'ACME OFFICE SUPPLY LTD', font=big, fill='black')
    d.text((70, 190), 'INVOICE', font=big, fill='black')
    d.text((70, 270), 'Invoice No: ' + number, font=mid, fill='black')
    d.text((70, 320), 'Date: 2024-03-15', font=mid, fill='black')
    d.text((70, 370), 'Bill to: Northwind Traders', font=mid, fill='black')
    d.line([60, 440, 840, 440], fill='black', width=3)
    rows = [('Printer paper A4', '10', '45.00'), ('Toner cartridge', '2', '178.50'), ('Desk stapler', '1', '12.90')]
    y = 470
    for item, qty, amount in rows:
        d.text((70, y), item, font=mid, fill='black')
        d.text((560, y), qty, font=mid, fill='black')
        d.text((680, y), amount, font=mid, fill='black')
        y += 60
    d.line([60, y + 10, 840, y + 10], fill='black', width=3)
    d.text((70, y + 50), 'TOTAL DUE: ' + total, font=big, fill='black')
    d.text((70, 1080), 'Payment within 30 days. Thank you!', font=mid, fill='black')
    return im
a = invoice('INV-10482', '$1,236.40')
a.save(out + '/invoice_a.jpg', quality=92)
a.save(out + '/invoice_a_q55.jpg', quality=55)
invoice('INV-20917', '$9,871.25').save(out + '/invoice_b.jpg', quality=92)
`;

/** Draw the invoices; returns {a, aQ55, b} (Buffers) or a string saying why not. */
function makeInvoices() {
  const py = ['/usr/bin/python3', 'python3'].find((p) => p === 'python3' || existsSync(p));
  const font = FONTS.find((f) => existsSync(f));
  if (!font) return 'no TrueType font found (install fonts-dejavu-core)';
  const r = spawnSync(py, ['-c', INVOICE_PY, work, font], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return `python3 + PIL could not draw the invoices: ${r.error?.message || r.stderr}`;
  return {
    a: readFileSync(join(work, 'invoice_a.jpg')),
    aQ55: readFileSync(join(work, 'invoice_a_q55.jpg')),
    b: readFileSync(join(work, 'invoice_b.jpg')),
  };
}
const invoices = makeInvoices();
const NO_INVOICES = typeof invoices === 'string' ? `skipped: ${invoices}` : false;

// ---- requests ---------------------------------------------------------------------------------------

let fake;
const NONCE = `${process.pid}-${Date.now().toString(36)}`;
let seq = 0;
/** A prompt no other case uses. */
const uniq = (label) => `${label} [case ${NONCE}-${++seq}]`;

function chatBody(prompt, images = [], extra = {}) {
  const content = [{ type: 'text', text: prompt }];
  for (const img of images) content.push({ type: 'image_url', image_url: { url: dataUrl(img) } });
  return { model: MODEL, messages: [{ role: 'user', content }], ...extra };
}

/** POST a chat completion; adds cache (the x-aperture-cache header), id and content. */
async function ask(gw, body, headers = {}) {
  const r = await post(gw, '/v1/chat/completions', body, headers);
  r.cache = r.headers.get('x-aperture-cache');
  r.id = r.body?.id;
  r.content = r.body?.choices?.[0]?.message?.content;
  return r;
}
const task = (name, more = {}) => ({ 'x-aperture-task': name, ...more });

/** How many requests with this prompt reached the fake. */
async function upstream(prompt) {
  const recs = await fake.requests('/v1/chat/completions');
  return recs.filter((r) => JSON.stringify(r.body?.messages ?? '').includes(prompt)).length;
}

async function admin(gw, method, query = '', key = ADMIN_KEY) {
  const r = await fetch(`${gw.url}/v1/admin/cache${query}`, {
    method,
    headers: key ? { authorization: `Bearer ${key}` } : {},
  });
  const text = await r.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: r.status, body, text };
}

/** The cache's entry count per the admin endpoint (NaN when it cannot say). */
async function entries(gw) {
  try {
    const r = await admin(gw, 'GET');
    return r.status === 200 ? Number(r.body?.entries) : NaN;
  } catch {
    return NaN;
  }
}

/** Wait until the entry count stays the same for quietMs (at most ms): no store in flight. */
async function quiet(gw, quietMs = 300, ms = 4000) {
  const t0 = Date.now();
  let last = await entries(gw);
  let since = Date.now();
  while (Date.now() - t0 < ms) {
    await sleep(50);
    const n = await entries(gw);
    if (n !== last && !(Number.isNaN(n) && Number.isNaN(last))) {
      last = n;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return last;
  }
  return last;
}

/**
 * Answers are stored off the request's path (on the worker pool; a non-tolerant task's store OCRs
 * the images first). Wait until the entry count passes `before` (at most ms), then until it is quiet.
 */
async function settled(gw, before, ms = 3000) {
  const t0 = Date.now();
  if (!Number.isFinite(before)) return sleep(1500);
  while (Date.now() - t0 < ms) {
    const n = await entries(gw);
    if (Number.isFinite(n) && n > before) break;
    await sleep(50);
  }
  await quiet(gw, 150, 2000);
}

/** Ask, then wait until the answer is stored. */
async function askAndStore(gw, body, headers = {}) {
  const before = await entries(gw);
  const r = await ask(gw, body, headers);
  assert.equal(r.status, 200, `first request failed: ${r.text.slice(0, 300)}`);
  await settled(gw, before);
  return r;
}

async function metrics(gw) {
  return (await fetch(`${gw.url}/metrics`)).text();
}
/** A sample's value from Prometheus text: the first sample of name whose labels contain label. */
function metricValue(text, name, label = '') {
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_:][\w:]*)(\{[^}]*\})? (\S+)/.exec(line);
    if (m && m[1] === name && (m[2] || '').includes(label)) return Number(m[3]);
  }
  return undefined;
}

/** Read an OpenAI SSE body: the concatenated delta text, whether [DONE] came, the chunks. */
function readSse(text) {
  let content = '';
  let done = false;
  const chunks = [];
  for (const ev of text.split(/\r?\n\r?\n/)) {
    const data = ev
      .split(/\r?\n/)
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).trimStart())
      .join('\n');
    if (!data) continue;
    if (data === '[DONE]') {
      done = true;
      continue;
    }
    const c = JSON.parse(data);
    chunks.push(c);
    content += c.choices?.[0]?.delta?.content ?? '';
  }
  return { content, done, chunks };
}

// ---- the cases, run against each backend ----------------------------------------------------------------

/**
 * The behaviour every backend must have. ctx() returns {gw} once the suite's before() ran.
 */
function commonCases(label, ctx) {
  test(`${label}: an identical request is an exact hit and never reaches the upstream`, async () => {
    const { gw } = ctx();
    const p = uniq('What is in this photo?');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    const first = await askAndStore(gw, body);
    assert.equal(first.cache, 'miss');
    assert.equal(first.content, cannedAnswer('openai', MODEL, 1));
    const second = await ask(gw, body);
    assert.equal(second.status, 200, second.text);
    assert.equal(second.cache, 'hit-exact', 'the second identical request (default task "chat") should hit');
    assert.equal(second.id, first.id, 'a hit replays the stored answer');
    assert.equal(second.content, first.content);
    assert.equal(await upstream(p), 1, 'the upstream saw the request once');
  });

  test(`${label}: an image without any text is cached too (task chat, exact hit)`, async () => {
    const { gw } = ctx();
    const p = uniq('What colours are in this gradient?');
    const body = { model: MODEL, messages: [{ role: 'user', content: [{ type: 'text', text: p }, { type: 'image_url', image_url: { url: dataUrl(generatePng(320, 240), 'image/png') } }] }] };
    const first = await askAndStore(gw, body);
    assert.equal(first.cache, 'miss');
    const second = await ask(gw, body);
    assert.equal(second.status, 200, second.text);
    assert.equal(second.cache, 'hit-exact', 'a picture without text must still be stored for exact hits (non-tolerant task)');
    assert.equal(second.id, first.id);
    assert.equal(await upstream(p), 1);
  });

  test(`${label}: uploads that preprocess to the same bytes (added COM, added Exif) share one key`, async () => {
    const { gw } = ctx();
    const jpeg = corpusFile(NEAR + 'nikon_d90__half_size.jpg');
    const p = uniq('Describe this.');
    const first = await askAndStore(gw, chatBody(p, [jpeg]));
    assert.equal(first.cache, 'miss');
    for (const [what, variant] of [['a COM segment', withComment(jpeg)], ['an Exif segment', withExif(jpeg)]]) {
      assert.notDeepEqual(variant, jpeg);
      const r = await ask(gw, chatBody(p, [variant]));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.cache, 'hit-exact', `the same JPEG with ${what} should hit exactly`);
      assert.equal(r.id, first.id);
    }
    assert.equal(await upstream(p), 1);
  });

  test(`${label}: another prompt over the same image is a miss`, async () => {
    const { gw } = ctx();
    const img = corpusFile(PHOTO);
    const p1 = uniq('What is in this photo?');
    const p2 = uniq('How many people are in this photo?');
    await askAndStore(gw, chatBody(p1, [img]));
    const r = await ask(gw, chatBody(p2, [img]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.cache, 'miss');
    assert.equal(await upstream(p2), 1);
  });

  test(`${label}: x-aperture-cache: bypass and Cache-Control: no-cache skip the lookup`, async () => {
    const { gw } = ctx();
    const p = uniq('Bypass me.');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    const first = await askAndStore(gw, body);
    for (const h of [{ 'x-aperture-cache': 'bypass' }, { 'cache-control': 'no-cache' }]) {
      const r = await ask(gw, body, h);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.cache, 'bypass', `${JSON.stringify(h)}: header`);
      assert.notEqual(r.id, first.id, `${JSON.stringify(h)}: a fresh answer`);
    }
    assert.equal(await upstream(p), 3, 'both bypassing requests reached the upstream');
  });

  test(`${label}: describe: a re-encoded and a rescaled copy of a photo are near hits`, async () => {
    const { gw } = ctx();
    const p = uniq('Describe this photo in one sentence.');
    const first = await askAndStore(gw, chatBody(p, [corpusFile(NEAR + 'nikon_d90__original.jpg')]), task('describe'));
    assert.equal(first.cache, 'miss');
    for (const v of ['nikon_d90__reencode_q40.jpg', 'nikon_d90__half_size.jpg']) {
      const r = await ask(gw, chatBody(p, [corpusFile(NEAR + v)]), task('describe'));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.cache, 'hit-near', `${v} under task describe`);
      assert.equal(r.id, first.id, `${v}: the stored answer`);
    }
    assert.equal(await upstream(p), 1);
    // An unrelated photo is no neighbour.
    const other = await ask(gw, chatBody(p, [corpusFile(NEAR + 'canon_20d__original.jpg')]), task('describe'));
    assert.equal(other.cache, 'miss', 'a different photo must not near-hit');
  });

  test(`${label}: task chat (the default) is not tolerant: a re-encoded copy is not a near hit`, async () => {
    const { gw } = ctx();
    const p = uniq('What is in this photo?');
    await askAndStore(gw, chatBody(p, [corpusFile(NEAR + 'nikon_d90__original.jpg')]));
    const r = await ask(gw, chatBody(p, [corpusFile(NEAR + 'nikon_d90__reencode_q40.jpg')]));
    assert.equal(r.status, 200, r.text);
    assert.notEqual(r.cache, 'hit-near');
    assert.equal(await upstream(p), 2);
  });

  test(`${label}: describe: two same-template invoices are pHash neighbours (the control for invoice_extraction)`, { skip: NO_INVOICES }, async () => {
    const { gw } = ctx();
    const pd = uniq('Describe this document.');
    const a = await askAndStore(gw, chatBody(pd, [invoices.a]), task('describe'));
    const b = await ask(gw, chatBody(pd, [invoices.b]), task('describe'));
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'hit-near', 'under a tolerant task invoice B near-hits A (pHash distance 2)');
    assert.equal(b.id, a.id);
  });

  test(`${label}: invoice_extraction: same-template invoices with other totals never share an answer`, { skip: NO_INVOICES }, async (t) => {
    const { gw } = ctx();
    const p = uniq('Extract invoice number and total as JSON.');
    const a = await askAndStore(gw, chatBody(p, [invoices.a]), task('invoice_extraction'));
    assert.equal(a.cache, 'miss');
    const again = await ask(gw, chatBody(p, [invoices.a]), task('invoice_extraction'));
    assert.equal(again.cache, 'hit-exact', 'the very same invoice hits exactly (proves A was stored)');
    const b = await ask(gw, chatBody(p, [invoices.b]), task('invoice_extraction'));
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'miss', 'another invoice number and total must not hit');
    assert.notEqual(b.id, a.id, 'invoice B got invoice A\'s answer');
    assert.equal(await upstream(p), 2, 'invoice B reached the upstream');
    // The same invoice at another JPEG quality may near-hit, only when the OCR texts agree; say what happened.
    const q = await ask(gw, chatBody(p, [invoices.aQ55]), task('invoice_extraction'));
    assert.equal(q.status, 200, q.text);
    t.diagnostic(`invoice A re-encoded at q55 under invoice_extraction: ${q.cache}`);
    if (q.cache === 'hit-near') assert.equal(q.id, a.id);
    // And B, asked again after the q55 copy, still never gets A's answer.
    const b2 = await ask(gw, chatBody(p, [invoices.b]), task('invoice_extraction'));
    assert.notEqual(b2.id, a.id);
  });

  test(`${label}: x-aperture-cache-ttl: 1 expires`, async () => {
    const { gw } = ctx();
    const p = uniq('Short-lived.');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    const ttl = { 'x-aperture-cache-ttl': '1' };
    const first = await askAndStore(gw, body, ttl);
    const hit = await ask(gw, body, ttl);
    assert.equal(hit.cache, 'hit-exact', 'within its second the entry is there');
    await sleep(2500);
    const later = await ask(gw, body); // no TTL header: the entry it stores does not expire mid-suite
    assert.equal(later.status, 200, later.text);
    assert.equal(later.cache, 'miss', 'after 2.5 s a 1 s entry is gone');
    assert.notEqual(later.id, first.id);
    assert.equal(await upstream(p), 2);
  });

  test(`${label}: a streamed answer is replayed from the cache as a stream (raw SSE and the openai sdk)`, async () => {
    const { gw } = ctx();
    const p = uniq('Stream me.');
    const body = chatBody(p, [corpusFile(PHOTO)], { stream: true });
    const before = await entries(gw);
    const first = await post(gw, '/v1/chat/completions', body);
    assert.equal(first.status, 200, first.text);
    assert.equal(first.headers.get('x-aperture-cache'), 'miss');
    const s1 = readSse(first.text);
    assert.ok(s1.done, 'first stream ends with [DONE]');
    assert.equal(s1.content, cannedAnswer('openai', MODEL, 1));
    await settled(gw, before);

    const second = await post(gw, '/v1/chat/completions', body);
    assert.equal(second.status, 200, second.text);
    assert.equal(second.headers.get('x-aperture-cache'), 'hit-exact');
    assert.match(second.headers.get('content-type') || '', /^text\/event-stream/);
    const s2 = readSse(second.text);
    assert.ok(s2.done, 'the replay ends with [DONE]');
    assert.equal(s2.content, s1.content, 'the replay carries the same text');
    assert.ok(s2.chunks.every((c) => c.object === 'chat.completion.chunk'));
    assert.ok(s2.chunks.some((c) => c.choices?.[0]?.finish_reason === 'stop'), 'the replay ends with finish_reason stop');

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const { data: stream, response } = await client.chat.completions.create(body).withResponse();
    assert.equal(response.headers.get('x-aperture-cache'), 'hit-exact');
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
    assert.equal(text, s1.content);
    // The key ignores "stream": the same request unstreamed is the same answer.
    const plain = await ask(gw, chatBody(p, [corpusFile(PHOTO)]));
    assert.equal(plain.cache, 'hit-exact');
    assert.equal(plain.content, s1.content);
    assert.equal(await upstream(p), 1);
  });

  test(`${label}: errors and cut streams are not cached`, async () => {
    const { gw } = ctx();
    const p = uniq('Fail once.');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    await fake.fault({ path: '/v1/chat/completions', status: 500, count: 1 });
    const bad = await ask(gw, body);
    assert.ok(bad.status >= 500, `the injected 500 should fail the request (got ${bad.status})`);
    const n = await upstream(p);
    await sleep(300);
    const good = await ask(gw, body);
    assert.equal(good.status, 200, good.text);
    assert.equal(good.cache, 'miss', 'an error must not be replayed');
    assert.equal(await upstream(p), n + 1, 'the next identical request reached the upstream');

    // A stream that ends without its last events (no finish_reason, no [DONE]) is no answer to keep.
    const ps = uniq('Cut me short.');
    const sbody = chatBody(ps, [corpusFile(PHOTO)], { stream: true });
    await fake.fault({ path: '/v1/chat/completions', truncate_stream: 'clean', count: 1 });
    const cut = await post(gw, '/v1/chat/completions', sbody).catch((e) => ({ status: `cut (${e.message})` }));
    await sleep(1000); // room for a (wrong) store
    const after = await ask(gw, chatBody(ps, [corpusFile(PHOTO)]));
    assert.equal(after.status, 200, after.text);
    assert.notEqual(after.cache, 'hit-exact', `a truncated stream (status ${cut.status}) was cached`);
    assert.equal(await upstream(ps), 2);
  });

  test(`${label}: five identical requests at once coalesce into one upstream call`, async () => {
    const { gw } = ctx();
    const p = uniq('All at once.');
    const body = chatBody(p, [corpusFile(NEAR + 'nikon_d90__half_size.jpg')]);
    await fake.fault({ path: '/v1/chat/completions', delay_ms: 800, count: 1 });
    const rs = await Promise.all(Array.from({ length: 5 }, () => ask(gw, body)));
    for (const r of rs) assert.equal(r.status, 200, r.text);
    assert.equal(await upstream(p), 1, 'the upstream saw one request');
    assert.equal(new Set(rs.map((r) => r.content)).size, 1, 'the same content for all');
    assert.equal(new Set(rs.map((r) => r.id)).size, 1, 'the same answer for all');
    const hs = rs.map((r) => r.cache).sort();
    assert.deepEqual(hs, ['coalesced', 'coalesced', 'coalesced', 'coalesced', 'miss']);
  });

  test(`${label}: admin endpoint: stats, purge by task, purge all, wrong key`, async () => {
    const { gw } = ctx();
    for (const key of [null, 'wrong-key']) {
      const r = await admin(gw, 'GET', '', key);
      assert.equal(r.status, 401, `key ${key}: ${r.text}`);
      const d = await admin(gw, 'DELETE', '?all=1', key);
      assert.equal(d.status, 401, `delete with key ${key}: ${d.text}`);
    }
    const pd = uniq('Describe, then purge.');
    const pc = uniq('Chat, then purge.');
    const dBody = chatBody(pd, [corpusFile(PHOTO)]);
    const cBody = chatBody(pc, [corpusFile(PHOTO)]);
    await askAndStore(gw, dBody, task('describe'));
    await askAndStore(gw, cBody);
    const st = await admin(gw, 'GET');
    assert.equal(st.status, 200, st.text);
    assert.equal(st.body.backend, label);
    assert.equal(st.body.backend_up, true);
    assert.ok(st.body.entries >= 2, `entries ${st.body.entries}`);

    const bad = await admin(gw, 'DELETE');
    assert.equal(bad.status, 400, 'a purge without ?key, ?task or ?all is refused');

    const byTask = await admin(gw, 'DELETE', '?task=describe');
    assert.equal(byTask.status, 200, byTask.text);
    assert.ok(byTask.body.purged >= 1, byTask.text);
    assert.equal((await ask(gw, dBody, task('describe'))).cache, 'miss', 'describe entries are gone');
    assert.equal((await ask(gw, cBody)).cache, 'hit-exact', 'purging describe kept the chat entry');

    const all = await admin(gw, 'DELETE', '?all=1');
    assert.equal(all.status, 200, all.text);
    assert.ok(all.body.purged >= 1, all.text);
    assert.equal((await ask(gw, cBody)).cache, 'miss', 'after ?all=1 nothing hits');
    await sleep(300); // let that miss's store land before the next case counts entries
  });

  test(`${label}: /metrics counts lookups by result and exports the backend state`, async () => {
    const { gw } = ctx();
    const m = await metrics(gw);
    // Redis does not count the bytes of its entries: aperture_cache_bytes is absent there, not -1.
    const names = ['aperture_cache_entries', 'aperture_cache_backend_up'];
    if (label !== 'redis') names.push('aperture_cache_bytes');
    for (const name of names) assert.ok(metricValue(m, name) !== undefined, `${name} missing from /metrics`);
    if (label === 'redis') assert.equal(metricValue(m, 'aperture_cache_bytes'), undefined);
    assert.equal(metricValue(m, 'aperture_cache_backend_up'), 1);
    assert.ok(metricValue(m, 'aperture_cache_requests_total', 'result="hit_exact"') > 0, 'hit_exact counted');
    assert.ok(metricValue(m, 'aperture_cache_requests_total', 'result="miss"') > 0, 'miss counted');
    assert.ok(metricValue(m, 'aperture_cache_requests_total', 'result="bypass"') > 0, 'bypass counted');
    assert.ok(/^aperture_cache_saved_usd_total/m.test(m), 'aperture_cache_saved_usd_total missing');
  });
}

// ---- the suites -----------------------------------------------------------------------------------------

before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('sqlite', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      env: { APERTURE_CACHE_URL: `sqlite://${join(work, 'cache.db')}`, APERTURE_ADMIN_KEY: ADMIN_KEY },
      config: { retry: { max_attempts: 1 } }, // an injected failure must reach the client
    });
  });
  after(async () => {
    await gw?.stop();
  });
  beforeEach(() => fake.reset());
  afterEach(() => quiet(gw));
  commonCases('sqlite', () => ({ gw }));
});

describe('redis', { skip: NO_REDIS }, () => {
  let port, redis, gw, gw2;
  before(async () => {
    port = await freePort();
    redis = await startRedis(port, work);
    const env = { APERTURE_CACHE_URL: `redis://127.0.0.1:${port}/0`, APERTURE_ADMIN_KEY: ADMIN_KEY };
    gw = await startGateway(fake, { env, config: { retry: { max_attempts: 1 } } });
    gw2 = await startGateway(fake, { env, config: { retry: { max_attempts: 1 } } });
  });
  after(async () => {
    await gw?.stop();
    await gw2?.stop();
    await killChild(redis);
  });
  beforeEach(() => fake.reset());
  afterEach(() => quiet(gw));

  commonCases('redis', () => ({ gw }));

  test('redis: two gateways sharing one Redis see each other\'s entries (exact and near)', async () => {
    const p = uniq('Shared across gateways.');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    const a = await askAndStore(gw, body);
    assert.equal(a.cache, 'miss');
    const b = await ask(gw2, body);
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'hit-exact', 'gateway B hits what gateway A stored');
    assert.equal(b.id, a.id);
    assert.equal(await upstream(p), 1);
    // The near-duplicate index lives in Redis too.
    const pn = uniq('Describe this photo, shared.');
    const an = await askAndStore(gw, chatBody(pn, [corpusFile(NEAR + 'iphone6__original.jpg')]), task('describe'));
    const bn = await ask(gw2, chatBody(pn, [corpusFile(NEAR + 'iphone6__reencode_q40.jpg')]), task('describe'));
    assert.equal(bn.cache, 'hit-near', 'gateway B near-hits what gateway A stored');
    assert.equal(bn.id, an.id);
  });

  test('redis: killed mid-run and restarted: no failed client request, then the cache works again', async () => {
    const p = uniq('Before the outage.');
    const body = chatBody(p, [corpusFile(PHOTO)]);
    await askAndStore(gw, body);
    assert.equal((await ask(gw, body)).cache, 'hit-exact', 'the cache works before the outage');

    // Clients keep asking, through both gateways, for the whole outage.
    const seen = [];
    let stop = false;
    const loop = (async () => {
      const lp = uniq('Steady traffic.');
      for (let i = 0; !stop; i++) {
        const g = i % 2 ? gw2 : gw;
        const r = await ask(g, chatBody(lp, [corpusFile(NEAR + 'nikon_d90__half_size.jpg')])).catch((e) => ({ status: `${e.message}` }));
        seen.push({ status: r.status, cache: r.cache, t: Date.now() });
        await sleep(40);
      }
    })();
    await sleep(300);

    await killChild(redis, 'SIGKILL');
    const down = await ask(gw, body);
    assert.equal(down.status, 200, `a request while Redis is down failed: ${down.text}`);
    assert.equal(down.cache, 'off', 'served without the cache');
    assert.equal(await upstream(p), 2, 'the upstream answered it');
    const m0 = await metrics(gw);
    assert.equal(metricValue(m0, 'aperture_cache_backend_up'), 0, 'aperture_cache_backend_up while down');
    const st = await admin(gw, 'GET');
    assert.ok(st.status === 503 || st.body?.backend_up === false, `admin stats while down: ${st.status} ${st.text}`);
    await sleep(500);

    redis = await startRedis(port, work); // same port, empty
    const t0 = Date.now();
    const pa = uniq('After the outage.');
    const abody = chatBody(pa, [corpusFile(PHOTO)]);
    let back = false;
    while (Date.now() - t0 < 8000) {
      const r = await ask(gw, abody);
      assert.equal(r.status, 200, r.text);
      if (r.cache === 'miss') {
        back = true;
        break;
      }
      await sleep(250);
    }
    assert.ok(back, 'within 8 s of the restart the gateway uses the cache again');
    await sleep(500); // the store
    let hit;
    for (let i = 0; i < 10 && hit?.cache !== 'hit-exact'; i++) {
      hit = await ask(gw, abody);
      if (hit.cache !== 'hit-exact') await sleep(300);
    }
    assert.equal(hit.cache, 'hit-exact', 'a fresh store is hit again after the restart');
    const m1 = await metrics(gw);
    assert.equal(metricValue(m1, 'aperture_cache_backend_up'), 1, 'aperture_cache_backend_up after the restart');
    // The other gateway recovered too.
    const r2 = await ask(gw2, abody);
    assert.equal(r2.cache, 'hit-exact', 'gateway B sees the fresh entry');

    stop = true;
    await loop;
    const failed = seen.filter((s) => s.status !== 200);
    assert.ok(seen.length >= 10, `only ${seen.length} background requests`);
    assert.deepEqual(failed, [], `client requests failed during the outage (${failed.length} of ${seen.length})`);
    assert.ok(seen.some((s) => s.cache === 'off'), 'the background traffic saw the outage');
  });
});
