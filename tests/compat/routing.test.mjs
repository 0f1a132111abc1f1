// Routing, end to end: rules (config routes[]) that pick a model by keyword, image size, image
// count and task; restricted data kept on self-hosted providers; tiering (a cheap model first, a
// frontier model when the answer fails the task's checks); two-stage processing (classify a
// thumbnail, run the full request only for valuable classes); load balancing across weighted
// deployments; and per-provider limits (rpm with a bounded queue, max_in_flight).
//
// What reached which upstream model is read from the fake upstream's request log (model, images
// with their sizes, times); what the client saw from the gateway's answer and headers
// (x-aperture-rule, x-aperture-route, x-aperture-class) and /metrics.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startFake, startGateway, gatewayConfig, post, metrics, metricValue, pool, dataUrl } from './harness.mjs';
import { generatePng } from '../fakes/fake_upstream.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake?.stop();
});

/** The harness's providers plus OpenAI-compatible ones at the fake's /v1 (extra fields merged). */
function providers(...compat) {
  return [
    ...gatewayConfig(fake).providers,
    ...compat.map((p) => ({ type: 'openai-compatible', base_url: `${fake.url}/v1`, timeout_ms: 2500, ...p })),
  ];
}

const png = (w, h) => dataUrl(generatePng(w, h), 'image/png');
const SMALL = png(100, 80);
const LARGE = png(800, 600);

function chat(model, text, images = [], extra = {}) {
  const content = [{ type: 'text', text }, ...images.map((url) => ({ type: 'image_url', image_url: { url } }))];
  return { model, messages: [{ role: 'user', content }], ...extra };
}
const ask = (gw, body, headers = {}) => post(gw, '/v1/chat/completions', body, headers);
/** Upstream calls for model ("*": every model call) since the last reset. */
const calls = async (model = '*') => (await fake.requests()).filter((r) => r.model && (model === '*' || r.model === model));
const longEdge = (img) => Math.max(img.width, img.height);

// ---- rules -------------------------------------------------------------------------------------

describe('routing rules', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        models: [
          { name: 'cheap', provider: 'openai', upstream: 'gpt-4o-mini' },
          { name: 'small', provider: 'openai', upstream: 'small-vlm' },
          { name: 'multi', provider: 'openai', upstream: 'multi-vlm' },
          { name: 'taskmodel', provider: 'openai', upstream: 'task-vlm' },
        ],
        tasks: [{ name: 'scene_description', prompt: 'Describe the scene in one sentence.', model: 'gpt-4o' }],
        routes: [
          { name: 'receipts-to-cheap', keywords: ['receipt', 'till slip'], models: ['cheap'] },
          { name: 'by-task', task: 'scene_description', models: ['taskmodel'] },
          { name: 'many-images', min_images: 3, models: ['multi'] },
          { name: 'small-images', min_images: 1, max_pixels: 200 * 200, models: ['small'] },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('rules: no rule matches: the model asked for, no x-aperture-rule header', async () => {
    await fake.reset();
    const r = await ask(gw, chat('gpt-4o', 'what is in this picture?', [LARGE]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), null);
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o']);
  });

  test('rules: a keyword in the prompt (any case) sends the request to the cheap model', async () => {
    await fake.reset();
    const r = await ask(gw, chat('gpt-4o', 'Read this RECEIPT and give me the total', [LARGE]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), 'receipts-to-cheap');
    const r2 = await ask(gw, chat('gpt-4o', 'here is a till slip from lunch'));
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.headers.get('x-aperture-rule'), 'receipts-to-cheap');
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o-mini', 'gpt-4o-mini']);
  });

  test('rules: a small image (max_pixels) goes to the small model, a large one does not', async () => {
    await fake.reset();
    const small = await ask(gw, chat('gpt-4o', 'what is this?', [SMALL]));
    assert.equal(small.status, 200, small.text);
    assert.equal(small.headers.get('x-aperture-rule'), 'small-images');
    const large = await ask(gw, chat('gpt-4o', 'what is this?', [LARGE]));
    assert.equal(large.status, 200, large.text);
    assert.equal(large.headers.get('x-aperture-rule'), null);
    assert.deepEqual((await calls()).map((c) => c.model), ['small-vlm', 'gpt-4o']);
  });

  test('rules: three images or more go to the multi-image model', async () => {
    await fake.reset();
    const r = await ask(gw, chat('gpt-4o', 'compare these', [SMALL, SMALL, LARGE]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), 'many-images');
    const [c] = await calls();
    assert.equal(c.model, 'multi-vlm');
    assert.equal(c.n_images, 3);
  });

  test('rules: the task (x-aperture-task) picks its rule', async () => {
    await fake.reset();
    const r = await ask(gw, chat('gpt-4o', 'go', [LARGE]), { 'x-aperture-task': 'scene_description' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), 'by-task');
    assert.deepEqual((await calls()).map((c) => c.model), ['task-vlm']);
  });

  test('rules: aperture_route_total{rule} counts each rule\'s matches', async () => {
    const m = await metrics(gw);
    assert.equal(metricValue(m, 'aperture_route_total', { rule: 'receipts-to-cheap' }), 2);
    assert.equal(metricValue(m, 'aperture_route_total', { rule: 'small-images' }), 1);
    assert.equal(metricValue(m, 'aperture_route_total', { rule: 'many-images' }), 1);
    assert.equal(metricValue(m, 'aperture_route_total', { rule: 'by-task' }), 1);
  });
});

