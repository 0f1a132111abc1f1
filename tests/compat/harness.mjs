// harness.mjs - shared setup for the compatibility suites: the fake upstream (a child process), aperture
// serve (a child process with a temporary YAML config pointing every provider at the fake), and
// helpers to look inside the JPEGs that arrive upstream.
//
// Environment: APERTURE_BIN (default build/aperture), APERTURE_CORPUS (default ../shared/corpus).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const FAKE = join(ROOT, 'tests/fakes/fake_upstream.mjs');
export const APERTURE_BIN = resolve(process.env.APERTURE_BIN || join(ROOT, 'build/aperture'));
export const CORPUS =
  [process.env.APERTURE_CORPUS, join(ROOT, '../shared/corpus'), '/work/shared/corpus'].find(
    (d) => d && existsSync(join(d, 'MANIFEST.md')),
  ) || join(ROOT, '../shared/corpus');

// Dummy provider keys: set only in the gateway's environment, never real, and grepped for in its
// output to prove they are not logged.
export const KEYS = {
  APERTURE_TEST_OPENAI_KEY: 'sk-test-openai-0123456789abcdef',
  APERTURE_TEST_ANTHROPIC_KEY: 'sk-ant-test-0123456789abcdef',
  APERTURE_TEST_GEMINI_KEY: 'AIza-test-0123456789abcdef',
};

/** The bytes of a corpus file, and the same as a data: URL. */
export function corpusFile(rel) {
  return readFileSync(join(CORPUS, rel));
}
export function dataUrl(buf, type = 'image/jpeg') {
  return `data:${type};base64,${buf.toString('base64')}`;
}

function waitForLine(child, stream, re, what, ms = 15000) {
  return new Promise((resolveLine, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new Error(`${what}: no "${re}" within ${ms} ms; output so far:\n${buf}`)), ms);
    const onData = (d) => {
      buf += d;
      const m = buf.match(re);
      if (m) done(null, m);
    };
    const onExit = (code, sig) => done(new Error(`${what} exited (${code ?? sig}) before it was ready:\n${buf}`));
    function done(err, m) {
      clearTimeout(timer);
      stream.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolveLine(m);
    }
    stream.setEncoding('utf8');
    stream.on('data', onData);
    child.on('exit', onExit);
  });
}

function stopChild(child, ms = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    const t = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', () => {
      clearTimeout(t);
      r();
    });
    child.kill('SIGTERM');
  });
}

/**
 * Start the fake upstream on an ephemeral loopback port. Returns {port, url, requests(path?), reset(),
 * fault(spec), stop()}.
 */
