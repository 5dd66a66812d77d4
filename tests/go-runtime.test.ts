// Action-loop mode held to OpenWhisk's Go runtime: its own compiler (common/gobuild.py, which sets GOPATH
// to the parent of the source folder) as OW_COMPILER and its own example actions, answers compared with
// its examples/test.expected. Needs a checkout of apache/openwhisk-runtime-go named by OW_RUNTIME_GO, and
// `go` and `python3` on the PATH; without them the tests are skipped and say why.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withLoopProxy, withTempDir } from './helpers.ts';

const CHECKOUT = process.env.OW_RUNTIME_GO;
const noCheckout = !CHECKOUT || !existsSync(join(CHECKOUT, 'common', 'gobuild.py'))
  ? 'OW_RUNTIME_GO does not name a checkout of apache/openwhisk-runtime-go (git clone https://github.com/apache/openwhisk-runtime-go)'
  : false;
const skip = noCheckout || (spawnSync('go', ['version']).status === 0 ? false : 'no go on the PATH (Debian: apt-get install golang-go)');
const bashSkip = noCheckout || (spawnSync('jq', ['--version']).status === 0 ? false : 'no jq on the PATH (the example parses its input with jq)');

/** What examples/test.expected says each example answers, for "Mike" and for no name. */
function expected(example: string): unknown[] {
  const lines = readFileSync(join(CHECKOUT!, 'examples', 'test.expected'), 'utf8').split('\n');
  return lines.filter((line) => line.trim().startsWith(`"${example}"`)).map((line) => JSON.parse(`{${line.trim().replace(`"${example}"`, `"${example === 'bash' ? 'bash' : 'greetings'}"`)}}`));
}

const EXAMPLES: Array<[example: string, main: string, files: string[]]> = [
  ['single-main', 'main', ['main.go']],
  ['single-hello', 'hello', ['hello.go']],
  // A package beside main: builds only when the compiler's source folder is named src (GOPATH is its parent).
  ['package-main', 'main', ['main.go', 'hello/hello.go']],
];

describe('OpenWhisk\'s Go runtime on the loop mode', { concurrency: true }, () => {
  for (const [example, main, files] of EXAMPLES) {
    test(`examples/${example}, built by gobuild.py at init, answers as test.expected says`, { skip }, () =>
      withTempDir((dir) => {
        // gobuild.py's #! names /usr/bin/python, which the runtime's image has and a machine may not.
        const compiler = join(dir, 'compile');
        writeFileSync(compiler, `#!/bin/sh\nexec python3 ${join(CHECKOUT!, 'common', 'gobuild.py')} "$@"\n`, { mode: 0o755 });
        return withLoopProxy({ env: { OW_COMPILER: compiler } }, async (proxy) => {
        const code = execFileSync('zip', ['-q', '-', ...files], { cwd: join(CHECKOUT!, 'examples', example) }).toString('base64');
        const init = await proxy.post('/init', { value: { code, binary: true, main } });
        assert.equal(init.status, 200, proxy.stderr.text);
        const answers = [await proxy.post('/run', { value: { name: 'Mike' } }), await proxy.post('/run', { value: {} })].map((res) => res.json() as Record<string, string>);
        const [mike, world] = expected(example) as Array<{ greetings: string }>;
        assert.deepEqual(answers.map((answer) => Object.values(answer)[0]), [mike!.greetings, world!.greetings]);
        });
      }));
  }

  test('examples/bash, a loop script without a compiler, answers as test.expected says', { skip: bashSkip }, () =>
    withLoopProxy({}, async (proxy) => {
      const code = readFileSync(join(CHECKOUT!, 'examples', 'bash', 'hello.sh'), 'utf8');
      assert.equal((await proxy.post('/init', { value: { code } })).status, 200, proxy.stderr.text);
      const answers = [await proxy.post('/run', { value: { name: 'Mike' } }), await proxy.post('/run', { value: {} })].map((res) => res.json());
      assert.deepEqual(answers, expected('bash'));
    }));
});