// ---- restricted data ---------------------------------------------------------------------------

describe('restricted data stays on self-hosted providers', () => {
  let gw;
  const RESTRICTED = { 'x-aperture-data-class': 'restricted' };
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        providers: providers({ name: 'vllm' }),
        retry: { max_attempts: 2, base_ms: 10, cap_ms: 20 },
        models: [
          { name: 'selfhosted', provider: 'vllm', upstream: 'qwen2-vl-7b' },
          { name: 'cloud_first', provider: 'openai', upstream: 'gpt-4o', fallbacks: ['selfhosted'] },
          { name: 'backup', provider: 'anthropic', upstream: 'claude-sonnet-4-5' },
          { name: 'cloud_only', provider: 'openai', upstream: 'gpt-4o-mini', fallbacks: ['backup'] },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('restricted: without the header the chain starts in the cloud (control)', async () => {
    await fake.reset();
    const r = await ask(gw, chat('cloud_first', 'hello', [SMALL]));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o']);
  });

  test('restricted: chain [cloud, self-hosted]: only the self-hosted model is called', async () => {
    await fake.reset();
    const r = await ask(gw, chat('cloud_first', 'patient record', [SMALL]), RESTRICTED);
    assert.equal(r.status, 200, r.text);
    // (a one-step chain names its provider in x-aperture-route, a longer one the model)
    assert.match(r.headers.get('x-aperture-route') || '', /^(selfhosted|vllm)\b/);
    assert.deepEqual((await calls()).map((c) => c.model), ['qwen2-vl-7b']);
  });

  test('restricted: the self-hosted model failing is an error, never a cloud call', async () => {
    await fake.reset();
    await fake.fault({ model: 'qwen2-vl-7b', status: 500, count: -1 });
    const r = await ask(gw, chat('cloud_first', 'patient record', [SMALL]), RESTRICTED);
    await fake.clearFaults();
    assert.ok(r.status === 502 || r.status === 503, `status ${r.status}: ${r.text}`);
    const models = (await calls()).map((c) => c.model);
    assert.ok(models.length >= 1 && models.every((m) => m === 'qwen2-vl-7b'), `upstream calls: ${models}`);
  });

  test('restricted: a chain with only cloud models: 403 and no upstream call at all', async () => {
    await fake.reset();
    const r = await ask(gw, chat('cloud_only', 'patient record', [SMALL]), RESTRICTED);
    assert.equal(r.status, 403, r.text);
    assert.ok(r.body?.error?.message, 'an error body that says why');
    assert.equal((await calls()).length, 0);
  });
});

// ---- tiering -----------------------------------------------------------------------------------

describe('tiering: cheap first, frontier when the answer fails the task\'s checks', () => {
  let gw;
  const TASK = { 'x-aperture-task': 'invoice_extraction' };
  const CHEAP_GOOD = { vendor: 'ACME Office Supply', invoice_number: 'INV-1001', date: '2024-03-15', total: '118.40' };
  const FRONTIER_GOOD = { vendor: 'ACME Office Supply', invoice_number: 'INV-1001', date: '2024-03-15', total: '118.40', by: 'frontier' };
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        retry: { max_attempts: 2, base_ms: 10, cap_ms: 20 },
        models: [
          { name: 'cheap', provider: 'openai', upstream: 'gpt-4o-mini' },
          { name: 'frontier', provider: 'anthropic', upstream: 'claude-opus-4-1' },
        ],
        tasks: [{ name: 'invoice_extraction', prompt: 'Extract vendor, invoice_number, date and total as JSON.', required: ['total'], json: true }],
        routes: [{ name: 'invoice-tiering', task: 'invoice_extraction', models: ['cheap', 'frontier'] }],
      },
    });
  });
  after(async () => gw?.stop());

  test('tiering: the cheap model answers all-null: the frontier model is called and its answer served', async () => {
    await fake.reset();
    await fake.fault([
      { model: 'gpt-4o-mini', all_null: true },
      { model: 'claude-opus-4-1', answer: JSON.stringify(FRONTIER_GOOD) },
    ]);
    const r = await ask(gw, chat('gpt-4o', 'extract', [SMALL]), TASK);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), 'invoice-tiering');
    assert.match(r.headers.get('x-aperture-route') || '', /^frontier/);
    assert.deepEqual(JSON.parse(r.body.choices[0].message.content), FRONTIER_GOOD);
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o-mini', 'claude-opus-4-1']);
    const m = await metrics(gw);
    assert.ok(metricValue(m, 'aperture_fallbacks_total', { from: 'cheap', to: 'frontier', reason: 'failed_checks' }) >= 1);
  });

  test('tiering: a required field (total) null is a failed check too', async () => {
    await fake.reset();
    await fake.fault([
      { model: 'gpt-4o-mini', answer: JSON.stringify({ ...CHEAP_GOOD, total: null }) },
      { model: 'claude-opus-4-1', answer: JSON.stringify(FRONTIER_GOOD) },
    ]);
    const r = await ask(gw, chat('gpt-4o', 'extract', [SMALL]), TASK);
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('x-aperture-route') || '', /^frontier/);
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o-mini', 'claude-opus-4-1']);
  });

  test('tiering: the cheap model answers well: the frontier model is never called', async () => {
    await fake.reset();
    await fake.fault({ model: 'gpt-4o-mini', answer: JSON.stringify(CHEAP_GOOD) });
    const r = await ask(gw, chat('gpt-4o', 'extract', [SMALL]), TASK);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-rule'), 'invoice-tiering');
    assert.match(r.headers.get('x-aperture-route') || '', /^cheap/);
    assert.deepEqual(JSON.parse(r.body.choices[0].message.content), CHEAP_GOOD);
    assert.deepEqual((await calls()).map((c) => c.model), ['gpt-4o-mini']);
  });
});

