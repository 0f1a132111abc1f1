#!/usr/bin/env node
// report.mjs - the tables of bench/resilience/run.sh from its raw directory.
//
//   node report.mjs RAW_DIR            the markdown report (stdout)
//   node report.mjs --one RAW/NAME     one line for NAME.load.json + NAME.meta.json
//
// Per run: requests in the measured window (all of them, except in `down`: those started after
// skip_s), client errors (status != 200), latency percentiles over every request in the window
// (errors included), and over the whole run the gateway's upstream attempts per client request
// (the change in aperture_upstream_duration_seconds_count, one per attempt), its retries and
// fallbacks, and the share of 250 ms polls that saw the primary's breaker not closed. Per
// scenario: the median over repetitions of each figure.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const ORDER = ['nofault', 'fail30', 'mixed30', 'down', 'fail30-nocf', 'mixed30-nocf'];
const LABEL = {
  nofault: 'no faults',
  fail30: '30% of primary calls: 500',
  mixed30: '30% of primary calls: 429 (±Retry-After), 503, timeout, dropped',
  down: 'primary down (100% 503), after the breaker opened',
  'fail30-nocf': '30% of primary calls: 500; breaker: error-rate rule only',
  'mixed30-nocf': '30% mixed faults as above; breaker: error-rate rule only',
};

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// Sum of every series of a metric (all label sets), after - before.
function delta(load, name, filter = () => true) {
  let d = 0;
  const keys = new Set([...Object.keys(load.metrics_after), ...Object.keys(load.metrics_before)]);
  for (const k of keys) {
    const base = k.split('{')[0];
    if (base !== name || !filter(k)) continue;
    d += (load.metrics_after[k] || 0) - (load.metrics_before[k] || 0);
  }
  return d;
}

export function analyse(prefix) {
  const load = JSON.parse(readFileSync(`${prefix}.load.json`, 'utf8'));
  const meta = JSON.parse(readFileSync(`${prefix}.meta.json`, 'utf8'));
  const skipMs = (meta.skip_s || 0) * 1000;
  const win = load.requests.filter((r) => r[0] >= skipMs);
  const lat = win.map((r) => r[1]).sort((a, b) => a - b);
  const errs = win.filter((r) => r[2] !== 200).length;
  const all = load.requests.length;
  const attempts = delta(load, 'aperture_upstream_duration_seconds_count');
  const retries = delta(load, 'aperture_retries_total');
  const fbErr = delta(load, 'aperture_fallbacks_total', (k) => !k.includes('reason="breaker_open"'));
  const fbOpen = delta(load, 'aperture_fallbacks_total', (k) => k.includes('reason="breaker_open"'));
  const polls = load.breaker.length;
  const notClosed = load.breaker.filter((b) => b[1] !== 0).length;
  const firstOpen = load.breaker.find((b) => b[1] === 1);
  // Retries by reason (timeout, connect_error, http_429, http_5xx, ...), every deployment.
  const reasons = {};
  for (const k of Object.keys(load.metrics_after)) {
    const mm = k.match(/^aperture_retries_total\{.*reason="([^"]+)"/);
    if (mm) reasons[mm[1]] = (reasons[mm[1]] || 0) + delta(load, 'aperture_retries_total', (x) => x === k);
  }
  const statuses = {};
  for (const r of win) if (r[2] !== 200) statuses[r[2]] = (statuses[r[2]] || 0) + 1;
  return {
    scenario: meta.scenario, rep: meta.rep, meta, reasons,
    requests: win.length, requests_all: all, rps: all / load.wall_s,
    errors: errs, err_pct: win.length ? (100 * errs) / win.length : NaN, statuses,
    p50: pct(lat, 0.5), p90: pct(lat, 0.9), p99: pct(lat, 0.99), max: lat[lat.length - 1],
    attempts_per_req: attempts / all, retries_per_req: retries / all,
    fallbacks_error_pct: (100 * fbErr) / all, fallbacks_open_pct: (100 * fbOpen) / all,
    breaker_not_closed_pct: polls ? (100 * notClosed) / polls : NaN,
    first_open_s: firstOpen ? firstOpen[0] / 1000 : null,
    gw_cpu_ms_per_req: meta.gw_cpu_ms / all,
  };
}

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '—');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '—');
const ms = (x) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + ' ms' : '—');
const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '—');

const argv = process.argv.slice(2);
if (argv[0] === '--one') {
  const a = analyse(argv[1]);
  console.log(
    `${a.requests} requests (${a.rps.toFixed(0)}/s), ${a.errors} errors ${JSON.stringify(a.statuses)}, ` +
      `p50 ${ms(a.p50)} p99 ${ms(a.p99)} max ${ms(a.max)}, ${f2(a.attempts_per_req)} upstream calls/request, ` +
      `retries ${JSON.stringify(a.reasons)}, breaker not closed in ${f1(a.breaker_not_closed_pct)}% of polls` +
      (a.first_open_s !== null ? ` (first open at ${a.first_open_s.toFixed(2)} s)` : ''),
  );
  process.exit(0);
}

