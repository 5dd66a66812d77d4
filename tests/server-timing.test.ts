// The Server-Timing header (W3C Server Timing): where an init's or a run's time went, and the process's
// start-up on its first answer. Black-box against the real proxy process.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { initScript, withProxy, withTempDir, zipBase64, type Response } from './helpers.ts';

/** The header's entries, name → duration in ms; asserts the W3C syntax `name;dur=<number>`. */
function timings(res: Response): Map<string, number> {
  const header = res.headers['server-timing'];
  assert.equal(typeof header, 'string', 'a Server-Timing header');
  const entries = new Map<string, number>();
  for (const entry of (header as string).split(', ')) {
    const match = /^([a-z]+);dur=(\d+\.\d\d)$/.exec(entry);
    assert.ok(match, `an entry of the form name;dur=<ms>: ${entry}`);
    entries.set(match[1]!, Number(match[2]));
  }
  return entries;
}

/** Every part at most the total, and the parts together too (they never overlap). */
function assertAddsUp(entries: Map<string, number>, parts: string[]): void {
  assert.deepEqual([...entries.keys()].filter((name) => name !== 'startup' && name !== 'bootstrap'), [...parts, 'total']);
  const total = entries.get('total')!;
  let sum = 0;
  for (const part of parts) {
    assert.ok(entries.get(part)! <= total, `${part} ${entries.get(part)} ≤ total ${total}`);
    sum += entries.get(part)!;
  }
  assert.ok(sum <= total + 0.02, `the parts add up to ${sum}, at most the total ${total}`);
}

describe('OpenWhisk routes: on by default', { concurrency: true }, () => {
  test('the first answer carries startup and bootstrap, later ones do not; /run has action and total', () =>
    withProxy({}, async (proxy) => {
      const first = timings(await proxy.post('/run', { value: {} }));
      assertAddsUp(first, ['action']);
      const startup = first.get('startup')!;
      const bootstrap = first.get('bootstrap')!;
      assert.ok(bootstrap > 0 && bootstrap < startup, `bootstrap ${bootstrap} is part of startup ${startup}`);
      assert.ok(startup < 10_000);
      const second = timings(await proxy.post('/run', { value: {} }));
      assertAddsUp(second, ['action']);
      assert.ok(!second.has('startup'));
    }));

  test('/init of a script: swap and total; of a zip: extract, swap and total; a failed init too', () =>
    withTempDir(async (folder) => {
      writeFileSync(join(folder, 'exec'), '#!/bin/sh\necho {}\n', { mode: 0o755 });
      await withProxy({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
        await proxy.post('/nothing'); // the first answer, with start-up, out of the way
        assertAddsUp(timings(await initScript(proxy, '#!/bin/sh\necho {}\n')), ['swap']);
        assertAddsUp(timings(await proxy.post('/init', { value: { binary: true, code: zipBase64(folder) } })), ['extract', 'swap']);
        const failed = await proxy.post('/init', { value: { binary: true, code: Buffer.from('PK\x03\x04 and no more of a ZIP').toString('base64') } });
        assert.equal(failed.status, 502);
        assertAddsUp(timings(failed), ['extract']);
      });
    }));

  test('a build step (OW_COMPILER) and a loop start are parts of the init', () =>
    withTempDir(async (folder) => {
      const compiler = join(folder, 'compile');
      writeFileSync(compiler, '#!/bin/sh\nprintf "#!/bin/bash\\nwhile read -r l; do echo {} >&3; done\\n" > "$3/exec"; chmod +x "$3/exec"\n', { mode: 0o755 });
      await withProxy({ env: { OW_COMPILER: compiler, PROXY_ACTION_LOOP: '1' } }, async (proxy) => {
        await proxy.post('/nothing');
        const res = await proxy.post('/init', { value: { code: 'source to compile' } });
        assert.equal(res.status, 200, proxy.stderr.text);
        assertAddsUp(timings(res), ['build', 'swap', 'start']);
        assertAddsUp(timings(await proxy.post('/run', { value: {} })), ['action']);
      });
    }));

  test('PROXY_SERVER_TIMING=0 turns it off', () =>
    withProxy({ env: { PROXY_SERVER_TIMING: '0' } }, async (proxy) => {
      assert.equal((await proxy.post('/run', { value: {} })).headers['server-timing'], undefined);
      assert.equal((await initScript(proxy, '#!/bin/sh\necho {}\n')).headers['server-timing'], undefined);
    }));
});

describe('Knative: public, so only with PROXY_SERVER_TIMING=1', { concurrency: true }, () => {
  const action = '#!/bin/sh\necho \'{"body":"hi"}\'\n';
  test('off by default', () =>
    withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: action } }, async (proxy) => {
      assert.equal((await proxy.post('/', {})).headers['server-timing'], undefined);
    }));

  test('on with PROXY_SERVER_TIMING=1; the action\'s own Server-Timing wins', async () => {
    await withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: action, PROXY_SERVER_TIMING: '1' } }, async (proxy) => {
      const first = timings(await proxy.post('/', {}));
      assert.ok(first.has('startup') && first.has('action'));
      assertAddsUp(timings(await proxy.post('/', {})), ['action']);
    });
    const own = '#!/bin/sh\necho \'{"headers":{"server-timing":"db;dur=5"},"body":"hi"}\'\n';
    await withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: own, PROXY_SERVER_TIMING: '1' } }, async (proxy) => {
      assert.equal((await proxy.post('/', {})).headers['server-timing'], 'db;dur=5');
    });
  });
});
