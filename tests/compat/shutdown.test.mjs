// Graceful shutdown: on SIGTERM the gateway stops accepting, lets requests in flight finish
// (up to --drain-seconds), then exits 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFake, gatewayConfig, toYaml, APERTURE_BIN, KEYS } from './harness.mjs';

let fake;
before(async () => {
  fake = await startFake();
});
after(async () => {
  await fake.stop();
});

test('SIGTERM drains a request in flight, then exits 0', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'aperture-shutdown-'));
  const cfgPath = join(dir, 'aperture.yaml');
  writeFileSync(cfgPath, toYaml(gatewayConfig(fake)) + '\n');
  const child = spawn(APERTURE_BIN, ['serve', '--config', cfgPath, '--listen', '127.0.0.1:0', '--drain-seconds', '10'], {
    env: { ...process.env, ...KEYS, APERTURE_LOG_FILE: '/dev/null', APERTURE_CACHE: 'off' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.setEncoding('utf8');
  const port = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('gateway did not start: ' + err)), 15000);
    child.stderr.on('data', (d) => {
      err += d;
      const m = /\(port (\d+)\)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    });
  });
  const exited = new Promise((r) => child.once('exit', (code, sig) => r({ code, sig })));
  // The upstream takes 1.5 s; SIGTERM arrives 300 ms into the request.
  await fake.fault({ path: '/v1/chat/completions', delay_ms: 1500, count: 1 });
  const inflight = fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hello' }] }),
  });
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGTERM');
  const res = await inflight;
  assert.equal(res.status, 200, 'the request in flight completes');
  const body = await res.json();
  assert.equal(body.object, 'chat.completion');
  // New connections are refused once draining started.
  await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`));
  const { code } = await exited;
  assert.equal(code, 0, 'clean exit; stderr:\n' + err);
  assert.match(err, /SIGTERM received, draining/);
  rmSync(dir, { recursive: true, force: true });
});