export async function startFake() {
  const child = spawn(process.execPath, [FAKE, '--port', '0', '--corpus', CORPUS], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const m = await waitForLine(child, child.stdout, /listening (\d+)\n/, 'fake upstream');
  const port = Number(m[1]);
  const url = `http://127.0.0.1:${port}`;
  const ctl = async (method, path, body) => {
    const r = await fetch(url + path, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!r.ok) throw new Error(`fake ${method} ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  return {
    port,
    url,
    child,
    requests: (path) => ctl('GET', '/__requests' + (path ? `?path=${encodeURIComponent(path)}` : '')),
    reset: () => ctl('POST', '/__reset', {}),
    fault: (spec) => ctl('POST', '/__faults', spec),
    clearFaults: () => ctl('DELETE', '/__faults'),
    stop: () => stopChild(child),
  };
}

// ---- YAML ------------------------------------------------------------------------------------------

/** A small YAML writer for plain objects, arrays and scalars (strings double-quoted, JSON style). */
export function toYaml(v, indent = 0) {
  const pad = ' '.repeat(indent);
  const scalar = (x) => (typeof x === 'string' ? JSON.stringify(x) : x === null ? 'null' : String(x));
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return v
      .map((item) => {
        if (item && typeof item === 'object') {
          const inner = toYaml(item, indent + 2).replace(/^\s+/, '');
          return `${pad}- ${inner}`;
        }
        return `${pad}- ${scalar(item)}`;
      })
      .join('\n');
  }
  if (v && typeof v === 'object') {
    return Object.entries(v)
      .filter(([, x]) => x !== undefined)
      .map(([k, x]) => {
        if (x && typeof x === 'object' && (!Array.isArray(x) || x.length))
          return `${pad}${k}:\n${toYaml(x, indent + 2)}`;
        return `${pad}${k}: ${Array.isArray(x) ? '[]' : scalar(x)}`;
      })
      .join('\n');
  }
  return pad + scalar(v);
}

// ---- the gateway -----------------------------------------------------------------------------------

/** The test configuration: every provider at the fake, small limits so the limit cases are cheap. */
export function gatewayConfig(fake, extra = {}) {
  const base = `http://127.0.0.1:${fake.port}`;
  return {
    listen: '127.0.0.1:0',
    max_body_bytes: 16 * 1024 * 1024,
    providers: [
      { name: 'openai', type: 'openai', base_url: `${base}/v1`, api_key_env: 'APERTURE_TEST_OPENAI_KEY', timeout_ms: 2500 },
      { name: 'anthropic', type: 'anthropic', base_url: base, api_key_env: 'APERTURE_TEST_ANTHROPIC_KEY', timeout_ms: 2500 },
      { name: 'gemini', type: 'gemini', base_url: `${base}/v1beta`, api_key_env: 'APERTURE_TEST_GEMINI_KEY', timeout_ms: 2500 },
    ],
    fetch_timeout_ms: 1500,
    fetch_max_bytes: 8 * 1024 * 1024,
    ...extra,
  };
}

// Variables a developer's shell may hold that would point the gateway somewhere real (or through a
// proxy): none of them reach the child.
const SCRUB = /^(APERTURE_|OPENAI_|ANTHROPIC_|GEMINI_|GOOGLE_|MAX_IMAGE_SIZE_MB$|https?_proxy$|all_proxy$|no_proxy$)/i;

/**
 * Start `aperture serve` against the fake. opts: {loopback = true (APERTURE_FETCH_ALLOW_LOOPBACK=1),
 * config (overrides merged into gatewayConfig), env (extra variables; without APERTURE_CACHE or
 * APERTURE_CACHE_URL there the answer cache is off)}. The gateway runs in its own
 * temporary directory (removed by stop()), so files it creates there, such as the default answer
 * cache aperture-cache.db, never land in the tree and never outlive the gateway. Returns {port, url,
 * dir, stderr(), logLines(), configText, stop()}.
 */
export async function startGateway(fake, opts = {}) {
  if (!existsSync(APERTURE_BIN)) throw new Error(`aperture binary not found at ${APERTURE_BIN} (set APERTURE_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), 'aperture-compat-'));
  const cfg = gatewayConfig(fake, opts.config || {});
  const configText = toYaml(cfg) + '\n';
  const cfgPath = join(dir, 'aperture.yaml');
  writeFileSync(cfgPath, configText);
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!SCRUB.test(k)) env[k] = v;
  Object.assign(env, KEYS);
  if (opts.loopback !== false) env.APERTURE_FETCH_ALLOW_LOOPBACK = '1';
  // The answer cache is off unless the caller picks a backend (cache.test.mjs does): the other
  // suites send identical requests in different cases and count what reaches the fake.
  if (!opts.env || (opts.env.APERTURE_CACHE === undefined && opts.env.APERTURE_CACHE_URL === undefined))
    env.APERTURE_CACHE = 'off';
  Object.assign(env, opts.env || {});
  const child = spawn(APERTURE_BIN, ['serve', '--config', cfgPath, '--listen', '127.0.0.1:0', '--drain-seconds', '1'], {
    env,
    cwd: dir,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => (err += d));
  let m;
  try {
    m = await waitForLine(child, child.stderr, /listening on .*\(port (\d+)\)/, 'aperture serve');
  } catch (e) {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`${e.message}\nconfig:\n${configText}\nstderr:\n${err}`);
  }
  const port = Number(m[1]);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    dir,
    child,
    configText,
    stderr: () => err,
    logLines: () =>
      err
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l);
          } catch {
            return null;
          }
        })
        .filter(Boolean),
    stop: async () => {
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POST JSON (or a raw string/Buffer) to the gateway; resolves to {status, headers, body, text}. */
export async function post(gw, path, body, headers = {}) {
  const raw = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const r = await fetch(gw.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: raw,
  });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: r.status, headers: r.headers, body: json, text };
}

// ---- JPEG inspection -----------------------------------------------------------------------------

/**
 * Parse a JPEG's markers: {width, height, markers: [{marker, length, id}]} where id is the first bytes
 * of an APPn payload ("Exif", "JFIF", "http://ns.adobe.com/xap", "ICC_PROFILE", ...). Throws when the
 * bytes are not a JPEG.
 */
export function jpegInfo(buf) {
  if (buf[0] !== 0xff || buf[1] !== 0xd8) throw new Error('not a JPEG (no SOI)');
  const markers = [];
  let width = 0, height = 0;
  let i = 2;
  while (i + 4 <= buf.length) {
    if (buf[i] !== 0xff) throw new Error(`bad marker at ${i}`);
    const m = buf[i + 1];
    if (m === 0xff) {
      i++;
      continue;
    }
    if (m === 0xd9 || m === 0xda) {
      markers.push({ marker: m });
      break;
    }
    const len = buf.readUInt16BE(i + 2);
    const seg = buf.subarray(i + 4, i + 2 + len);
    const rec = { marker: m, length: len };
    if (m >= 0xe0 && m <= 0xef) rec.id = seg.subarray(0, 24).toString('latin1').split('\0')[0];
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      height = seg.readUInt16BE(1);
      width = seg.readUInt16BE(3);
    }
    markers.push(rec);
    i += 2 + len;
  }
  if (!width || !height) throw new Error('JPEG without a frame header');
  return { width, height, markers };
}

/** Decode a data: URL into {type, buf}. */
export function parseDataUrl(url) {
  const m = /^data:([^;,]+)(;base64)?,(.*)$/s.exec(url);
  if (!m || !m[2]) throw new Error(`not a base64 data URL: ${String(url).slice(0, 60)}`);
  return { type: m[1], buf: Buffer.from(m[3], 'base64') };
}

/** Every OpenAI image_url part of a recorded Chat Completions body. */
export function openaiImages(body) {
  const out = [];
  for (const msg of body?.messages || [])
    if (Array.isArray(msg.content))
      for (const p of msg.content) if (p.type === 'image_url') out.push(typeof p.image_url === 'string' ? p.image_url : p.image_url.url);
  return out;
}

/** Every Anthropic image block of a recorded Messages body. */
export function anthropicImages(body) {
  const out = [];
  for (const msg of body?.messages || [])
    if (Array.isArray(msg.content)) for (const p of msg.content) if (p.type === 'image') out.push(p.source);
  return out;
}

/** Every Gemini inline image of a recorded generateContent body. */
export function geminiImages(body) {
  const out = [];
  for (const c of body?.contents || [])
    for (const p of c.parts || []) {
      const d = p.inline_data || p.inlineData;
      if (d) out.push({ mime_type: d.mime_type || d.mimeType, data: d.data });
    }
  return out;
}

// ---- metrics and load --------------------------------------------------------------------------

/** The gateway's /metrics text. */
export async function metrics(gw) {
  return (await fetch(gw.url + '/metrics')).text();
}

/**
 * The value of a Prometheus sample: name and labels (every given label must match; others may
 * be present); with several matches, their sum. undefined when no sample matches.
 */
export function metricValue(text, name, labels = {}) {
  let sum;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = {};
    for (const lm of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[lm[1]] = lm[2];
    if (Object.entries(labels).every(([k, v]) => got[k] === String(v))) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/** Run fn(0..n-1) with at most `concurrency` at once; resolves to the results in order. */
export async function pool(n, concurrency, fn) {
  const out = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return out;
}

// ---- redis-server (cache, review and shared-breaker suites) --------------------------------------

// REDIS_SERVER: the redis-server binary to use (empty: skip the Redis cases); default: found on PATH.
export const REDIS_BIN =
  process.env.REDIS_SERVER ?? (spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).stdout || '').trim();
/** false when there is a redis-server to run, else the skip message for node:test. */
export const NO_REDIS =
  REDIS_BIN && existsSync(REDIS_BIN)
    ? false
    : `skipped: no redis-server${REDIS_BIN ? ` at ${REDIS_BIN}` : ' on PATH'} (scripts/deps.sh installs it)`;

/** A loopback TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** One PING; resolves true on +PONG. */
export function redisPing(port) {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

/** Start redis-server on port (no persistence, loopback only, --dir dir); resolves to the child once it answers. */
export async function startRedis(port, dir) {
  const child = spawn(REDIS_BIN, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}):\n${out}`);
    if (await redisPing(port)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`redis-server did not answer on ${port}:\n${out}`);
}

/** Signal a child process (SIGTERM unless told) and resolve once it has exited; at once if it already has. */
export function killChild(child, sig = 'SIGTERM') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    child.once('exit', () => r());
    child.kill(sig);
  });
}
