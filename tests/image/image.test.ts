// The image, built and run as a real container (`npm run test:image`): what users of a base image
// expect, each shown on the running container. Needs podman (or docker) and the image built by
// `npm run image`; on machines without a registry that image is built on the local stand-in base
// (image/stand-in-base.sh: Debian bookworm minbase + bash + tini, Node 24 from the npm registry).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { SENTINEL, request, zipBase64 } from '../helpers.ts';
import { ENGINE, IMAGE, LIMITS, RUNTIME, actionVolume, engine, withContainer, type Container } from './container.ts';
import { craftZip } from '../zipcraft.ts';

/** Processes in the container that are zombies (state Z), read from /proc inside it. */
async function zombies(container: Container): Promise<string[]> {
  const stat = await container.exec('sh', '-c', 'cat /proc/[0-9]*/stat 2>/dev/null');
  return stat.split('\n').filter((line) => /^\d+ \(.*\) Z /.test(line));
}

describe('the image as a container', { concurrency: 2 }, () => {
  test('shell and zip actions through the published port; logs and sentinels in the container logs', () =>
    withContainer([], async (container) => {
      const script = await container.post('/init', { value: { code: '#!/bin/bash\necho "log from bash $BASH_VERSION"\necho "$1"\n' } });
      assert.equal(script.status, 200);
      assert.deepEqual((await container.post('/run', { value: { n: 1 } })).json(), { n: 1 });
      await withZip(async (code) => {
        // A second init needs a fresh container: one init per container, as on OpenWhisk.
        await withContainer([], async (zipped) => {
          assert.equal((await zipped.post('/init', { value: { binary: true, code } })).status, 200);
          assert.deepEqual((await zipped.post('/run', { value: {} })).json(), { from: 'zip' });
        });
      });
      const logs = await container.logsMatching(new RegExp(`${SENTINEL}[^]*${SENTINEL}`));
      assert.match(logs, /log from bash 5\./);
      assert.equal(logs.split(SENTINEL).length - 1, 2, 'one sentinel on stdout and one on stderr');
    }));

  test('PID 1 is tini with the proxy under it; orphaned action children leave no zombies, even under --pids-limit', () =>
    withContainer(['--pids-limit', '64'], async (container) => {
      assert.match(await container.exec('cat', '/proc/1/cmdline'), /^tini\0--\0\/proxy\/entrypoint\0node\0/);
      // The entry point exec's the proxy: tini's child is node itself, no shell in between.
      assert.match(await container.exec('sh', '-c', 'cat /proc/$(cat /proc/1/task/1/children | cut -d" " -f1)/cmdline'), /^node\0--max-semi-space-size=2\0--min-semi-space-size=2\0--no-maglev\0\/proxy\/proxy.cjs\0$/);
      await container.post('/init', { value: { code: '#!/bin/bash\n(sleep 0.2 &)\necho "{}"\n' } });
      // 300 orphans in all, 8 at a time: with no one reaping them the 64 PIDs would run out.
      const statuses: number[] = [];
      for (let i = 0; i < 300 / 8; i++) {
        const answers = await Promise.all(Array.from({ length: 8 }, () => container.post('/run', { value: {} })));
        statuses.push(...answers.map((res) => res.status));
      }
      assert.deepEqual(new Set(statuses), new Set([200]));
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.deepEqual(await zombies(container), []);
    }));

  test('podman stop during an activation: it finishes and answers, then the container exits 0 well within the grace', () =>
    withContainer([], async (container) => {
      await container.post('/init', { value: { code: '#!/bin/sh\nsleep 2\necho \'{"done":true}\'\n' } });
      const answer = container.post('/run', { value: {} });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const started = Date.now();
      await engine('stop', '-t', '20', container.name);
      const took = Date.now() - started;
      assert.deepEqual((await answer).json(), { done: true });
      assert.equal((await engine('inspect', '--format', '{{.State.ExitCode}}', container.name)).trim(), '0');
      assert.ok(took < 10_000, `stopped in ${took} ms, not killed after the engine's 20 s`);
    }));

  test('--read-only root (no tmpfs either) with a writable /action volume: script and zip inits work', () =>
    withZip(async (code) => {
      for (const init of [{ code: '#!/bin/sh\necho \'{"script":true}\'\n' }, { binary: true, code }]) {
        const volume = actionVolume();
        try {
          await withContainer(['--read-only', '--read-only-tmpfs=false', '-v', `${volume.dir}:/action`], async (container) => {
            const res = await container.post('/init', { value: init });
            assert.equal(res.status, 200, await container.logs());
            assert.equal((await container.post('/run', { value: {} })).status, 200);
          });
        } finally {
          volume.remove();
        }
      }
    }));

  test('--user 65534 (no root) with a writable /action volume, and a read-only root', () => {
    const volume = actionVolume(65534);
    return withContainer(['--user', '65534', '--read-only', '-v', `${volume.dir}:/action`], async (container) => {
      assert.equal((await container.exec('id', '-u')).trim(), '65534');
      assert.equal((await container.post('/init', { value: { code: '#!/bin/sh\necho "{\\"uid\\":$(id -u)}"\n' } })).status, 200);
      assert.deepEqual((await container.post('/run', { value: {} })).json(), { uid: 65534 });
    }).finally(volume.remove);
  });

  test('--memory 128m: 10,000 activations with 8 clients, no OOM kill; the peak is reported', () =>
    withContainer(['--memory', '128m', '--memory-swap', '128m'], async (container) => {
      await container.post('/init', { value: { code: '#!/bin/sh\necho \'{"ok":true}\'\n' } });
      let left = 10_000;
      let failed = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (left-- > 0) if ((await container.post('/run', { value: {} })).status !== 200) failed++;
        }),
      );
      assert.equal(failed, 0);
      assert.equal((await engine('inspect', '--format', '{{.State.OOMKilled}}', container.name)).trim(), 'false');
      const peak = await peakMemory(container);
      // The proxy's own peak RSS counts the shared pages the cgroup may have charged to whoever read them first.
      const proxyPid = (await container.exec('sh', '-c', 'for d in /proc/[0-9]*; do case "$(tr "\\0" " " < $d/cmdline)" in node*) echo ${d#/proc/};; esac; done')).trim();
      const proxyPeak = /VmHWM:\s+(\d+) kB/.exec(await container.exec('cat', `/proc/${proxyPid}/status`))?.[1];
      process.stderr.write(`# --memory 128m, 10,000 activations: container cgroup peak ${peak === undefined ? 'not readable' : `${(peak / 2 ** 20).toFixed(1)} MiB`}, proxy peak RSS ${(Number(proxyPeak) / 1024).toFixed(1)} MiB\n`);
      assert.ok(Number(proxyPeak) * 1024 < 128 * 2 ** 20);
      if (peak !== undefined) assert.ok(peak < 128 * 2 ** 20);
    }));

  test('--memory 128m: the largest action (a 47 MiB stored ZIP, a 63 MiB init body) initializes and runs, no OOM kill', () =>
    withContainer(['--memory', '128m', '--memory-swap', '128m'], async (container) => {
      const blob = randomBytes(47 * 2 ** 20 - 4096);
      const exec = '#!/bin/sh\necho "{\\"size\\":$(wc -c < /action/blob)}"\n';
      const code = craftZip([{ name: 'exec', data: exec, mode: 0o100755 }, { name: 'blob', data: blob }]).toString('base64');
      const res = await container.post('/init', { value: { binary: true, code } });
      assert.equal(res.status, 200, await container.logs());
      assert.deepEqual((await container.post('/run', { value: {} })).json(), { size: blob.length });
      assert.equal((await engine('inspect', '--format', '{{.State.OOMKilled}}', container.name)).trim(), 'false');
      const peak = await peakMemory(container);
      process.stderr.write(`# --memory 128m, a 63 MiB init: container cgroup peak ${peak === undefined ? 'not readable' : `${(peak / 2 ** 20).toFixed(1)} MiB`}\n`);
    }));

  test('-compile from the image, as Go\'s images do it: a ZIP on stdin, a ZIP on stdout; --version', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'proxy-image-compile-'));
    try {
      writeFileSync(join(dir, 'exec'), '#!/bin/sh\necho {}\n', { mode: 0o755 });
      const sources = execFileSync('zip', ['-q', '-r', '-', '.'], { cwd: dir });
      const compiled = execFileSync(ENGINE, ['run', '-i', '--rm', ...RUNTIME, ...LIMITS, IMAGE, '-compile', 'main'], { input: sources, maxBuffer: 1 << 26 });
      writeFileSync(join(dir, 'out.zip'), compiled);
      assert.match(execFileSync('unzip', ['-Z', join(dir, 'out.zip')]).toString(), /-rwxr-xr-x .* exec\n/);
      assert.match(execFileSync(ENGINE, ['run', '--rm', ...RUNTIME, ...LIMITS, IMAGE, '--version']).toString(), /^openwhisk-action-proxy \S+ \(node 24\./);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the compile cache and the code cache baked into the image are what a start reads, with a read-only root', () =>
    withContainer(['--read-only', '-e', 'NODE_DEBUG_NATIVE=COMPILE_CACHE', '-e', 'PROXY_DEBUG=1'], async (container) => {
      assert.equal((await container.post('/run', { value: {} })).status, 200);
      const logs = await container.logs();
      assert.match(logs, /V8 code cache for CommonJS \/proxy\/proxy\.cjs was accepted/);
      assert.match(logs, /^proxy: code cache: \/proxy\/code-cache accepted \(\d+ bytes\)$/m);
    }));

  test('Knative settings: PORT, __OW_RUNTIME_PLATFORM=knative and __OW_ACTION_CODE answer a web request', () =>
    withContainer(
      ['-e', 'PORT=9090', '-e', '__OW_RUNTIME_PLATFORM=knative', '-e', '__OW_HTTP_METHODS=GET', '-e', `__OW_ACTION_CODE=#!/bin/sh\necho '{"headers":{"content-type":"text/plain"},"body":"hello from knative"}'`],
      async (container) => {
        const res = await request(container.port, 'GET', '/any/path?x=1');
        assert.equal(res.status, 200);
        assert.equal(res.text, 'hello from knative');
        assert.equal(res.headers['access-control-allow-origin'], '*');
      },
      { port: 9090 },
    ));

  test('a derived image with COPY exec /action/exec runs its action without an init (the README\'s recipe)', async () => {
    const context = mkdtempSync(join(tmpdir(), 'proxy-image-derived-'));
    const tag = `localhost/action-proxy-derived-test:${process.pid}`;
    try {
      writeFileSync(join(context, 'exec'), '#!/bin/sh\necho "{\\"derived\\":true,\\"args\\":$1}"\n', { mode: 0o755 });
      writeFileSync(join(context, 'Dockerfile'), `FROM ${IMAGE}\nCOPY exec /action/exec\n`);
      await engine('build', ...RUNTIME, '--tag', tag, context);
      await withContainer([], async (container) => {
        assert.deepEqual((await container.post('/run', { value: { a: 1 } })).json(), { derived: true, args: { a: 1 } });
      }, { image: tag });
    } finally {
      rmSync(context, { recursive: true, force: true });
      await engine('rmi', '-f', tag).catch(() => undefined);
    }
  });
});