// ---- two-stage ---------------------------------------------------------------------------------

describe('two-stage: classify a thumbnail, run the full request for valuable classes only', () => {
  let gw;
  const BIG = png(1600, 1200);
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        models: [
          { name: 'classifier', provider: 'openai', upstream: 'classifier-mini' },
          { name: 'extractor', provider: 'openai', upstream: 'extractor-large' },
        ],
        routes: [
          {
            name: 'triage',
            min_images: 1,
            two_stage: { model: 'classifier', classes: ['invoice', 'receipt', 'photo'], valuable: ['invoice', 'receipt'] },
            models: ['extractor'],
          },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('two-stage: classified "photo": the answer is {"class":"photo"} and the extractor is never called', async () => {
    await fake.reset();
    await fake.fault({ model: 'classifier-mini', answer: 'photo' });
    const r = await ask(gw, chat('gpt-4o', 'extract the fields', [BIG]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-class'), 'photo');
    assert.equal(r.headers.get('x-aperture-rule'), 'triage');
    assert.deepEqual(JSON.parse(r.body.choices[0].message.content), { class: 'photo' });
    const cs = await calls();
    assert.deepEqual(cs.map((c) => c.model), ['classifier-mini']);
    assert.equal(cs[0].n_images, 1);
    assert.ok(longEdge(cs[0].images[0]) <= 512, `the classifier got ${cs[0].images[0].width}x${cs[0].images[0].height}`);
  });

  test('two-stage: classified "invoice": the extractor gets the full-size image, the classifier a thumbnail', async (t) => {
    await fake.reset();
    await fake.fault({ model: 'classifier-mini', answer: 'invoice' });
    const r = await ask(gw, chat('gpt-4o', 'extract the fields', [BIG]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-aperture-class'), 'invoice');
    assert.match(r.body.choices[0].message.content, /extractor-large/, 'the extractor\'s answer is served');
    const cs = await calls();
    assert.deepEqual(cs.map((c) => c.model), ['classifier-mini', 'extractor-large']);
    const [thumb, full] = cs.map((c) => c.images[0]);
    t.diagnostic(`classifier got ${thumb.width}x${thumb.height}, extractor ${full.width}x${full.height}`);
    assert.ok(thumb.width > 0 && full.width > 0, 'image sizes readable');
    assert.ok(longEdge(thumb) <= 512, `thumbnail ${thumb.width}x${thumb.height}`);
    assert.ok(longEdge(full) > 512 && longEdge(full) > longEdge(thumb), `full ${full.width}x${full.height}`);
  });
});

describe('two-stage: the classifier counts against its provider\'s limits', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        providers: providers({ name: 'cls-box', limits: { rpm: 1, queue: 0 } }),
        models: [
          { name: 'classifier', provider: 'cls-box', upstream: 'classifier-limited' },
          { name: 'extractor', provider: 'openai', upstream: 'extractor-large' },
        ],
        routes: [
          {
            name: 'triage',
            min_images: 1,
            two_stage: { model: 'classifier', classes: ['invoice', 'photo'], valuable: ['invoice'] },
            models: ['extractor'],
          },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('two-stage: no room for the classifier: the first stage is skipped, the full run answers', async () => {
    await fake.reset();
    await fake.fault({ model: 'classifier-limited', answer: 'photo', count: -1 });
    const first = await ask(gw, chat('gpt-4o', 'first', [SMALL]));
    assert.equal(first.status, 200, first.text);
    assert.equal(first.headers.get('x-aperture-class'), 'photo');
    // rpm 1 and no queue: the second classifier call has no room this minute.
    const second = await ask(gw, chat('gpt-4o', 'second', [SMALL]));
    assert.equal(second.status, 200, second.text);
    assert.equal(second.headers.get('x-aperture-class'), null);
    assert.match(second.body.choices[0].message.content, /extractor-large/);
    const cs = await calls();
    assert.deepEqual(cs.map((c) => c.model), ['classifier-limited', 'extractor-large']);
    await fake.clearFaults();
  });
});

// ---- load balancing ----------------------------------------------------------------------------

describe('load balancing across weighted deployments', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        providers: providers({ name: 'vllm-a' }, { name: 'vllm-b' }),
        retry: { max_attempts: 2, base_ms: 10, cap_ms: 20 },
        breaker: { consecutive_failures: 3, cooldown_ms: 30000, min_requests: 1000 },
        models: [
          {
            name: 'balanced',
            deployments: [
              { provider: 'vllm-a', upstream: 'heavy-vlm', weight: 3 },
              { provider: 'vllm-b', upstream: 'light-vlm', weight: 1 },
            ],
          },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('balancing: weights 3:1 split 200 requests roughly 3:1', async (t) => {
    await fake.reset();
    const rs = await pool(200, 10, (i) => ask(gw, chat('balanced', `request ${i}`)));
    assert.deepEqual(rs.filter((r) => r.status !== 200).map((r) => r.text), []);
    const heavy = (await calls('heavy-vlm')).length;
    const light = (await calls('light-vlm')).length;
    t.diagnostic(`heavy ${heavy}, light ${light}`);
    assert.equal(heavy + light, 200, `heavy ${heavy} + light ${light}`);
    assert.ok(heavy >= 120 && heavy <= 180, `heavy got ${heavy} of 200 (expected ~150)`);
  });

  test('balancing: with the heavy deployment\'s breaker open, everything goes to the other', async () => {
    await fake.reset();
    await fake.fault({ model: 'heavy-vlm', status: 500, count: -1 });
    let open = false;
    for (let i = 0; i < 40 && !open; i++) {
      await ask(gw, chat('balanced', `break heavy ${i}`));
      open = metricValue(await metrics(gw), 'aperture_breaker_state', { deployment: 'vllm-a/heavy-vlm' }) === 1;
    }
    assert.ok(open, 'the heavy deployment\'s breaker opened');
    const heavyBefore = (await calls('heavy-vlm')).length;
    const lightBefore = (await calls('light-vlm')).length;
    const rs = await pool(30, 5, (i) => ask(gw, chat('balanced', `after ${i}`)));
    await fake.clearFaults();
    assert.deepEqual(rs.filter((r) => r.status !== 200).map((r) => r.text), []);
    assert.equal((await calls('heavy-vlm')).length, heavyBefore, 'no call to the open deployment');
    assert.equal((await calls('light-vlm')).length, lightBefore + 30);
  });
});

// ---- provider limits ---------------------------------------------------------------------------

describe('per-provider limits', () => {
  let gw;
  before(async () => {
    gw = await startGateway(fake, {
      config: {
        providers: providers(
          { name: 'vllm-rl', limits: { rpm: 5, queue: 3, queue_timeout_ms: 1500 } },
          { name: 'vllm-mf', limits: { max_in_flight: 2 } },
        ),
        retry: { max_attempts: 1 },
        models: [
          { name: 'limited', provider: 'vllm-rl', upstream: 'rl-vlm' },
          { name: 'narrow', provider: 'vllm-mf', upstream: 'mf-vlm' },
        ],
      },
    });
  });
  after(async () => gw?.stop());

  test('limits: rpm 5 with a queue of 3: 12 at once -> 5 reach the upstream, 7 get 429 with Retry-After', async (t) => {
    await fake.reset();
    const all = Promise.all(Array.from({ length: 12 }, (_, i) => ask(gw, chat('limited', `burst ${i}`))));
    // While three wait in the queue, the gauge shows them.
    let depth, maxDepth = -1, settled = false;
    all.finally(() => (settled = true));
    while (!settled) {
      depth = metricValue(await metrics(gw), 'aperture_ratelimit_queue_depth', { provider: 'vllm-rl' });
      if (depth !== undefined) maxDepth = Math.max(maxDepth, depth);
      await sleep(50);
    }
    const rs = await all;
    t.diagnostic(`statuses ${rs.map((r) => r.status).join(',')}; deepest queue seen ${maxDepth}`);
    const ok = rs.filter((r) => r.status === 200);
    const limited = rs.filter((r) => r.status === 429);
    assert.equal(ok.length, 5, rs.map((r) => r.status).join(','));
    assert.equal(limited.length, 7, rs.map((r) => r.status).join(','));
    for (const r of limited) assert.ok(Number(r.headers.get('retry-after')) >= 1, `429 without Retry-After: ${r.text}`);
    await sleep(100);
    assert.equal((await calls('rl-vlm')).length, 5);
    assert.equal(maxDepth, 3, 'aperture_ratelimit_queue_depth{provider="vllm-rl"} showed the 3 waiting');
    assert.notEqual(metricValue(await metrics(gw), 'aperture_ratelimit_queue_depth', { provider: 'vllm-rl' }), undefined);
  });

  test('limits: max_in_flight 2: 8 slow requests all succeed, never more than 2 at the upstream at once', async (t) => {
    await fake.reset();
    await fake.fault({ model: 'mf-vlm', delay_ms: 300, count: -1 });
    const t0 = Date.now();
    const rs = await Promise.all(Array.from({ length: 8 }, (_, i) => ask(gw, chat('narrow', `slow ${i}`))));
    const took = Date.now() - t0;
    await fake.clearFaults();
    assert.deepEqual(rs.map((r) => r.status), Array(8).fill(200));
    const cs = await calls('mf-vlm');
    assert.equal(cs.length, 8);
    const most = Math.max(...cs.map((c) => c.in_flight));
    t.diagnostic(`at most ${most} in flight; 8 done in ${took} ms`);
    assert.ok(most <= 2, `${most} calls in flight at once`);
    // Four waves of 300 ms: the limit really held them back.
    assert.ok(took >= 1100, `all 8 done in ${took} ms`);
  });
});
