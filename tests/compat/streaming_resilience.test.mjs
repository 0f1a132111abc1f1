// Streaming and resilience, end to end against the fake upstream: where a stream fails decides
// what the gateway may do about it.
//   - Failed BEFORE any byte reached the client (a 503 on the first attempt): the attempt is
//     retried, or the chain falls through to the next step, and the client gets one complete
//     stream (OpenAI and Anthropic dialects, raw SSE and the official SDKs' streaming APIs).
//   - Broke AFTER bytes reached the client (the upstream cut the connection half-way, ended the
//     stream early, or sent an in-band error event): nothing is retried or fallen through (the
//     fake sees exactly one model request), and the client sees an error / a truncated stream,
//     never a second answer spliced onto the first.
//   - A streamed request to a chain ending in `review` whose model fails: an SSE stream whose
//     content is {"needs_review":true,"review_id":"rv_..."}, with x-aperture-review-id.
//
// Chain: primary (openai gpt-4o) -> backup (anthropic claude-sonnet-4-5); two attempts per step;
// breakers out of the way (thresholds far above what these cases cause). The fake writes its
// events 5 ms apart and applies truncate_stream / stream_error half-way through the events.

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startFake, startGateway } from './harness.mjs';
import { cannedAnswer } from '../fakes/fake_upstream.mjs';

const REVIEW_ID = /^rv_[0-9a-f]{24}$/;
const GPT = 'gpt-4o';
const CLAUDE = 'claude-sonnet-4-5';
const REVIEWED = 'gpt-4.1-mini';
const GPT_ANSWER = cannedAnswer('openai', GPT, 0);
const CLAUDE_ANSWER = cannedAnswer('anthropic', CLAUDE, 0);

let fake, gw;
before(async () => {
  fake = await startFake();
  gw = await startGateway(fake, {
    config: {
      retry: { max_attempts: 2, base_ms: 10, cap_ms: 50 },
      breaker: { consecutive_failures: 1000, min_requests: 1000 },
      models: [
        { name: 'primary', provider: 'openai', upstream: GPT, fallbacks: ['backup'] },
        { name: 'backup', provider: 'anthropic', upstream: CLAUDE },
        { name: 'reviewed', provider: 'openai', upstream: REVIEWED, fallbacks: ['review'] },
      ],
    },
  });
});
after(async () => {
  await gw?.stop();
  await fake?.stop();
});
beforeEach(() => fake.reset());

// ---- reading streams ------------------------------------------------------------------------------

/**
 * POST and read the response body as it arrives, keeping whatever came before an error.
 * Resolves to {status, headers, text, error} (error: the body read's failure, or null).
 */
async function postStream(path, body, headers = {}) {
  const r = await fetch(gw.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const dec = new TextDecoder();
  let text = '';
  let error = null;
  try {
    for await (const chunk of r.body) text += dec.decode(chunk, { stream: true });
  } catch (e) {
    error = e;
  }
  return { status: r.status, headers: r.headers, text, error };
}

/** SSE events: [{event, data}] (data parsed as JSON when it is; "[DONE]" kept as a string). */
function sseEvents(text) {
  const out = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    let event = null;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
    }
    if (!data.length) continue;
    const raw = data.join('\n');
    let parsed = raw;
    try {
      parsed = JSON.parse(raw);
    } catch {}
    out.push({ event, data: parsed });
  }
  return out;
}

/** An OpenAI-format stream: {content, done, chunks, errors, roles, ids, finish}. */
function openaiStream(text) {
  const evs = sseEvents(text);
  const chunks = evs.filter((e) => e.data && typeof e.data === 'object' && !e.data.error).map((e) => e.data);
  return {
    content: chunks.map((c) => c.choices?.[0]?.delta?.content ?? '').join(''),
    done: evs.some((e) => e.data === '[DONE]'),
    chunks,
    errors: evs.filter((e) => e.data?.error).map((e) => e.data.error),
    roles: chunks.filter((c) => c.choices?.[0]?.delta?.role).length,
    ids: new Set(chunks.map((c) => c.id)),
    finish: chunks.map((c) => c.choices?.[0]?.finish_reason).filter(Boolean),
  };
}

/** An Anthropic-format stream: {text, types, errors, starts}. */
function anthropicStream(text) {
  const evs = sseEvents(text).filter((e) => e.data && typeof e.data === 'object');
  return {
    text: evs
      .filter((e) => e.data.type === 'content_block_delta' && e.data.delta?.type === 'text_delta')
      .map((e) => e.data.delta.text)
      .join(''),
    types: evs.map((e) => e.data.type),
    errors: evs.filter((e) => e.data.type === 'error').map((e) => e.data.error),
    starts: evs.filter((e) => e.data.type === 'message_start').length,
  };
}

