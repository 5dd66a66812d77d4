// The image variants and the runtimes built on the image (spec/delivery.md): :skeleton runs what
// openwhisk/dockerskeleton scripts use, :latest stays slim, and examples/python and examples/nodejs
// (:python, :nodejs) answer as the OpenWhisk runtimes they imitate. Built by `npm run test:image`.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { SENTINEL, zipBase64 } from '../helpers.ts';
import { ENGINE, LIMITS, RUNTIME, withContainer, type Container } from './container.ts';

const TAG = (name: string): string => `localhost/action-proxy:${name}`;

/** Runs `command` in a new container of `image` (the entry point runs anything that isn't a '-' option). */
function runIn(image: string, command: string): string {
  return execFileSync(ENGINE, ['run', '--rm', ...RUNTIME, ...LIMITS, image, 'sh', '-c', command]).toString();
}

/** Inits `code` (a script, or base64 of an archive with `binary`) in a new container of `image`, then runs each of `runs`. */
async function withAction<T>(image: string, init: Record<string, unknown>, fn: (container: Container) => Promise<T>): Promise<T> {
  return withContainer(
    [],
    async (container) => {
      const res = await container.post('/init', { value: init });
      assert.equal(res.status, 200, `${res.text}\n${await container.logs()}`);
      return fn(container);
    },
    { image },
  );
}

/** A folder with `files` in it, for archives. */
function folder(files: Record<string, string>): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'proxy-runtime-'));
  for (const [name, contents] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), contents);
  }
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

async function zipOf<T>(files: Record<string, string>, fn: (code: string) => Promise<T>): Promise<T> {
  const made = folder(files);
  try {
    return await fn(zipBase64(made.dir));
  } finally {
    made.remove();
  }
}

describe(':skeleton and :latest', { concurrency: 2 }, () => {
  test(':skeleton runs python3, perl, jq and curl scripts as openwhisk/dockerskeleton does', async () => {
    const scripts: Array<[string, string, unknown]> = [
      ['python3', '#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps({"python": json.loads(sys.argv[1])["n"] + 1}))\n', { python: 2 }],
      ['perl', '#!/usr/bin/perl\nmy $n = 41; print "{\\"perl\\":" . ($n + 1) . "}\\n";\n', { perl: 42 }],
      ['jq', '#!/bin/bash\necho "$1" | jq -c \'{jq: .n}\'\n', { jq: 1 }],
      // curl calls a server in the container: the proxy itself.
      ['curl', '#!/bin/bash\ncurl -s -o /dev/null -w \'{"curl":%{http_code}}\\n\' -XPOST http://127.0.0.1:8080/nothing\n', { curl: 404 }],
    ];
    for (const [, code, expected] of scripts) {
      await withAction(TAG('skeleton'), { code }, async (container) => {
        assert.deepEqual((await container.post('/run', { value: { n: 1 } })).json(), expected);
      });
    }
    assert.match(runIn(TAG('skeleton'), 'for tool in wget zip unzip git openssl sed ssh; do command -v $tool > /dev/null || echo missing $tool; done; echo checked'), /^checked\n$/);
  });

  test(':latest has none of them (perl-base aside, which the local stand-in base carries)', () => {
    assert.equal(runIn(TAG('latest'), 'for tool in python3 jq curl wget zip git; do command -v $tool; done; true'), '');
  });
});

describe(':python, as OpenWhisk\'s Python runtime answers', { concurrency: 2 }, () => {
  test('def main(args) from a script: the value, init env and __OW_ fields, logs before the sentinels', () =>
    withAction(TAG('python'), { code: 'import os\ndef main(args):\n    print("a log line")\n    return {"greeting": "hello " + args.get("name", "stranger"), "id": os.environ["__OW_ACTIVATION_ID"], "init": os.environ["FROM_INIT"]}\n', env: { FROM_INIT: 'yes' } }, async (container) => {
      const res = await container.post('/run', { value: { name: 'Jane' }, activation_id: 'a1' });
      assert.deepEqual(res.json(), { greeting: 'hello Jane', id: 'a1', init: 'yes' });
      const logged = new RegExp(`a log line\\n${SENTINEL}`);
      assert.match(await container.logsMatching(logged), logged);
    }));

  test('a ZIP with __main__.py, a helper module, a file read by relative path, and a non-default entry point', () =>
    zipOf(
      {
        '__main__.py': 'from helper import greet\ndef niam(args):\n    return {"greeting": greet(args["name"]), "file": open("data.txt").read()}\n',
        'helper.py': 'def greet(name):\n    return "hello " + name\n',
        'data.txt': 'this is a test string',
      },
      (code) =>
        withAction(TAG('python'), { code, binary: true, main: 'niam' }, async (container) => {
          assert.deepEqual((await container.post('/run', { value: { name: 'Jane' } })).json(), { greeting: 'hello Jane', file: 'this is a test string' });
        }),
    ));

  test('a .tar.gz with __main__.py', () => {
    const made = folder({ '__main__.py': 'def main(args):\n    return {"from": "a tarball"}\n' });
    const code = execFileSync('tar', ['-czf', '-', '-C', made.dir, '.']).toString('base64');
    made.remove();
    return withAction(TAG('python'), { code, binary: true }, async (container) => {
      assert.deepEqual((await container.post('/run', { value: {} })).json(), { from: 'a tarball' });
    });
  });

  test('a virtualenv/ in the archive: its packages import', () =>
    zipOf(
      {
        '__main__.py': 'import fancy\ndef main(args):\n    return {"fancy": fancy.VALUE}\n',
        'virtualenv/lib/python3.11/site-packages/fancy/__init__.py': 'VALUE = "from the virtualenv"\n',
      },
      (code) =>
        withAction(TAG('python'), { code, binary: true }, async (container) => {
          assert.deepEqual((await container.post('/run', { value: {} })).json(), { fancy: 'from the virtualenv' });
        }),
    ));

  test('an exception is {"error": <its text>} with the traceback in the logs; an application error and an array pass as they are', () =>
    withAction(TAG('python'), { code: 'def main(args):\n    if args.get("fail"):\n        raise ValueError("something went wrong")\n    if args.get("array"):\n        return [1, 2]\n    return {"error": "sorry"}\n' }, async (container) => {
      const failed = await container.post('/run', { value: { fail: true } });
      assert.equal(failed.status, 200);
      assert.deepEqual(failed.json(), { error: 'something went wrong' });
      const traceback = /Traceback \(most recent call last\)[^]*ValueError: something went wrong/;
      assert.match(await container.logsMatching(traceback), traceback);
      assert.deepEqual((await container.post('/run', { value: {} })).json(), { error: 'sorry' });
      assert.deepEqual((await container.post('/run', { value: { array: true } })).json(), [1, 2]);
    }));

  test('a syntax error, or an archive without __main__.py, fails the init with the cause in the logs', async () => {
    await withContainer([], async (container) => {
      const res = await container.post('/init', { value: { code: 'def main(args)\n    return {}\n' } });
      assert.equal(res.status, 502);
      assert.match(await container.logs(), /main__\.py line 1: /);
    }, { image: TAG('python') });
    await zipOf({ 'other.py': 'x = 1\n' }, (code) =>
      withContainer([], async (container) => {
        assert.equal((await container.post('/init', { value: { code, binary: true } })).status, 502);
        assert.match(await container.logs(), /no code: a script, or an archive with __main__\.py/);
      }, { image: TAG('python') }),
    );
  });
});