/** Runs `fn` with base64 of a zip whose exec answers {"from":"zip"}. */
async function withZip<T>(fn: (code: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'proxy-image-zip-'));
  try {
    writeFileSync(join(dir, 'exec'), '#!/bin/sh\necho \'{"from":"zip"}\'\n', { mode: 0o755 });
    writeFileSync(join(dir, 'data.txt'), 'data');
    return await fn(zipBase64(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The container's peak memory use from its cgroup (v2 memory.peak, or v1 memory.max_usage_in_bytes). */
async function peakMemory(container: Container): Promise<number | undefined> {
  const pid = (await engine('inspect', '--format', '{{.State.Pid}}', container.name)).trim();
  const cgroups = execFileSync('cat', [`/proc/${pid}/cgroup`]).toString().split('\n');
  const v1 = cgroups.find((line) => /:memory:/.test(line))?.split(':')[2];
  const v2 = cgroups.find((line) => line.startsWith('0::'))?.slice(3);
  for (const file of [v1 && `/sys/fs/cgroup/memory${v1}/memory.max_usage_in_bytes`, v2 && `/sys/fs/cgroup${v2}/memory.peak`]) {
    if (!file) continue;
    try {
      return Number(execFileSync('cat', [file]).toString().trim());
    } catch {
      // not this hierarchy
    }
  }
  return undefined;
}