const chat = (model, text, extra = {}) => ({ model, stream: true, messages: [{ role: 'user', content: text }], ...extra });
const messages = (model, text) => ({ model, max_tokens: 128, stream: true, messages: [{ role: 'user', content: text }] });
const byModel = async () => {
  const n = {};
  for (const r of await fake.requests()) if (r.model) n[r.model] = (n[r.model] || 0) + 1;
  return n;
};
const route = (r) => (r.headers.get('x-aperture-route') || '').split(' ')[0];

// ---- failed before any byte: retried or fallen through, one complete stream ------------------------------

describe('a stream that fails before any byte is retried or falls through', () => {
  for (const passthrough of [false, true]) {
    const extra = passthrough ? { stream_options: { include_usage: true } } : {};
    const label = passthrough ? 'relayed byte for byte (stream_options set)' : 'translated';
    test(`openai dialect, ${label}: a 503 on the first attempt is retried; one complete stream`, async () => {
      await fake.fault({ model: GPT, status: 503, count: 1 });
      const r = await postStream('/v1/chat/completions', chat('primary', 'retry me', extra));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.error, null, `the body failed: ${r.error}`);
      assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
      assert.equal(route(r), 'primary');
      const s = openaiStream(r.text);
      assert.deepEqual(s.errors, [], 'the first attempt\'s error body leaked into the stream');
      assert.equal(s.content, GPT_ANSWER);
      assert.ok(s.done, 'ends with [DONE]');
      assert.deepEqual(s.finish, ['stop']);
      assert.equal(s.roles, 1, 'one assistant turn');
      assert.equal(s.ids.size, 1, 'every chunk from one answer');
      const recs = (await fake.requests()).filter((x) => x.model === GPT);
      assert.deepEqual(recs.map((x) => x.status), [503, 200], 'two attempts at gpt-4o: the 503, then the answer');
      assert.ok(recs.every((x) => x.body.stream === true), 'both attempts streamed upstream');
    });
  }

  test('openai dialect: both attempts at the primary fail (503): the backup answers, one complete stream', async () => {
    await fake.fault({ model: GPT, status: 503, count: 2 });
    const r = await postStream('/v1/chat/completions', chat('primary', 'fall through'));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.error, null, `the body failed: ${r.error}`);
    assert.equal(route(r), 'backup');
    const s = openaiStream(r.text);
    assert.deepEqual(s.errors, []);
    assert.equal(s.content, CLAUDE_ANSWER, 'the backup\'s answer, translated to OpenAI chunks');
    assert.ok(s.done, 'ends with [DONE]');
    assert.equal(s.roles, 1);
    assert.deepEqual(await byModel(), { [GPT]: 2, [CLAUDE]: 1 });
  });

  test('anthropic dialect: a 503 on the first attempt (anthropic upstream) is retried; one complete stream', async () => {
    await fake.fault({ model: CLAUDE, status: 503, count: 1 });
    const r = await postStream('/v1/messages', messages('backup', 'retry me'));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.error, null, `the body failed: ${r.error}`);
    const s = anthropicStream(r.text);
    assert.deepEqual(s.errors, []);
    assert.equal(s.text, CLAUDE_ANSWER);
    assert.equal(s.starts, 1, 'one message_start');
    assert.equal(s.types.at(-1), 'message_stop', `ends with message_stop: ${s.types.join(',')}`);
    assert.deepEqual(await byModel(), { [CLAUDE]: 2 });
  });

  test('anthropic dialect: the primary (openai upstream) fails twice: the backup answers, one complete stream', async () => {
    await fake.fault({ model: GPT, status: 503, count: 2 });
    const r = await postStream('/v1/messages', messages('primary', 'fall through'));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.error, null, `the body failed: ${r.error}`);
    assert.equal(route(r), 'backup');
    const s = anthropicStream(r.text);
    assert.deepEqual(s.errors, []);
    assert.equal(s.text, CLAUDE_ANSWER);
    assert.equal(s.starts, 1, 'one message_start');
    assert.equal(s.types.at(-1), 'message_stop');
    assert.deepEqual(await byModel(), { [GPT]: 2, [CLAUDE]: 1 });
  });

  test('the openai sdk\'s streaming API: a 503 on the first attempt is invisible to it', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    await fake.fault({ model: GPT, status: 503, count: 1 });
    const stream = await client.chat.completions.create(chat('primary', 'sdk, retried'));
    let text = '';
    let finish = null;
    for await (const c of stream) {
      text += c.choices[0]?.delta?.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, GPT_ANSWER);
    assert.equal(finish, 'stop');
    assert.deepEqual(await byModel(), { [GPT]: 2 });

    // And falling through to the backup, with the sdk's stream helper.
    await fake.reset();
    await fake.fault({ model: GPT, status: 503, count: 2 });
    const runner = client.chat.completions.stream({ model: 'primary', messages: [{ role: 'user', content: 'sdk, fallen through' }] });
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, CLAUDE_ANSWER);
    assert.deepEqual(await byModel(), { [GPT]: 2, [CLAUDE]: 1 });
  });

  test('the anthropic sdk\'s streaming API: a 503 on the first attempt is invisible to it', async () => {
    const client = new Anthropic({ baseURL: gw.url, apiKey: 'unused', maxRetries: 0 });
    await fake.fault({ model: CLAUDE, status: 503, count: 1 });
    const stream = client.messages.stream({ model: 'backup', max_tokens: 128, messages: [{ role: 'user', content: 'sdk, retried' }] });
    let text = '';
    stream.on('text', (t) => (text += t));
    const final = await stream.finalMessage();
    assert.equal(text, CLAUDE_ANSWER);
    assert.equal(final.stop_reason, 'end_turn');
    assert.deepEqual(await byModel(), { [CLAUDE]: 2 });
  });
});

