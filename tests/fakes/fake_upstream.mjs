#!/usr/bin/env node
// fake_upstream.mjs - a fake model provider for aperture's tests (node:http, no dependencies).
//
// Speaks three wire formats, plain and streamed, with canned answers and realistic usage:
//   POST /v1/chat/completions, /chat/completions            OpenAI Chat Completions (SSE: data: chunks, [DONE])
//   POST /v1/messages                                       Anthropic Messages (SSE: message_start .. message_stop)
//   POST /v1beta/models/{model}:generateContent             Gemini
//   POST /v1beta/models/{model}:streamGenerateContent       Gemini stream (?alt=sse: SSE, else a JSON array)
// Records every request it serves (control endpoints excepted):
//   GET  /__requests[?path=PREFIX][&model=NAME]
//                                    [{seq, time, done_time, method, path, pathname, query, headers,
//                                      auth_present, auth_headers, body (parsed JSON or null), body_bytes,
//                                      body_text (non-JSON, first 4 KiB), sent_bytes, aborted, model,
//                                      n_images, images, status, fault, in_flight}]; auth header values
//                                      are never stored
//     time / done_time: ms since the epoch when the body had been read / the exchange ended (null
//       while it runs); model: the body's "model" or, for Gemini, the one in the path (null
//       otherwise); images: per image part, in order, {source: "data"|"url"|"file", media_type,
//       bytes, width, height} for inline data (dimensions from the PNG/JPEG/GIF/WebP header, 0
//       when unknown) or {source: "url", url} for a link; status: the HTTP status answered (0 for a
//       dropped connection or a client that left first); fault: the fault applied (its spec
//       without count/rate) or null; in_flight: model requests being served when this one
//       started, itself included.
//   POST /__reset                    clear the records and the faults
// Injects faults, per request:
//   POST /__faults {path?, model?, status?, retry_after?, retry_after_ms?, message?, delay_ms?,
//                   malformed_json?, truncate_stream?, drop?, stream_error?, answer?, all_null?,
//                   count?, rate?}   (count: requests affected, default 1, -1 = all; rate: probability
//                   that a matching request is affected; path: a prefix of the path; model: only
//                   requests for exactly this model, as recorded above)
//   GET /__faults lists the pending faults, DELETE /__faults clears them. The first pending fault
//   that matches a request applies (one per request).
//   or a request header  x-fake-fault: {"status":429,"retry_after":3}  (JSON) or  status=429,retry_after=3
//   status: answer with that status and an error body in the endpoint's format (plus Retry-After when
//   retry_after is given, and OpenAI's retry-after-ms when retry_after_ms is); delay_ms: wait first
//   (alone: a slow but normal answer; longer than the caller's timeout: a timeout, and nothing is
//   written once the caller has gone); malformed_json: a 200 whose JSON (or, streamed, one event's
//   data) is broken; truncate_stream: stop half-way and cut the connection (a non-streamed body is
//   cut short of its Content-Length; "clean" ends the stream without its final events instead);
//   drop: close the connection without answering; stream_error: an in-band error event half-way
//   (Anthropic "event: error", OpenAI/Gemini an error object) then the end; answer: a 200 whose
//   assistant text is exactly this string (every format, plain and streamed); all_null: a 200 whose
//   assistant text is a JSON object with every field null ({"vendor":null,"invoice_number":null,
//   "date":null,"total":null}; or name the fields: all_null: ["a","b"]), the answer of a model that
//   found nothing.
// Serves what image fetching is tested against:
//   GET /img/<path>             files under --corpus DIR, or --image NAME=FILE; /img/gen.png?w=&h= is generated
//   GET /redirect?to=URL[&status=302]
//   GET /slow[?interval_ms=100][&hold=1]   JPEG-looking bytes, one every interval (hold: no headers at all)
//   GET /big[?length=N]                     an endless image/jpeg body (or exactly N bytes with Content-Length)
//
// Usage: node fake_upstream.mjs [--port 0] [--host 127.0.0.1] [--corpus DIR] [--image NAME=FILE]...
//                               [--require-auth] [--chunk-delay-ms 5]
// Prints "listening PORT" on stdout once it accepts connections. Importable too: startFakeUpstream().

