// :python beside the runtime it imitates: OpenWhisk's own Python compile and launcher.py, dropped into
// :python as docs/images-and-runtimes.md says (its virtualenv module and /usr/local/bin/python added),
// run on this proxy's loop mode, and the same actions sent to both; the answers are compared, so that
// "as OpenWhisk's Python runtime answers" is measured. Needs a checkout of
// apache/openwhisk-runtime-python named by OW_RUNTIME_PYTHON; without one the test is skipped and says why.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { zipBase64 } from '../helpers.ts';
import { RUNTIME, engine, withContainer } from './container.ts';

const CHECKOUT = process.env.OW_RUNTIME_PYTHON;
const FILES = CHECKOUT && join(CHECKOUT, 'core', 'python3Action');
const skip = !FILES || !existsSync(join(FILES, 'lib', 'launcher.py'))
  ? 'OW_RUNTIME_PYTHON does not name a checkout of apache/openwhisk-runtime-python (git clone https://github.com/apache/openwhisk-runtime-python)'
  : false;

const ACTIONS: Array<[name: string, init: () => Record<string, unknown>, args: object]> = [
  ['echo', () => ({ code: 'def main(args):\n    return args\n' }), { a: 1, b: [true, null] }],
  ['unicode', () => ({ code: 'def main(args):\n    s = args["delimiter"] + " ☃ " + args["delimiter"]\n    print(s)\n    return {"winter": s}\n' }), { delimiter: '❄' }],
  ['environment', () => ({ code: 'import os\ndef main(args):\n    return {k: os.environ.get(k) for k in ["__OW_ACTIVATION_ID", "__OW_ACTION_NAME", "FROM_INIT"]}\n', env: { FROM_INIT: 'yes' } }), {}],
  ['an exception', () => ({ code: 'def main(args):\n    raise Exception("nope")\n' }), {}],
  ['an application error', () => ({ code: 'def main(args):\n    return {"error": "sorry"}\n' }), {}],
  ['an array', () => ({ code: 'def main(args):\n    return [1, "two"]\n' }), {}],
  ['a non-default entry point', () => ({ code: 'def niam(args):\n    return {"greeting": "hi"}\n', main: 'niam' }), {}],
];

test('OpenWhisk\'s Python compile and launcher on this proxy and :python answer the same actions the same way', { skip }, async () => {
  const context = mkdtempSync(join(tmpdir(), 'proxy-python-peer-'));
  const tag = `localhost/action-proxy-python-peer:${process.pid}`;
  try {
    copyFileSync(join(FILES!, 'bin', 'compile'), join(context, 'compile'));
    copyFileSync(join(FILES!, 'lib', 'launcher.py'), join(context, 'launcher.py'));
    writeFileSync(
      join(context, 'Dockerfile'),
      [
        'FROM localhost/action-proxy:python',
        'RUN if command -v apk > /dev/null; then apk add --no-cache py3-virtualenv; else apt-get update && apt-get install -y --no-install-recommends python3-virtualenv && rm -rf /var/lib/apt/lists/*; fi \\',
        ' && ln -sf "$(command -v python3)" /usr/local/bin/python',
        'COPY compile /bin/compile',
        'COPY launcher.py /lib/launcher.py',
        'RUN chmod 755 /bin/compile',
        '',
      ].join('\n'),
    );
    await engine('build', ...RUNTIME, '--tag', tag, context);
    const answers = async (image: string): Promise<unknown[]> => {
      const found: unknown[] = [];
      for (const [, init, args] of ACTIONS) {
        await withContainer([], async (container) => {
          const initialized = await container.post('/init', { value: init() });
          const res = initialized.status === 200 ? await container.post('/run', { value: args, activation_id: 'a1', action_name: '/ns/a' }) : initialized;
          found.push([res.status, res.json()]);
        }, { image });
      }
      return found;
    };
    const theirs = await answers(tag);
    const ours = await answers('localhost/action-proxy:python');
    ACTIONS.forEach(([name], i) => assert.deepEqual(ours[i], theirs[i], name));
    // A ZIP with __main__.py and a helper module: both.
    const dir = mkdtempSync(join(tmpdir(), 'proxy-python-zip-'));
    try {
      writeFileSync(join(dir, '__main__.py'), 'from helper import value\ndef main(args):\n    return {"value": value}\n');
      writeFileSync(join(dir, 'helper.py'), 'value = 42\n');
      const code = zipBase64(dir);
      for (const image of [tag, 'localhost/action-proxy:python']) {
        await withContainer([], async (container) => {
          assert.equal((await container.post('/init', { value: { code, binary: true } })).status, 200, image);
          assert.deepEqual((await container.post('/run', { value: {} })).json(), { value: 42 }, image);
        }, { image });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    rmSync(context, { recursive: true, force: true });
    await engine('rmi', '-f', tag).catch(() => undefined);
  }
});