// ---- broken after bytes reached the client: not retried, an error, not a second answer -------------------

/** Common checks on an OpenAI-dialect stream that broke half-way. */
function assertBrokenOpenai(r, s, why) {
  assert.equal(r.status, 200, 'the stream had begun: its status was already sent');
  assert.ok(s.content.length > 0, `${why}: some content reached the client before the break`);
  assert.ok(GPT_ANSWER.startsWith(s.content) && s.content !== GPT_ANSWER, `${why}: the content is a strict prefix of the one answer: ${JSON.stringify(s.content)}`);
  assert.equal(s.roles, 1, `${why}: one assistant turn (no second answer)`);
  assert.equal(s.ids.size, 1, `${why}: every chunk from one upstream answer`);
  assert.equal(s.done, false, `${why}: a broken stream must not end with [DONE]`);
  assert.deepEqual(s.finish, [], `${why}: no finish_reason`);
}

describe('a stream that breaks after bytes reached the client is not retried', () => {
  const FAULTS = [
    { name: 'connection cut half-way', fault: { truncate_stream: true } },
    { name: 'stream ended early without its final events', fault: { truncate_stream: 'clean' } },
    { name: 'in-band error event half-way', fault: { stream_error: true } },
  ];
  for (const passthrough of [false, true]) {
    const extra = passthrough ? { stream_options: { include_usage: true } } : {};
    const label = passthrough ? 'relayed' : 'translated';
    for (const { name, fault } of FAULTS) {
      test(`openai dialect, ${label}: ${name}: one upstream request, a broken stream`, async (t) => {
        await fake.fault({ model: GPT, ...fault, count: 1 });
        const r = await postStream('/v1/chat/completions', chat('primary', `break me: ${name}`, extra));
        const s = openaiStream(r.text);
        t.diagnostic(`told by: ${r.error ? `body error (${r.error.cause?.code || r.error.message})` : 'clean end'}; error objects: ${JSON.stringify(s.errors)}`);
        assertBrokenOpenai(r, s, name);
        // The client is told: the body read fails, or an error object arrives in the stream.
        assert.ok(r.error || s.errors.length > 0, `${name}: the client was not told the stream failed:\n${r.text.slice(-400)}`);
        await new Promise((res) => setTimeout(res, 150)); // room for a (wrong) retry to show up
        assert.deepEqual(await byModel(), { [GPT]: 1 }, `${name}: no retry and no fallback after bytes were sent`);
      });
    }
  }

  for (const { name, fault } of FAULTS) {
    test(`anthropic dialect (anthropic upstream): ${name}: one upstream request, an error event, no message_stop`, async (t) => {
      await fake.fault({ model: CLAUDE, ...fault, count: 1 });
      const r = await postStream('/v1/messages', messages('backup', `break me: ${name}`));
      assert.equal(r.status, 200);
      const s = anthropicStream(r.text);
      t.diagnostic(`told by: ${r.error ? `body error (${r.error.cause?.code || r.error.message})` : 'clean end'}; error events: ${JSON.stringify(s.errors)}`);
      assert.ok(s.text.length > 0 && CLAUDE_ANSWER.startsWith(s.text) && s.text !== CLAUDE_ANSWER, `${name}: a strict prefix: ${JSON.stringify(s.text)}`);
      assert.equal(s.starts, 1, `${name}: one message_start (no second answer)`);
      assert.ok(!s.types.includes('message_stop'), `${name}: a broken stream must not end with message_stop: ${s.types.join(',')}`);
      assert.ok(r.error || s.errors.length > 0, `${name}: the client was not told:\n${r.text.slice(-400)}`);
      await new Promise((res) => setTimeout(res, 150));
      assert.deepEqual(await byModel(), { [CLAUDE]: 1 }, `${name}: no retry after bytes were sent`);
    });
  }

  test('anthropic dialect (openai upstream, primary): connection cut half-way: no retry, no fallback to the backup', async () => {
    await fake.fault({ model: GPT, truncate_stream: true, count: 1 });
    const r = await postStream('/v1/messages', messages('primary', 'break me across dialects'));
    assert.equal(r.status, 200);
    const s = anthropicStream(r.text);
    assert.ok(s.text.length > 0 && GPT_ANSWER.startsWith(s.text) && s.text !== GPT_ANSWER, `a strict prefix: ${JSON.stringify(s.text)}`);
    assert.equal(s.starts, 1);
    assert.ok(!s.types.includes('message_stop'), s.types.join(','));
    assert.ok(r.error || s.errors.length > 0, 'the client was told');
    await new Promise((res) => setTimeout(res, 150));
    assert.deepEqual(await byModel(), { [GPT]: 1 });
  });

  test('the openai sdk\'s streaming API: a cut stream throws (after a prefix), and nothing was retried', async (t) => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    for (const fault of [{ truncate_stream: true }, { stream_error: true }]) {
      await fake.reset();
      await fake.fault({ model: GPT, ...fault, count: 1 });
      let text = '';
      let thrown = null;
      let finish = null;
      try {
        const stream = await client.chat.completions.create(chat('primary', `sdk, broken ${JSON.stringify(fault)}`));
        for await (const c of stream) {
          text += c.choices[0]?.delta?.content ?? '';
          finish = c.choices[0]?.finish_reason ?? finish;
        }
      } catch (e) {
        thrown = e;
      }
      t.diagnostic(`${JSON.stringify(fault)}: the sdk threw ${thrown?.constructor?.name}: ${String(thrown?.message).slice(0, 120)}`);
      assert.ok(thrown, `${JSON.stringify(fault)}: the sdk finished a broken stream without an error (text ${JSON.stringify(text)}, finish ${finish})`);
      assert.ok(text.length > 0 && GPT_ANSWER.startsWith(text) && text !== GPT_ANSWER, `${JSON.stringify(fault)}: a strict prefix: ${JSON.stringify(text)}`);
      assert.equal(finish, null);
      assert.deepEqual(await byModel(), { [GPT]: 1 });
    }
  });
});