import { createServer } from 'node:http';
import { readFileSync, statSync, realpathSync } from 'node:fs';
import { resolve, extname, sep } from 'node:path';
import { deflateSync } from 'node:zlib';
import { pathToFileURL } from 'node:url';

const AUTH_HEADERS = ['authorization', 'x-api-key', 'x-goog-api-key', 'api-key', 'proxy-authorization'];
const MAX_BODY = 256 << 20;

const MEDIA = {
  '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp',
  '.gif': 'image/gif', '.bmp': 'image/bmp', '.tif': 'image/tiff', '.tiff': 'image/tiff',
  '.heic': 'image/heic', '.avif': 'image/avif', '.pdf': 'application/pdf',
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- canned answers ------------------------------------------------------------------------------

/** The answer the fake gives: deterministic, so tests can compare it word for word. */
export function cannedAnswer(provider, model, nImages, json = false) {
  if (json)
    return JSON.stringify({ fake: true, provider, model, images: nImages, answer: 'a canned answer' });
  return `This is the fake ${provider} upstream answering for ${model}: I received ${nImages} image(s).`;
}

/** Split text into stream pieces the way providers do: a few characters to a few words each. */
export function pieces(text) {
  const out = text.match(/\S+\s*|\s+/g) || [''];
  const merged = [];
  for (let i = 0; i < out.length; i += 2) merged.push(out.slice(i, i + 2).join(''));
  return merged;
}

// Rough but stable usage numbers: a text token per 4 characters, a flat 85 per image.
function promptTokens(body, nImages) {
  const s = JSON.stringify(body || {}).replace(/"data:[^"]*"|"data":"[^"]*"/g, '""');
  return Math.ceil(s.length / 4) + 85 * nImages;
}
const completionTokens = (text) => Math.max(1, Math.ceil(text.length / 4));

function countImages(kind, body) {
  let n = 0;
  const visit = (v) => {
    if (Array.isArray(v)) return v.forEach(visit);
    if (!v || typeof v !== 'object') return;
    if (kind === 'openai' && (v.type === 'image_url' || v.type === 'input_image')) n++;
    else if (kind === 'anthropic' && v.type === 'image') n++;
    else if (kind === 'gemini' && (v.inline_data || v.inlineData || v.file_data || v.fileData)) n++;
    for (const k of Object.keys(v)) if (typeof v[k] === 'object') visit(v[k]);
  };
  visit(kind === 'gemini' ? body?.contents : body?.messages);
  return n;
}

function wantsJson(kind, body) {
  if (kind === 'openai') return ['json_object', 'json_schema'].includes(body?.response_format?.type);
  if (kind === 'gemini') {
    const g = body?.generationConfig || body?.generation_config || {};
    return (g.responseMimeType || g.response_mime_type) === 'application/json';
  }
  const sys = typeof body?.system === 'string' ? body.system : JSON.stringify(body?.system || '');
  return /\bjson\b/i.test(sys);
}

/** Width and height from an image's header (PNG, JPEG, GIF, WebP); zeros when unknown. */
export function imageSize(buf) {
  const none = { width: 0, height: 0 };
  if (!buf || buf.length < 24) return none;
  if (buf.readUInt32BE(0) === 0x89504e47) return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
  if (buf.toString('latin1', 0, 4) === 'GIF8') return { width: buf.readUInt16LE(6), height: buf.readUInt16LE(8) };
  if (buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') {
    const fmt = buf.toString('latin1', 12, 16);
    if (fmt === 'VP8X' && buf.length >= 30) return { width: 1 + buf.readUIntLE(24, 3), height: 1 + buf.readUIntLE(27, 3) };
    if (fmt === 'VP8 ' && buf.length >= 30) return { width: buf.readUInt16LE(26) & 0x3fff, height: buf.readUInt16LE(28) & 0x3fff };
    if (fmt === 'VP8L' && buf.length >= 25) {
      const b = buf.readUInt32LE(21);
      return { width: 1 + (b & 0x3fff), height: 1 + ((b >>> 14) & 0x3fff) };
    }
    return none;
  }
  if (buf[0] !== 0xff || buf[1] !== 0xd8) return none;
  let i = 2;
  while (i + 9 < buf.length) {
    if (buf[i] !== 0xff) return none;
    const m = buf[i + 1];
    if (m === 0xff) {
      i++;
      continue;
    }
    if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2;
      continue;
    }
    if (m === 0xd9 || m === 0xda) return none;
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc)
      return { width: buf.readUInt16BE(i + 7), height: buf.readUInt16BE(i + 5) };
    i += 2 + buf.readUInt16BE(i + 2);
  }
  return none;
}

