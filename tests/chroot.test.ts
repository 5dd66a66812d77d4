// Scratch-like embedding: the proxy in a root filesystem holding only the node binary, /bin/sh, the
// shared libraries `ldd` lists for them, the bundled proxy and the stub. It proves the proxy needs
// nothing but Node (and a shell for shell actions; and, as PID 1 of a container whose actions leave
// background children, an init that reaps orphans, as the image has tini). It starts the proxy with the
// Dockerfile's CMD, as the image does. Needs root for chroot; skipped otherwise.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { PROXY, ROOT, STUB, eventually, initScript, withProxy, withTempDir, zipBase64 } from './helpers.ts';

/** The executable and every shared library it loads, as absolute paths. */
function withLibraries(executable: string): string[] {
  const listing = execFileSync('ldd', [executable], { encoding: 'utf8' });
  const libraries = [...listing.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((match) => match[1]!);
  return [executable, ...libraries];
}

/** Copies `path` (links resolved) to the same place under `root`. */
function place(root: string, path: string, as = path): void {
  mkdirSync(join(root, dirname(as)), { recursive: true });
  copyFileSync(realpathSync(path), join(root, as));
}

/** The image's start command: the Dockerfile's CMD, in its JSON form. */
function imageCommand(): string[] {
  const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
  assert.ok(cmd, 'the Dockerfile has a CMD in JSON form');
  return JSON.parse(cmd[1]!) as string[];
}

const skip = process.getuid?.() !== 0 ? 'chroot needs root; run the tests as root to include this one' : false;

test('the proxy runs shell and zip actions in a root filesystem of node, /bin/sh and their libraries', { skip }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'proxy-rootfs-'));
  try {
    const node = realpathSync(process.execPath);
    // Where the official node images have it.
    for (const path of withLibraries(node)) place(root, path, path === node ? '/usr/local/bin/node' : path);
    for (const path of withLibraries('/bin/sh')) place(root, path, path === '/bin/sh' ? '/bin/sh' : path);
    place(root, PROXY, '/proxy/proxy.cjs');
    place(root, STUB, '/action/exec');
    const bytes = execFileSync('du', ['-sb', root], { encoding: 'utf8' }).split('\t')[0];
    t.diagnostic(`root filesystem: ${bytes} bytes (${readdirSync(root).join(', ')})`);

    await withProxy(
      {
        command: ['chroot', root, ...imageCommand()],
        // Docker's default PATH (chroot is in /usr/sbin here; node in /usr/local/bin inside).
        env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', PROXY_ACTION_DIR: '/action', PROXY_ALLOW_REINIT: '1', PROXY_IDLE_GC_SECONDS: '1', PROXY_DEBUG: '1' },
      },
      async (proxy) => {
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { error: 'This is a stub action. Replace it with custom logic.' });
        const script = '#!/bin/sh\necho "from a script in $(pwd)" >&2\necho "{\\"script\\":$1}"\n';
        assert.equal((await initScript(proxy, script)).status, 200);
        assert.deepEqual((await proxy.post('/run', { value: { a: 1 } })).json(), { script: { a: 1 } });

        await withTempDir(async (folder) => {
          mkdirSync(join(folder, 'lib'));
          writeFileSync(join(folder, 'lib', 'greeting'), 'hello from a zip');
          writeFileSync(join(folder, 'exec'), '#!/bin/sh\nread -r greeting < lib/greeting\necho "{\\"zip\\":\\"$greeting\\"}"\n', { mode: 0o755 });
          const res = await proxy.post('/init', { value: { binary: true, code: zipBase64(folder) } });
          assert.equal(res.status, 200, proxy.stderr.text);
        });
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { zip: 'hello from a zip' });
        await proxy.sentinels(3);
        assert.match(proxy.stderr.text, /from a script in \/action\n/);
        // No /proc here: the process's size can't be read, and the idle collection runs once after activity.
        assert.ok(await eventually(() => /proxy: idle: a full garbage collection, resident set \? -> \? MiB/.test(proxy.stderr.text)), proxy.stderr.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { zip: 'hello from a zip' });
      },
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