// ---- a chain ending in review, streamed --------------------------------------------------------------

describe('a streamed request whose chain ends in review', () => {
  test('openai dialect: an SSE stream carrying {"needs_review":true,"review_id":"rv_..."} and x-aperture-review-id', async (t) => {
    await fake.fault({ model: REVIEWED, status: 500, count: -1 });
    const r = await postStream('/v1/chat/completions', chat('reviewed', 'read this for me'));
    t.diagnostic(`status ${r.status}`);
    assert.ok(r.status === 200 || r.status === 202, `status ${r.status}: ${r.text}`);
    assert.equal(r.error, null);
    assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
    const rid = r.headers.get('x-aperture-review-id');
    assert.match(rid || '', REVIEW_ID, `x-aperture-review-id: ${rid}`);
    const s = openaiStream(r.text);
    assert.ok(s.done, 'ends with [DONE]');
    assert.deepEqual(JSON.parse(s.content), { needs_review: true, review_id: rid });
    assert.equal(s.roles, 1);
    assert.equal((await byModel())[REVIEWED], 2, 'the model was tried (both attempts) before review');
  });

  test('anthropic dialect: an SSE stream whose text is the review item', async () => {
    await fake.fault({ model: REVIEWED, status: 500, count: -1 });
    const r = await postStream('/v1/messages', messages('reviewed', 'read this for me'));
    assert.ok(r.status === 200 || r.status === 202, `status ${r.status}: ${r.text}`);
    assert.equal(r.error, null);
    assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
    const rid = r.headers.get('x-aperture-review-id');
    assert.match(rid || '', REVIEW_ID);
    const s = anthropicStream(r.text);
    assert.deepEqual(s.errors, []);
    assert.deepEqual(JSON.parse(s.text), { needs_review: true, review_id: rid });
    assert.equal(s.types.at(-1), 'message_stop');
  });

  test('the openai sdk\'s streaming API reads the review item as the assistant text', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    await fake.fault({ model: REVIEWED, status: 500, count: -1 });
    const { data: stream, response } = await client.chat.completions.create(chat('reviewed', 'sdk, to review')).withResponse();
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
    const rid = response.headers.get('x-aperture-review-id');
    assert.match(rid || '', REVIEW_ID);
    assert.deepEqual(JSON.parse(text), { needs_review: true, review_id: rid });
  });
});