function inlineImage(source, mediaType, b64) {
  const buf = Buffer.from(String(b64 || ''), 'base64');
  return { source, media_type: mediaType || null, bytes: buf.length, ...imageSize(buf) };
}

/** Every image part of a request body, in order, in any of the three formats (see the header). */
export function requestImages(body) {
  const out = [];
  const visit = (v) => {
    if (Array.isArray(v)) return v.forEach(visit);
    if (!v || typeof v !== 'object') return;
    if (v.type === 'image_url' || v.type === 'input_image') {
      const url = typeof v.image_url === 'string' ? v.image_url : v.image_url?.url;
      const m = /^data:([^;,]+)?(;base64)?,/.exec(url || '');
      out.push(m ? inlineImage('data', m[1], url.slice(m[0].length)) : { source: 'url', url: url ?? null });
      return;
    }
    if (v.type === 'image' && v.source && typeof v.source === 'object') {
      if (v.source.type === 'base64') out.push(inlineImage('data', v.source.media_type, v.source.data));
      else out.push({ source: 'url', url: v.source.url ?? null });
      return;
    }
    const inl = v.inline_data || v.inlineData;
    if (inl && typeof inl === 'object') {
      out.push(inlineImage('data', inl.mime_type || inl.mimeType, inl.data));
      return;
    }
    const fd = v.file_data || v.fileData;
    if (fd && typeof fd === 'object') {
      out.push({ source: 'file', url: fd.file_uri || fd.fileUri || null });
      return;
    }
    for (const k of Object.keys(v)) if (typeof v[k] === 'object') visit(v[k]);
  };
  visit(body?.messages ?? body?.contents ?? null);
  return out;
}

/** The JSON text of an object whose every field is null: what a model that found nothing says. */
export const ALL_NULL_FIELDS = ['vendor', 'invoice_number', 'date', 'total'];
export function allNullAnswer(fields) {
  const names = Array.isArray(fields) && fields.length ? fields : ALL_NULL_FIELDS;
  return JSON.stringify(Object.fromEntries(names.map((n) => [String(n), null])));
}

/** The assistant text a fault imposes (answer, all_null), or null for the canned one. */
function faultText(fault) {
  if (fault?.answer !== undefined && fault.answer !== null && fault.answer !== false) return String(fault.answer);
  if (fault?.all_null) return allNullAnswer(fault.all_null);
  return null;
}

// ---- error bodies, per format ----------------------------------------------------------------------

const ANTHROPIC_ERR = {
  400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error',
  404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error', 500: 'api_error',
  503: 'overloaded_error', 529: 'overloaded_error',
};
const GEMINI_STATUS = {
  400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND',
  429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED',
};