describe(':nodejs, as openwhisk-runtime-nodejs answers', { concurrency: 2 }, () => {
  test('function main(params): an object, a Promise, exports.main, a custom entry name; process.env as that runtime sets it; require("openwhisk")', async () => {
    const code = `
      function main(params) {
        console.log('a log line');
        return { hello: params.name, id: process.env.__OW_ACTIVATION_ID, key: process.env.__OW_API_KEY, init: process.env.FROM_INIT, openwhisk: typeof require('openwhisk') };
      }
      function later(params) { return new Promise((resolve) => setTimeout(() => resolve({ later: params.name }), 10)); }
      exports.exported = (params) => ({ exported: params.name });`;
    await withAction(TAG('nodejs'), { code, env: { FROM_INIT: 'yes' } }, async (container) => {
      assert.deepEqual((await container.post('/run', { value: { name: 'Jane' }, activation_id: 'a1', api_key: 'k' })).json(), { hello: 'Jane', id: 'a1', key: 'k', init: 'yes', openwhisk: 'function' });
      const logged = new RegExp(`a log line\\n${SENTINEL}`);
      assert.match(await container.logsMatching(logged), logged);
    });
    await withAction(TAG('nodejs'), { code, main: 'later' }, async (container) => {
      assert.deepEqual((await container.post('/run', { value: { name: 'Jane' } })).json(), { later: 'Jane' });
    });
    await withAction(TAG('nodejs'), { code, main: 'exported' }, async (container) => {
      assert.deepEqual((await container.post('/run', { value: { name: 'Jane' } })).json(), { exported: 'Jane' });
    });
  });

  test('errors: a throw is {"error": "An error has occurred: …"}, a rejection its serialized error, reject() {"error": {}}, no result {}', () =>
    withAction(
      TAG('nodejs'),
      { code: 'function main(p) { if (p.throw) throw new Error("boom"); if (p.reject) return Promise.reject(new Error("nope")); if (p.empty) return Promise.reject(); }' },
      async (container) => {
        assert.deepEqual((await container.post('/run', { value: { throw: true } })).json(), { error: 'An error has occurred: Error: boom' });
        const rejected = (await container.post('/run', { value: { reject: true } })).json() as { error: { name: string; message: string; stack: string } };
        assert.equal(rejected.error.name, 'Error');
        assert.equal(rejected.error.message, 'nope');
        assert.match(rejected.error.stack, /^Error: nope\n/);
        assert.deepEqual((await container.post('/run', { value: { empty: true } })).json(), { error: {} });
        assert.deepEqual((await container.post('/run', { value: {} })).json(), {});
      },
    ));

  test('a ZIP with package.json\'s main, and npm pack\'s .tgz of it', async () => {
    const files = { 'package.json': JSON.stringify({ name: 'zipped-action', version: '1.0.0', main: 'lib/action.js' }), 'lib/action.js': 'exports.main = (params) => ({ zipped: params.name, helper: require("./helper").value });', 'lib/helper.js': 'exports.value = 42;' };
    await zipOf(files, (code) =>
      withAction(TAG('nodejs'), { code, binary: true }, async (container) => {
        assert.deepEqual((await container.post('/run', { value: { name: 'Jane' } })).json(), { zipped: 'Jane', helper: 42 });
      }),
    );
    const made = folder(files);
    try {
      const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', made.dir], { cwd: made.dir }).toString().trim();
      await withAction(TAG('nodejs'), { code: readFileSync(join(made.dir, tgz)).toString('base64'), binary: true }, async (container) => {
        assert.deepEqual((await container.post('/run', { value: { name: 'Jane' } })).json(), { zipped: 'Jane', helper: 42 });
      });
    } finally {
      made.remove();
    }
  });
});
