// The runner as a library: a runtime image with a build step and extra environment, started through
// start({ runner }) without forking the proxy (README, "Extending the runner").

import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST, initScript, withProxy, withTempDir, zipBase64 } from './helpers.ts';

// A "runtime" whose actions are a `main.sh` body that init turns into `exec`.
const RUNTIME = `
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { ActionRunner, start } from '${join(DIST, 'proxy.cjs')}';

class ShellBodyRunner extends ActionRunner {
  async build(value) {
    // A script init writes the body to exec; an archive brings it as body.sh.
    const source = value.binary ? 'body.sh' : 'exec';
    const body = await fs.readFile(join(this.actionDir, source), 'utf8');
    if (body.includes('FAIL')) throw new Error('build failed: the body asks to fail');
    await fs.writeFile(join(this.actionDir, 'exec'), '#!/bin/sh\\n' + body, { mode: 0o755 });
  }
}

await start({
  runner: new ShellBodyRunner({
    actionDir: process.env.PROXY_ACTION_DIR,
    env: { ...process.env, RUNTIME_NAME: 'shell-body' },
  }),
});
`;

test('a runner subclass builds at init and adds environment; a failed build restores the previous action', () =>
  withTempDir(async (folder) => {
    const main = join(folder, 'runtime.mjs');
    writeFileSync(main, RUNTIME);
    await withProxy({ command: [process.execPath, main], env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      const first = await initScript(proxy, 'echo "{\\"runtime\\":\\"$RUNTIME_NAME\\"}"\n');
      assert.equal(first.status, 200);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { runtime: 'shell-body' });

      const failed = await initScript(proxy, 'echo FAIL\n');
      assert.equal(failed.status, 502);
      await proxy.sentinels(2);
      assert.match(proxy.stderr.text, /build failed: the body asks to fail/);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { runtime: 'shell-body' }, 'the first action is back');

      // An archive without exec is fine for a runtime whose build step makes one.
      const sources = join(folder, 'sources');
      mkdirSync(sources);
      writeFileSync(join(sources, 'body.sh'), 'echo "{\\"from\\":\\"zip\\"}"\n');
      const zipped = await proxy.post('/init', { value: { binary: true, code: zipBase64(sources) } });
      assert.equal(zipped.status, 200, zipped.text);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { from: 'zip' });
    });
  }));