function errorBody(kind, status, message) {
  if (kind === 'anthropic')
    return {
      type: 'error',
      error: { type: ANTHROPIC_ERR[status] || (status >= 500 ? 'api_error' : 'invalid_request_error'), message },
      request_id: 'req_fake',
    };
  if (kind === 'gemini')
    return { error: { code: status, message, status: GEMINI_STATUS[status] || (status >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION') } };
  const type = status === 429 ? 'requests' : status >= 500 ? 'server_error' : 'invalid_request_error';
  const code = status === 429 ? 'rate_limit_exceeded' : status === 404 ? 'model_not_found' : null;
  return { error: { message, type, param: null, code } };
}

// ---- a tiny PNG encoder for generated images ----------------------------------------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
/** A w x h RGB gradient PNG. */
export function generatePng(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1);
    raw[row] = 0;
    for (let x = 0; x < w; x++) {
      const o = row + 1 + x * 3;
      raw[o] = (x * 255) / Math.max(1, w - 1);
      raw[o + 1] = (y * 255) / Math.max(1, h - 1);
      raw[o + 2] = ((x + y) * 7) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---- fault specs ----------------------------------------------------------------------------------------

/** Parse an x-fake-fault header: JSON, or "k=v,k=v" (numbers and true/false converted). */
export function parseFaultHeader(v) {
  v = String(v).trim();
  if (v.startsWith('{')) return JSON.parse(v);
  const f = {};
  for (const kv of v.split(/[,;]/)) {
    const [k, ...rest] = kv.split('=');
    if (!k.trim()) continue;
    const s = rest.join('=').trim();
    f[k.trim()] = s === '' || s === 'true' ? true : s === 'false' ? false : /^-?\d+$/.test(s) ? Number(s) : s;
  }
  return f;
}

// ---- the server ------------------------------------------------------------------------------------------

/**
 * Start the fake. opts: {port=0, host='127.0.0.1', corpus, images: {name: file}, requireAuth=false,
 * chunkDelayMs=5}. Resolves to {server, port, url, close()}.
 */
export function startFakeUpstream(opts = {}) {
  const host = opts.host || '127.0.0.1';
  const corpus = opts.corpus ? realpathSync(opts.corpus) : null;
  const images = opts.images || {};
  const chunkDelayMs = opts.chunkDelayMs ?? 5;
  const requests = [];
  let faults = [];
  let seq = 0;
  let inFlight = 0;
  const sockets = new Set();

  function takeFault(req, pathname, model) {
    const h = req.headers['x-fake-fault'];
    if (h) return parseFaultHeader(h);
    // A fault with `rate` (0..1) hits each matching request with that probability (chaos runs,
    // usually with count -1); without it, every matching request until count runs out. `model`
    // narrows a fault to one upstream model (one deployment of a chain, one tier).
    const i = faults.findIndex(
      (f) =>
        (!f.path || pathname.startsWith(f.path)) &&
        (f.model === undefined || f.model === model) &&
        (f.rate === undefined || Math.random() < f.rate),
    );
    if (i < 0) return null;
    const f = faults[i];
    if (f.count > 0 && --f.count === 0) faults.splice(i, 1);
    return f;
  }

  function record(req, url, raw) {
    const headers = {};
    const authHeaders = [];
    for (const [k, v] of Object.entries(req.headers)) {
      if (AUTH_HEADERS.includes(k)) {
        authHeaders.push(k);
        headers[k] = '[redacted]';
      } else headers[k] = v;
    }
    const query = Object.fromEntries(url.searchParams);
    if ('key' in query) {
      authHeaders.push('?key');
      query.key = '[redacted]';
    }
    let body = null;
    let text;
    if (raw.length) {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch {
        text = raw.subarray(0, 4096).toString('latin1');
      }
    }
    const search = new URLSearchParams(query).toString();
    const gm = url.pathname.match(/^\/v1(?:beta)?\/models\/([^/:]+):/);
    const model = typeof body?.model === 'string' ? body.model : gm ? decodeURIComponent(gm[1]) : null;
    const imgs = body && typeof body === 'object' ? requestImages(body) : [];
    const rec = {
      seq: ++seq,
      time: Date.now(),
      done_time: null,
      method: req.method,
      path: url.pathname + (search ? '?' + search : ''),
      pathname: url.pathname,
      query,
      headers,
      auth_present: authHeaders.length > 0,
      auth_headers: authHeaders,
      body,
      body_bytes: raw.length,
      sent_bytes: 0,
      aborted: false,
      model,
      n_images: imgs.length,
      images: imgs,
      status: null,
      fault: null,
      in_flight: 0,
    };
    if (text !== undefined) rec.body_text = text;
    requests.push(rec);
    return rec;
  }

  function sendJson(res, status, obj, headers = {}) {
    const s = JSON.stringify(obj);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers });
    res.end(s);
  }

  function readBody(req) {
    return new Promise((resolveBody, reject) => {
      const parts = [];
      let n = 0;
      req.on('data', (c) => {
        n += c.length;
        if (n > MAX_BODY) {
          reject(new Error('body too large'));
          req.destroy();
          return;
        }
        parts.push(c);
      });
      req.on('end', () => resolveBody(Buffer.concat(parts)));
      req.on('error', reject);
    });
  }

  // -- control endpoints --

  async function control(req, res, url) {
    if (url.pathname === '/__requests' && req.method === 'GET') {
      const p = url.searchParams.get('path');
      const m = url.searchParams.get('model');
      return sendJson(res, 200, requests.filter((r) => (!p || r.pathname.startsWith(p)) && (m === null || r.model === m)));
    }
    if (url.pathname === '/__reset' && req.method === 'POST') {
      await readBody(req);
      requests.length = 0;
      faults = [];
      return sendJson(res, 200, { ok: true });
    }
    if (url.pathname === '/__faults') {
      if (req.method === 'GET') return sendJson(res, 200, faults);
      if (req.method === 'DELETE') {
        faults = [];
        return sendJson(res, 200, { ok: true });
      }
      if (req.method === 'POST') {
        let spec;
        try {
          spec = JSON.parse((await readBody(req)).toString('utf8') || '{}');
        } catch (e) {
          return sendJson(res, 400, { error: `fault spec is not JSON: ${e.message}` });
        }
        for (const f of Array.isArray(spec) ? spec : [spec]) faults.push({ ...f, count: f.count ?? 1 });
        return sendJson(res, 200, { ok: true, faults });
      }
    }
    return sendJson(res, 404, { error: `no control endpoint ${req.method} ${url.pathname}` });
  }

  // -- model endpoints --

  // Write SSE events (strings) with a small gap, honouring truncate/stream_error faults.
  async function sendEvents(res, rec, events, fault, errorEvent) {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-request-id': `req_fake_${rec.seq}`,
    });
    const half = Math.max(1, Math.floor(events.length / 2));
    for (let i = 0; i < events.length; i++) {
      if (res.destroyed) return;
      if (fault?.truncate_stream && i === half) {
        if (fault.truncate_stream === 'clean') return res.end();
        return res.socket?.destroy();
      }
      if (fault?.stream_error && i === half) {
        res.write(errorEvent);
        rec.sent_bytes += errorEvent.length;
        return res.end();
      }
      res.write(events[i]);
      rec.sent_bytes += events[i].length;
      if (chunkDelayMs) await sleep(chunkDelayMs);
    }
    res.end();
  }

  function sendBody(res, rec, obj, fault, headers = {}) {
    let s = JSON.stringify(obj);
    if (fault?.malformed_json) s = s.slice(0, Math.floor(s.length / 2)) + '<<not json';
    const buf = Buffer.from(s);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': buf.length, 'x-request-id': `req_fake_${rec.seq}`, ...headers });
    if (fault?.truncate_stream) {
      res.write(buf.subarray(0, buf.length >> 1));
      rec.sent_bytes = buf.length >> 1;
      setTimeout(() => res.socket?.destroy(), 20);
      return;
    }
    rec.sent_bytes = buf.length;
    res.end(buf);
  }

  function openai(req, res, rec, fault) {
    const b = rec.body || {};
    const model = b.model || 'unknown';
    const n = countImages('openai', b);
    const text = faultText(fault) ?? cannedAnswer('openai', model, n, wantsJson('openai', b));
    const pt = promptTokens(b, n);
    const ct = completionTokens(text);
    const usage = {
      prompt_tokens: pt, completion_tokens: ct, total_tokens: pt + ct,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    };
    const id = `chatcmpl-fake${rec.seq}`;
    const created = Math.floor(Date.now() / 1000);
    if (!b.stream)
      return sendBody(res, rec, {
        id, object: 'chat.completion', created, model,
        choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null, annotations: [] }, logprobs: null, finish_reason: 'stop' }],
        usage, service_tier: 'default', system_fingerprint: 'fp_fake',
      }, fault);
    const withUsage = !!b.stream_options?.include_usage;
    const chunk = (choices, extra = {}) => ({
      id, object: 'chat.completion.chunk', created, model, service_tier: 'default', system_fingerprint: 'fp_fake',
      choices, ...(withUsage ? { usage: null } : {}), ...extra,
    });
    const chunks = [chunk([{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }])];
    for (const p of pieces(text)) chunks.push(chunk([{ index: 0, delta: { content: p }, logprobs: null, finish_reason: null }]));
    chunks.push(chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }]));
    if (withUsage) chunks.push(chunk([], { usage }));
    const events = chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`);
    if (fault?.malformed_json) events[1] = 'data: {"id":"chatcmpl-broken","choices":[{"delta":\n\n';
    events.push('data: [DONE]\n\n');
    const err = `data: ${JSON.stringify({ error: { message: 'fake openai: stream interrupted', type: 'server_error', param: null, code: null } })}\n\n`;
    return sendEvents(res, rec, events, fault, err);
  }

  function anthropic(req, res, rec, fault) {
    const b = rec.body || {};
    const model = b.model || 'unknown';
    const n = countImages('anthropic', b);
    const text = faultText(fault) ?? cannedAnswer('anthropic', model, n, wantsJson('anthropic', b));
    const it = promptTokens(b, n);
    const ot = completionTokens(text);
    const id = `msg_fake${rec.seq}`;
    if (!b.stream)
      return sendBody(res, rec, {
        id, type: 'message', role: 'assistant', model,
        content: [{ type: 'text', text }],
        stop_reason: 'end_turn', stop_sequence: null,
        usage: { input_tokens: it, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: ot, service_tier: 'standard' },
      }, fault, { 'request-id': `req_fake_${rec.seq}` });
    const ev = (name, data) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
    const events = [
      ev('message_start', {
        type: 'message_start',
        message: {
          id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null,
          usage: { input_tokens: it, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 1, service_tier: 'standard' },
        },
      }),
      ev('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
      ev('ping', { type: 'ping' }),
    ];
    for (const p of pieces(text))
      events.push(ev('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: p } }));
    events.push(ev('content_block_stop', { type: 'content_block_stop', index: 0 }));
    events.push(ev('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: ot } }));
    events.push(ev('message_stop', { type: 'message_stop' }));
    if (fault?.malformed_json) events[3] = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":\n\n';
    const err = ev('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
    return sendEvents(res, rec, events, fault, err);
  }

  function gemini(req, res, rec, fault, model, stream, sse) {
    const b = rec.body || {};
    const n = countImages('gemini', b);
    const text = faultText(fault) ?? cannedAnswer('gemini', model, n, wantsJson('gemini', b));
    const pt = promptTokens(b, n);
    const ct = completionTokens(text);
    const usage = { promptTokenCount: pt, candidatesTokenCount: ct, totalTokenCount: pt + ct, promptTokensDetails: [{ modality: 'TEXT', tokenCount: pt }] };
    const responseId = `fake${rec.seq}`;
    if (!stream)
      return sendBody(res, rec, {
        candidates: [{ content: { parts: [{ text }], role: 'model' }, finishReason: 'STOP', index: 0 }],
        usageMetadata: usage, modelVersion: model, responseId,
      }, fault);
    const ps = pieces(text);
    const chunks = ps.map((p, i) => {
      const last = i === ps.length - 1;
      return {
        candidates: [{ content: { parts: [{ text: p }], role: 'model' }, ...(last ? { finishReason: 'STOP' } : {}), index: 0 }],
        usageMetadata: last ? usage : { promptTokenCount: pt, totalTokenCount: pt },
        modelVersion: model, responseId,
      };
    });
    const err = { error: { code: 503, message: 'fake gemini: stream interrupted', status: 'UNAVAILABLE' } };
    if (sse) {
      const events = chunks.map((c) => `data: ${JSON.stringify(c)}\r\n\r\n`);
      if (fault?.malformed_json) events[Math.min(1, events.length - 1)] = 'data: {"candidates": [{"content":\r\n\r\n';
      return sendEvents(res, rec, events, fault, `data: ${JSON.stringify(err)}\r\n\r\n`);
    }
    // Without alt=sse Gemini streams one JSON array, an element at a time.
    const events = chunks.map((c, i) => (i === 0 ? '[' : ',\r\n') + JSON.stringify(c));
    events.push(']');
    if (fault?.malformed_json) events[0] = '[{"candidates": [';
    return sendEvents(res, rec, events, fault, ',\r\n' + JSON.stringify(err) + ']');
  }

  // -- image fetching endpoints --

  function serveImage(req, res, rec, name) {
    let file = images[name];
    if (!file && name === 'gen.png') {
      const u = new URL(req.url, 'http://x');
      const w = Math.min(4096, Number(u.searchParams.get('w')) || 320);
      const h = Math.min(4096, Number(u.searchParams.get('h')) || 240);
      const buf = generatePng(w, h);
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': buf.length });
      rec.sent_bytes = buf.length;
      return res.end(buf);
    }
    if (!file && corpus) {
      const p = resolve(corpus, name);
      if (p.startsWith(corpus + sep)) file = p;
    }
    let buf;
    try {
      if (!file || !statSync(file).isFile()) throw new Error('no such image');
      buf = readFileSync(file);
    } catch {
      return sendJson(res, 404, { error: `no image ${name}` });
    }
    res.writeHead(200, { 'content-type': MEDIA[extname(file).toLowerCase()] || 'application/octet-stream', 'content-length': buf.length });
    rec.sent_bytes = buf.length;
    res.end(buf);
  }

  function serveSlow(req, res, rec, url) {
    if (url.searchParams.get('hold')) return; // never answer; the client gives up
    const interval = Math.max(1, Number(url.searchParams.get('interval_ms')) || 100);
    res.writeHead(200, { 'content-type': 'image/jpeg' });
    const head = [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00];
    let i = 0;
    const t = setInterval(() => {
      if (res.destroyed || i > 100000) {
        clearInterval(t);
        if (!res.destroyed) res.end();
        return;
      }
      res.write(Buffer.from([i < head.length ? head[i] : 0]));
      rec.sent_bytes++;
      i++;
    }, interval);
    res.on('close', () => {
      clearInterval(t);
      rec.aborted = !res.writableFinished;
    });
  }

  function serveBig(req, res, rec, url) {
    const length = url.searchParams.has('length') ? Number(url.searchParams.get('length')) : Infinity;
    const headers = { 'content-type': 'image/jpeg' };
    if (Number.isFinite(length)) headers['content-length'] = length;
    res.writeHead(200, headers);
    const zeros = Buffer.alloc(64 * 1024);
    const head = Buffer.alloc(64 * 1024);
    head.set([0xff, 0xd8, 0xff, 0xe0]);
    res.on('close', () => (rec.aborted = !res.writableFinished));
    const pump = () => {
      while (!res.destroyed) {
        const left = length - rec.sent_bytes;
        if (left <= 0) return res.end();
        const chunk = (rec.sent_bytes === 0 ? head : zeros).subarray(0, Math.min(zeros.length, left));
        rec.sent_bytes += chunk.length;
        if (!res.write(chunk)) return res.once('drain', pump);
      }
    };
    pump();
  }

  // -- dispatch --

  async function handle(req, res) {
    const url = new URL(req.url, `http://${host}`);
    if (url.pathname.startsWith('/__')) return control(req, res, url);
    let raw;
    try {
      raw = await readBody(req);
    } catch {
      return;
    }
    const rec = record(req, url, raw);

    let kind = null, gm = null;
    const p = url.pathname;
    if (req.method === 'POST' && (p === '/v1/chat/completions' || p === '/chat/completions')) kind = 'openai';
    else if (req.method === 'POST' && p === '/v1/messages') kind = 'anthropic';
    else if (req.method === 'POST' && (gm = p.match(/^\/v1(?:beta)?\/models\/([^/:]+):(generateContent|streamGenerateContent)$/))) kind = 'gemini';

    if (kind) rec.in_flight = ++inFlight;
    // The exchange ends when the last byte is handed to the socket ('finish') or the connection
    // goes ('close'), whichever comes first: a caller cannot start its next call any earlier, so
    // in_flight never counts a call that the caller already saw end.
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      rec.done_time = Date.now();
      // What the caller got: the status line when one went out, 0 for none (dropped, or it left).
      rec.status = res.headersSent ? res.statusCode : 0;
      if (kind) inFlight--;
    };
    res.on('finish', end);
    res.on('close', () => {
      if (!res.writableFinished) rec.aborted = true;
      end();
    });

    let fault;
    try {
      fault = takeFault(req, p, rec.model);
    } catch (e) {
      return sendJson(res, 400, { error: `bad x-fake-fault header: ${e.message}` });
    }
    if (fault) {
      const { count: _c, rate: _r, ...applied } = fault;
      rec.fault = applied;
    }
    if (fault?.delay_ms) {
      await sleep(fault.delay_ms);
      // A caller that timed out meanwhile gets nothing more (and nothing is written to its socket).
      if (res.destroyed || req.socket.destroyed) return;
    }
    if (fault?.drop) return req.socket.destroy();
    if (fault?.status) {
      const msg = fault.message || `fake ${kind || 'upstream'}: injected status ${fault.status}`;
      const headers = {};
      if (fault.retry_after !== undefined) headers['retry-after'] = String(fault.retry_after);
      if (fault.retry_after_ms !== undefined) headers['retry-after-ms'] = String(fault.retry_after_ms);
      return sendJson(res, fault.status, errorBody(kind || 'openai', fault.status, msg), headers);
    }

    if (kind) {
      if (rec.body === null || typeof rec.body !== 'object')
        return sendJson(res, 400, errorBody(kind, 400, 'fake upstream: request body is not JSON'));
      if (opts.requireAuth && !rec.auth_present)
        return sendJson(res, 401, errorBody(kind, 401, 'fake upstream: no credentials'));
      if (kind === 'openai') return openai(req, res, rec, fault);
      if (kind === 'anthropic') {
        if (!rec.body.max_tokens) return sendJson(res, 400, errorBody(kind, 400, 'max_tokens: Field required'));
        return anthropic(req, res, rec, fault);
      }
      const stream = gm[2] === 'streamGenerateContent';
      return gemini(req, res, rec, fault, decodeURIComponent(gm[1]), stream, stream && url.searchParams.get('alt') === 'sse');
    }
    if (req.method === 'GET' || req.method === 'HEAD') {
      if (p.startsWith('/img/')) return serveImage(req, res, rec, decodeURIComponent(p.slice(5)));
      if (p === '/redirect') {
        const to = url.searchParams.get('to');
        if (!to) return sendJson(res, 400, { error: 'redirect needs ?to=' });
        res.writeHead(Number(url.searchParams.get('status')) || 302, { location: to, 'content-length': 0 });
        return res.end();
      }
      if (p === '/slow') return serveSlow(req, res, rec, url);
      if (p === '/big') return serveBig(req, res, rec, url);
      if (p === '/healthz') return sendJson(res, 200, { ok: true });
    }
    return sendJson(res, 404, errorBody('openai', 404, `fake upstream: no route for ${req.method} ${p}`));
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) sendJson(res, 500, { error: String(e && e.stack || e) });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return new Promise((resolveStart, reject) => {
    server.once('error', reject);
    server.listen(opts.port || 0, host, () => {
      const port = server.address().port;
      resolveStart({
        server,
        port,
        url: `http://${host}:${port}`,
        close: () =>
          new Promise((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

// ---- command line ----------------------------------------------------------------------------------------

function main(argv) {
  const opts = { images: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--port') opts.port = Number(next());
    else if (a === '--host') opts.host = next();
    else if (a === '--corpus') opts.corpus = next();
    else if (a === '--image') {
      const v = next();
      const eq = v.indexOf('=');
      if (eq < 1) throw new Error('--image wants NAME=FILE');
      opts.images[v.slice(0, eq)] = resolve(v.slice(eq + 1));
    } else if (a === '--require-auth') opts.requireAuth = true;
    else if (a === '--chunk-delay-ms') opts.chunkDelayMs = Number(next());
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: fake_upstream.mjs [--port N] [--host H] [--corpus DIR] [--image NAME=FILE]... [--require-auth] [--chunk-delay-ms N]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return startFakeUpstream(opts).then(({ port, close }) => {
    process.stdout.write(`listening ${port}\n`);
    const stop = () => close().then(() => process.exit(0));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`fake_upstream: ${e.message}\n`);
    process.exit(2);
  });
}
