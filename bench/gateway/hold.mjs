#!/usr/bin/env node
// hold.mjs - keep N requests in flight against a gateway for S seconds and count every failure.
//
// Starts N requests at once (one TCP connection each, keep-alive, no client-side pool limit);
// whenever one finishes, another starts, until S seconds have passed; then waits for the last
// ones. A request fails on a transport error (its errno code is recorded: ECONNRESET,
// ECONNREFUSED, EMFILE, ...), a client timeout, a status other than 200, or a 200 whose body is
// not a chat completion. Prints one JSON object:
//   {n, seconds, started, ok, failed, fails: {reason: count}, fail_samples: [..],
//    max_inflight, first_wave: {ok, failed, ms_p50, ms_max}, lat_ms: {min, p50, p90, p99, max},
//    wall_s}
// Usage: node hold.mjs --url URL [--n 5000] [--seconds 20] [--timeout-ms 30000]
//                      [--header 'Name: value']... [--body-file FILE]

import http from 'node:http';
import { readFileSync } from 'node:fs';

const opt = { n: 5000, seconds: 20, timeoutMs: 30000, headers: {}, body: null, url: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const v = () => {
    if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
    return argv[++i];
  };
  if (a === '--url') opt.url = v();
  else if (a === '--n') opt.n = Number(v());
  else if (a === '--seconds') opt.seconds = Number(v());
  else if (a === '--timeout-ms') opt.timeoutMs = Number(v());
  else if (a === '--body-file') opt.body = readFileSync(v());
  else if (a === '--header') {
    const h = v();
    const c = h.indexOf(':');
    opt.headers[h.slice(0, c).trim().toLowerCase()] = h.slice(c + 1).trim();
  } else throw new Error(`unknown argument ${a}`);
}
if (!opt.url) throw new Error('--url is required');
// Each request is unique (a number in the prompt), as in the wrk scripts: no answer cache on
// the path can serve it.
const nonce = `${process.pid}-${Date.now()}`;
const bodyOf = (i) =>
  opt.body ||
  Buffer.from(
    JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [
        { role: 'system', content: 'You are a concise assistant.' },
        { role: 'user', content: `Say hello in one short sentence. (request hold-${nonce}-${i})` },
      ],
      max_tokens: 32,
      temperature: 0,
    }),
  );

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: Infinity });
const t0 = performance.now();
const deadline = t0 + opt.seconds * 1000;
let inflight = 0, maxInflight = 0, started = 0, ok = 0, failed = 0;
const fails = {};
const samples = [];
const lats = [];
const first = { ok: 0, failed: 0, lats: [] };
let finished = false;

function pct(sorted, q) {
  if (!sorted.length) return null;
  return +sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((sorted.length * q) / 100) - 1))].toFixed(1);
}

function finish() {
  if (finished) return;
  finished = true;
  lats.sort((a, b) => a - b);
  first.lats.sort((a, b) => a - b);
  const out = {
    url: opt.url,
    n: opt.n,
    seconds: opt.seconds,
    started,
    ok,
    failed,
    fails,
    fail_samples: samples,
    max_inflight: maxInflight,
    first_wave: { ok: first.ok, failed: first.failed, ms_p50: pct(first.lats, 50), ms_max: pct(first.lats, 100) },
    lat_ms: { min: pct(lats, 0), p50: pct(lats, 50), p90: pct(lats, 90), p99: pct(lats, 99), max: pct(lats, 100) },
    wall_s: +((performance.now() - t0) / 1000).toFixed(2),
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  agent.destroy();
  process.exit(0);
}

function one(wave) {
  started++;
  const body = bodyOf(started);
  inflight++;
  if (inflight > maxInflight) maxInflight = inflight;
  const ts = performance.now();
  let done = false;
  const end = (reason, detail) => {
    if (done) return;
    done = true;
    inflight--;
    const ms = performance.now() - ts;
    if (reason) {
      failed++;
      if (wave) first.failed++;
      fails[reason] = (fails[reason] || 0) + 1;
      if (samples.length < 10) samples.push({ reason, detail: String(detail || '').slice(0, 300), ms: +ms.toFixed(1) });
    } else {
      ok++;
      lats.push(ms);
      if (wave) {
        first.ok++;
        first.lats.push(ms);
      }
    }
    if (performance.now() < deadline) one(false);
    else if (inflight === 0) finish();
  };
  const req = http.request(
    opt.url,
    {
      method: 'POST',
      agent,
      headers: { ...opt.headers, 'content-type': 'application/json', 'content-length': body.length },
    },
    (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('error', (e) => end(e.code || e.message, e.message));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        if (res.statusCode !== 200) return end(`HTTP ${res.statusCode}`, text);
        let j = null;
        try {
          j = JSON.parse(text);
        } catch {}
        if (!j || !Array.isArray(j.choices) || !j.choices.length) return end('bad body', text);
        end(null);
      });
    },
  );
  req.setTimeout(opt.timeoutMs, () => req.destroy(Object.assign(new Error(`no answer in ${opt.timeoutMs} ms`), { code: 'CLIENT_TIMEOUT' })));
  req.on('error', (e) => end(e.code || e.message, e.message));
  req.end(body);
}

for (let i = 0; i < opt.n; i++) one(true);
