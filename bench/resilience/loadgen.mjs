#!/usr/bin/env node
// loadgen.mjs - a closed-loop load on the gateway that records every request, plus the gateway's
// /metrics before and after and its primary breaker's state while the load runs.
//
// C clients (one keep-alive connection each) each send a small non-streamed Chat Completions
// request, wait for the whole answer, and send the next one, for S seconds; the requests still
// in flight then finish (they are counted). Every request's start (ms since the load began),
// latency (ms, send to last byte) and status (0 = transport error or client timeout) is kept.
// A 200 whose body is not a chat completion counts as status -1 (an error, never a success).
// Every --poll-ms the gateway's /metrics is read for aperture_breaker_state{deployment=D}.
//
// Prints one JSON object:
//   {clients, seconds, wall_s, requests: [[start_ms, latency_ms, status], ...],
//    breaker: [[t_ms, state], ...], metrics_before: {...}, metrics_after: {...}, errors: {...}}
// metrics_*: every sample of /metrics as {"name{labels}": value}.
//
// Usage: node loadgen.mjs --url http://127.0.0.1:PORT [--clients 16] [--seconds 30]
//          [--model primary] [--timeout-ms 30000] [--poll-ms 250] [--deployment openai/gpt-4o]

import http from 'node:http';

const opt = {
  url: null, clients: 16, seconds: 30, model: 'primary', timeoutMs: 30000, pollMs: 250,
  deployment: 'openai/gpt-4o',
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const v = () => {
    if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
    return argv[++i];
  };
  if (a === '--url') opt.url = v().replace(/\/$/, '');
  else if (a === '--clients') opt.clients = Number(v());
  else if (a === '--seconds') opt.seconds = Number(v());
  else if (a === '--model') opt.model = v();
  else if (a === '--timeout-ms') opt.timeoutMs = Number(v());
  else if (a === '--poll-ms') opt.pollMs = Number(v());
  else if (a === '--deployment') opt.deployment = v();
  else throw new Error(`unknown argument ${a}`);
}
if (!opt.url) throw new Error('--url is required');

const target = new URL(opt.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: opt.clients + 2 });
const nonce = `${process.pid}-${Date.now()}`;

function get(path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: target.hostname, port: target.port, path, agent: false }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
      res.on('error', reject);
    });
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Prometheus text -> {"name{labels}": number}, comments skipped. */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const sp = line.lastIndexOf(' ');
    if (sp < 0) continue;
    const v = Number(line.slice(sp + 1));
    if (Number.isFinite(v)) out[line.slice(0, sp)] = v;
  }
  return out;
}

// One request; resolves to its status (0: transport error or timeout, -1: a 200 that is not a
// chat completion).
const errors = {};
function once(i) {
  const body = Buffer.from(
    JSON.stringify({
      model: opt.model,
      messages: [{ role: 'user', content: `Say hello in one short sentence. (request ${nonce}-${i})` }],
      max_tokens: 32,
    }),
  );
  return new Promise((resolve) => {
    let done = false;
    const finish = (status, why) => {
      if (done) return;
      done = true;
      if (why) errors[why] = (errors[why] || 0) + 1;
      resolve(status);
    };
    const req = http.request(
      {
        host: target.hostname, port: target.port, path: '/v1/chat/completions', method: 'POST', agent,
        headers: { 'content-type': 'application/json', 'content-length': body.length },
      },
      (res) => {
        const parts = [];
        res.on('data', (c) => parts.push(c));
        res.on('end', () => {
          if (res.statusCode !== 200) return finish(res.statusCode, `http_${res.statusCode}`);
          try {
            const j = JSON.parse(Buffer.concat(parts).toString('utf8'));
            if (typeof j?.choices?.[0]?.message?.content === 'string') return finish(200);
          } catch {}
          finish(-1, 'bad_200_body');
        });
        res.on('error', (e) => finish(0, e.code || 'response_error'));
      },
    );
    req.setTimeout(opt.timeoutMs, () => {
      finish(0, 'client_timeout');
      req.destroy();
    });
    req.on('error', (e) => finish(0, e.code || 'request_error'));
    req.end(body);
  });
}

const metricsBefore = parseMetrics(await get('/metrics'));
const requests = [];
const breaker = [];
const t0 = performance.now();
const deadline = t0 + opt.seconds * 1000;
let seq = 0;

const key = `aperture_breaker_state{deployment="${opt.deployment}"}`;
let polling = true;
const poller = (async () => {
  while (polling) {
    try {
      const m = parseMetrics(await get('/metrics'));
      breaker.push([Math.round(performance.now() - t0), m[key] ?? 0]);
    } catch {}
    await new Promise((r) => setTimeout(r, opt.pollMs));
  }
})();

async function client() {
  while (performance.now() < deadline) {
    const i = seq++;
    const s = performance.now();
    const status = await once(i);
    const e = performance.now();
    requests.push([+(s - t0).toFixed(2), +(e - s).toFixed(3), status]);
  }
}
await Promise.all(Array.from({ length: opt.clients }, client));
const wall = (performance.now() - t0) / 1000;
polling = false;
await poller;
const metricsAfter = parseMetrics(await get('/metrics'));
agent.destroy();
process.stdout.write(
  JSON.stringify({
    clients: opt.clients, seconds: opt.seconds, wall_s: +wall.toFixed(3), errors,
    requests, breaker, metrics_before: metricsBefore, metrics_after: metricsAfter,
  }) + '\n',
);