const raw = argv[0];
if (!raw) throw new Error('usage: report.mjs RAW_DIR | --one RAW/NAME');
const runs = readdirSync(raw)
  .filter((f) => f.endsWith('.load.json'))
  .map((f) => analyse(join(raw, f.replace(/\.load\.json$/, ''))));
const by = {};
for (const r of runs) (by[r.scenario] ||= []).push(r);
const meta = readFileSync(join(raw, 'meta.txt'), 'utf8').trim();
const scen = ORDER.filter((s) => by[s]).concat(Object.keys(by).filter((s) => !ORDER.includes(s)));
const m = {};
for (const s of scen) {
  const rs = by[s];
  const keys = Object.keys(rs[0]).filter((k) => typeof rs[0][k] === 'number');
  m[s] = { n: rs.length };
  for (const k of keys) m[s][k] = median(rs.map((r) => r[k]));
  m[s].errors_total = rs.reduce((a, r) => a + r.errors, 0);
  m[s].requests_total = rs.reduce((a, r) => a + r.requests, 0);
  m[s].statuses = {};
  for (const r of rs) for (const [k, v] of Object.entries(r.statuses)) m[s].statuses[k] = (m[s].statuses[k] || 0) + v;
  m[s].reasons = {};
  for (const r of rs) for (const [k, v] of Object.entries(r.reasons)) m[s].reasons[k] = (m[s].reasons[k] || 0) + v;
  m[s].first_open = rs.map((r) => (r.first_open_s === null ? '—' : r.first_open_s.toFixed(2) + ' s'));
  m[s].p99s = rs.map((r) => r.p99);
  m[s].loads = rs.flatMap((r) => [r.meta.load1_before, r.meta.load1_after]);
}
const base = m.nofault ? m.nofault.p99 : NaN;

const out = [];
out.push('```', meta, '```', '');
out.push('Medians over repetitions; "errors" sums every repetition. Latency is send to last byte at the client, errors included.', '');
out.push('| scenario | reps | requests (median) | req/s | client errors | p50 | p90 | p99 | max | p99 / p99(no faults) | upstream calls / request | retries / request | fallbacks (after errors) | fallbacks (breaker open) | primary breaker not closed | gateway CPU / request |');
out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const s of scen) {
  const x = m[s];
  const st = Object.entries(x.statuses).map(([k, v]) => `${k === '0' ? 'transport' : k === '-1' ? 'bad body' : k}: ${v}`).join(', ');
  out.push(
    `| ${LABEL[s] || s} | ${x.n} | ${int(x.requests)} | ${int(x.rps)} | ${x.errors_total} of ${int(x.requests_total)} (${(100 * x.errors_total / x.requests_total).toFixed(2)}%)${st ? ' ' + st : ''} | ` +
      `${ms(x.p50)} | ${ms(x.p90)} | ${ms(x.p99)} | ${ms(x.max)} | ${s === 'nofault' ? '1.00' : f2(x.p99 / base)} | ` +
      `${f2(x.attempts_per_req)} | ${f2(x.retries_per_req)} | ${f1(x.fallbacks_error_pct)}% | ${f1(x.fallbacks_open_pct)}% | ` +
      `${f1(x.breaker_not_closed_pct)}% of polls | ${x.gw_cpu_ms_per_req.toFixed(3)} ms |`,
  );
}
out.push('');
for (const s of scen)
  out.push(`- ${s}: p99 per repetition ${m[s].p99s.map(ms).join(', ')}; retries by reason (all repetitions) ${JSON.stringify(m[s].reasons)}; primary breaker first seen open at ${m[s].first_open.join(', ')}; 1-min load average ${Math.min(...m[s].loads).toFixed(2)}..${Math.max(...m[s].loads).toFixed(2)}`);
out.push('');
out.push('Targets (issue 5 (a)):', '');
for (const s of ['fail30', 'mixed30', 'down', 'fail30-nocf', 'mixed30-nocf']) {
  if (!m[s]) continue;
  out.push(`- ${s}: client-visible error rate ${(100 * m[s].errors_total / m[s].requests_total).toFixed(3)}% (${m[s].errors_total} of ${m[s].requests_total}) -> ${m[s].errors_total === 0 ? 'MET (0%)' : 'NOT MET'}`);
}
if (m.down && m.nofault)
  out.push(`- down: p99 ${ms(m.down.p99)} vs no-fault p99 ${ms(base)}, ratio ${f2(m.down.p99 / base)} -> ${m.down.p99 <= 2 * base ? 'MET (<= 2x)' : 'NOT MET (> 2x)'}`);
console.log(out.join('\n'));
