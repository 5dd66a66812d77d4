// The OpenWhisk protocol (spec/openwhisk.md), black-box against the real proxy process.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PROXY, SENTINEL, exchange, freePort, initScript, peakRss, startProxy, withProxy, withTempDir, zipBase64 } from './helpers.ts';

const STUB_RESULT = { error: 'This is a stub action. Replace it with custom logic.' };
const INIT_FAILED = { error: 'The action failed to generate or locate a binary. See logs for details.' };
const BAD_RESULT = { error: 'The action did not return a dictionary or array.' };
const BAD_ARGUMENTS = { error: 'The action did not receive a dictionary or array as an argument.' };

// Echoes its input and logs a line on each stream.
const ECHO = `#!/bin/sh
echo 'hello stdout'
echo 'hello stderr' >&2
echo "$1"
`;

describe('init', { concurrency: true }, () => {
  test('POST /run without init → the stub result', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/run', { value: { a: 1 } });
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'application/json');
      assert.deepEqual(res.json(), STUB_RESULT);
      await proxy.sentinels(1);
      assert.match(proxy.stdout.text, /argument length: 7\nstdin input length: 7\n/);
    }));

  for (const [name, body] of [
    ['{}', {}],
    ['code: null', { value: { code: null, main: 'main', binary: false } }],
    ['empty body', ''],
  ] as const) {
    test(`POST /init ${name} → 200 OK, the stub still runs, no sentinel`, () =>
      withProxy({}, async (proxy) => {
        const res = await proxy.post('/init', body);
        assert.equal(res.status, 200);
        assert.equal(res.text, 'OK');
        const run = await proxy.post('/run', { value: {} });
        assert.deepEqual(run.json(), STUB_RESULT);
        await proxy.sentinels(1);
        assert.equal(proxy.stdout.sentinels, 1, 'a successful init writes no sentinel');
      }));
  }

  test('POST /init {"code":"","main":""} → 200 (an empty exec), then /run → 502 with the error logged', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/init', { value: { code: '', main: '' } });
      assert.equal(res.status, 200);
      assert.equal(statSync(join(proxy.dir, 'exec')).size, 0);
      const run = await proxy.post('/run', { value: {} });
      assert.equal(run.status, 502);
      assert.deepEqual(run.json(), BAD_RESULT);
      await proxy.sentinels(1);
      assert.match(proxy.stdout.text, /exec format error/);
    }));

  test('POST /init without a stub → 502, the cause on stderr, sentinels', () =>
    withProxy({ stub: false }, async (proxy) => {
      const res = await proxy.post('/init', {});
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), INIT_FAILED);
      await proxy.sentinels(1);
      assert.match(proxy.stderr.text, /exec is not an executable file/);
    }));

  test('POST /init writes exec with mode 0755', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      assert.equal(statSync(join(proxy.dir, 'exec')).mode & 0o777, 0o755);
      assert.equal(readFileSync(join(proxy.dir, 'exec'), 'utf8'), ECHO);
      assert.deepEqual(readdirSync(proxy.dir), ['exec'], 'no staging folder is left behind');
    }));

  test('a second POST /init → 403 with the message on stderr and no sentinel', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      const res = await initScript(proxy, '#!/bin/sh\necho \'{"second":true}\'\n');
      assert.equal(res.status, 403);
      assert.deepEqual(res.json(), { error: 'Cannot initialize the action more than once.' });
      const run = await proxy.post('/run', { value: { first: true } });
      assert.deepEqual(run.json(), { first: true }, 'the first action still runs');
      await proxy.sentinels(1);
      assert.equal(proxy.stderr.withoutSentinels.split('\n').filter((l) => l.includes('Cannot initialize')).length, 1);
      assert.equal(proxy.stderr.sentinels, 1, 'only the /run wrote sentinels');
    }));

  test('PROXY_ALLOW_REINIT=1 → a second init replaces the action', () =>
    withProxy({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      assert.equal((await initScript(proxy, '#!/bin/sh\necho \'{"second":true}\'\n')).status, 200);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { second: true });
    }));

  test('two overlapping inits: exactly one succeeds', () =>
    withProxy({}, async (proxy) => {
      const results = await Promise.all([initScript(proxy, ECHO), initScript(proxy, ECHO)]);
      assert.deepEqual(results.map((r) => r.status).sort(), [200, 403]);
    }));

  test('POST /init with a value that is not an object → 404 JSON error, sentinels', () =>
    withProxy({}, async (proxy) => {
      for (const body of [{ value: 'A' }, { value: null }, [1], 'null']) {
        const res = await proxy.post('/init', body);
        assert.equal(res.status, 404, JSON.stringify(body));
        assert.equal(typeof (res.json() as { error: string }).error, 'string');
      }
      await proxy.sentinels(4);
      assert.deepEqual((await proxy.post('/run', {})).json(), STUB_RESULT, 'still not initialized: the stub runs');
    }));

  test('POST /init with invalid JSON → 400 JSON error, sentinels, and a later init works', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/init', '{"value": {');
      assert.equal(res.status, 400);
      assert.match((res.json() as { error: string }).error, /not valid JSON/);
      await proxy.sentinels(1);
      assert.equal((await initScript(proxy, ECHO)).status, 200);
    }));

  test('POST /init with code that is not a string, or binary that is not a boolean → 502, cause logged; binary null is false', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await proxy.post('/init', { value: { code: 42 } })).status, 502);
      assert.equal((await proxy.post('/init', { value: { code: 'x', binary: 'yes' } })).status, 502);
      await proxy.sentinels(2);
      assert.match(proxy.stderr.text, /'code' must be a string/);
      assert.match(proxy.stderr.text, /'binary' must be a boolean, not a string/);
      assert.deepEqual((await proxy.post('/run', {})).json(), STUB_RESULT);
      assert.equal((await proxy.post('/init', { value: { code: '#!/bin/sh\necho \'{"script":true}\'\n', binary: null } })).status, 200);
      assert.deepEqual((await proxy.post('/run', {})).json(), { script: true });
    }));

  test('a zip holding exec runs; cwd, $PWD and pwd are the action directory', () =>
    withTempDir(async (src) => {
      writeFileSync(join(src, 'exec'), '#!/bin/sh\n. ./lib/helper.sh\necho "{\\"pwd\\":\\"$(pwd)\\",\\"PWD\\":\\"$PWD\\",\\"helper\\":\\"$HELPER\\"}"\n', { mode: 0o755 });
      mkdirSync(join(src, 'lib'));
      writeFileSync(join(src, 'lib', 'helper.sh'), 'HELPER=loaded\n');
      await withProxy({}, async (proxy) => {
        const init = await proxy.post('/init', { value: { code: zipBase64(src), binary: true, main: 'ignored' } });
        assert.equal(init.status, 200, proxy.stderr.text);
        const res = await proxy.post('/run', { value: {} });
        assert.deepEqual(res.json(), { pwd: proxy.dir, PWD: proxy.dir, helper: 'loaded' });
      });
    }));

  test('a compiled C binary in a zip receives its argument and returns', () =>
    withTempDir(async (src) => {
      writeFileSync(
        join(src, 'main.c'),
        '#include <stdio.h>\n#include <string.h>\nint main(int argc, char **argv) {\n' +
          '  printf("log from C\\n");\n  printf("{\\"argc\\": %d, \\"arglen\\": %zu}\\n", argc, argc > 1 ? strlen(argv[1]) : 0);\n  return 0;\n}\n',
      );
      execFileSync('cc', ['-O2', '-o', join(src, 'exec'), join(src, 'main.c')]);
      await withProxy({}, async (proxy) => {
        assert.equal((await proxy.post('/init', { value: { code: zipBase64(src), binary: true } })).status, 200);
        const res = await proxy.post('/run', { value: { name: 'C' } });
        assert.equal(res.status, 200);
        assert.deepEqual(res.json(), { argc: 2, arglen: '{"name":"C"}'.length });
        await proxy.sentinels(1);
        assert.equal(proxy.stdout.withoutSentinels, 'log from C\n');
      });
    }));
});

describe('run', { concurrency: true }, () => {
  for (const value of [{ string: 'hello' }, { string: '❄ ☃ ❄' }, { numbers: [42, 1] }, { object: { a: 'A' } }]) {
    test(`POST /run ${JSON.stringify(value)} → echoed, hello stdout/stderr logged, one sentinel pair`, () =>
      withProxy({}, async (proxy) => {
        assert.equal((await initScript(proxy, ECHO)).status, 200);
        const res = await proxy.post('/run', { value });
        assert.equal(res.status, 200);
        assert.deepEqual(res.json(), value);
        await proxy.sentinels(1);
        assert.equal(proxy.stdout.text, `hello stdout\n${SENTINEL}`);
        assert.equal(proxy.stderr.text, `hello stderr\n${SENTINEL}`);
      }));
  }

  test('POST /run {"value":"A"} → 404, sentinels only', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/run', { value: 'A' });
      assert.equal(res.status, 404);
      assert.deepEqual(res.json(), BAD_ARGUMENTS);
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, SENTINEL);
      assert.equal(proxy.stderr.text, SENTINEL);
    }));

  test('POST /run with a body that is not an object, or value null → 404; invalid JSON → 400; both with sentinels', () =>
    withProxy({}, async (proxy) => {
      for (const body of ['[1,2]', '"x"', '{"value":null}', '{"value":3}']) {
        assert.equal((await proxy.post('/run', body)).status, 404, body);
      }
      const bad = await proxy.post('/run', '{"value":');
      assert.equal(bad.status, 400);
      assert.match((bad.json() as { error: string }).error, /not valid JSON/);
      await proxy.sentinels(5);
      assert.equal(proxy.stdout.withoutSentinels, '');
    }));

  test('POST /run with an empty body runs with {}', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      assert.deepEqual((await proxy.post('/run', '')).json(), {});
    }));

  test('arrays as input and as result', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho "$1"\n')).status, 200);
      const res = await proxy.post('/run', { value: [1, 'two', { three: 3 }] });
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), [1, 'two', { three: 3 }]);
    }));

  for (const [name, output] of [
    ['plain text', 'not json'],
    ['a JSON string', '"text"'],
    ['a number', '42'],
    ['null', 'null'],
    ['nothing', ''],
  ]) {
    test(`an action printing ${name} → 502, the last line logged`, () =>
      withProxy({}, async (proxy) => {
        assert.equal((await initScript(proxy, `#!/bin/sh\necho first\necho '${output}'\n`)).status, 200);
        const res = await proxy.post('/run', { value: {} });
        assert.equal(res.status, 502);
        assert.deepEqual(res.json(), BAD_RESULT);
        await proxy.sentinels(1);
        assert.equal(proxy.stdout.withoutSentinels, `first\n${output}\n`);
      }));
  }

  test('the result is the last line, trimmed, with or without a final newline', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho log\nprintf \'  {"a":1}  \'\n')).status, 200);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { a: 1 });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.withoutSentinels, 'log\n');
    }));

  test('output ending in an empty line → that empty line is the result candidate → 502', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nprintf \'{"a":1}\\n\\n\'\n')).status, 200);
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 502);
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.withoutSentinels, '{"a":1}\n\n');
    }));

  test('unicode in source, arguments, logs and result', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\n# ❄ ☃ ❄ — größe\necho "log: ☃ $1"\necho "stderr: ❄" >&2\necho "{\\"snow\\":\\"☃\\",\\"in\\":$1}"\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const res = await proxy.post('/run', { value: { text: 'größe ❄' } });
      assert.deepEqual(res.json(), { snow: '☃', in: { text: 'größe ❄' } });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.withoutSentinels, 'log: ☃ {"text":"größe ❄"}\n');
      assert.equal(proxy.stderr.withoutSentinels, 'stderr: ❄\n');
    }));

  test('every __OW_ variable reaches the action, api_host from the container environment, logs empty', () =>
    withProxy({ env: { __OW_API_HOST: 'https://openwhisk.example' } }, async (proxy) => {
      const names = ['API_HOST', 'API_KEY', 'NAMESPACE', 'ACTION_NAME', 'ACTION_VERSION', 'ACTIVATION_ID', 'DEADLINE'];
      const code = `#!/bin/sh\nprintf '{'\n${names.map((n, i) => `printf '"${n}":"%s"${i < names.length - 1 ? ',' : ''}' "$__OW_${n}"`).join('\n')}\necho '}'\n`;
      assert.equal((await initScript(proxy, code)).status, 200);
      const res = await proxy.post('/run', {
        value: {},
        api_key: 'key',
        namespace: 'ns',
        action_name: '/ns/action',
        action_version: '0.0.1',
        activation_id: 'abc123',
        deadline: '1700000000000',
      });
      assert.deepEqual(res.json(), {
        API_HOST: 'https://openwhisk.example',
        API_KEY: 'key',
        NAMESPACE: 'ns',
        ACTION_NAME: '/ns/action',
        ACTION_VERSION: '0.0.1',
        ACTIVATION_ID: 'abc123',
        DEADLINE: '1700000000000',
      });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, SENTINEL);
      assert.equal(proxy.stderr.text, SENTINEL);
    }));

  test('activation fields nested under "activation" win over top-level ones', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho "{\\"key\\":\\"$__OW_API_KEY\\",\\"top\\":\\"$__OW_TOP\\"}"\n')).status, 200);
      const res = await proxy.post('/run', { value: {}, top: 'ignored', activation: { api_key: 'nested' } });
      assert.deepEqual(res.json(), { key: 'nested', top: '' });
    }));

  test('non-string activation values become their JSON text; nothing leaks into the next activation', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\necho "{\\"n\\":\\"$__OW_N\\",\\"b\\":\\"$__OW_B\\",\\"z\\":\\"$__OW_Z\\",\\"set\\":\\"${__OW_N+set}\\"}"\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const first = await proxy.post('/run', { value: {}, n: 42, b: true, z: null });
      assert.deepEqual(first.json(), { n: '42', b: 'true', z: '', set: 'set' });
      const second = await proxy.post('/run', { value: {} });
      assert.deepEqual(second.json(), { n: '', b: '', z: '', set: '' });
      const objects = await proxy.post('/run', { value: {}, n: { a: [1] } });
      assert.equal(objects.status, 502, 'the JSON text of an object breaks the naive JSON this script prints');
    }));

  test('the init env map reaches every activation, with every value type', () =>
    withProxy({}, async (proxy) => {
      const env = { S: 'text ❄', N: 1.5, T: true, F: false, Z: null, A: [1, 'a'], O: { k: 'v' } };
      const code = `#!/bin/sh\nfor v in S N T F Z A O; do eval "printf '%s=%s\\n' $v \\"\\$$v\\"" >&2; done\necho '{}'\n`;
      assert.equal((await initScript(proxy, code, { env })).status, 200);
      for (let i = 1; i <= 2; i++) {
        assert.equal((await proxy.post('/run', { value: {} })).status, 200);
        await proxy.sentinels(i);
      }
      const expected = 'S=text ❄\nN=1.5\nT=true\nF=false\nZ=\nA=[1,"a"]\nO={"k":"v"}\n';
      assert.equal(proxy.stderr.withoutSentinels, expected + expected);
    }));

  test('an init env that is not an object, or has a name that cannot be a variable → 502, the cause logged', () =>
    withProxy({}, async (proxy) => {
      for (const env of [[1, 2], 'x', { 'A=B': '1' }]) assert.equal((await initScript(proxy, '#!/bin/sh\necho {}\n', { env })).status, 502);
      await proxy.sentinels(3);
      assert.equal(proxy.stderr.withoutSentinels, "init env must be an object\ninit env must be an object\ninit env 'A=B' can't be an environment variable name\n");
    }));

  test('an activation field that cannot be an environment variable → 400, sentinels', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/run', { value: {}, 'a=b': 'x' });
      assert.equal(res.status, 400);
      assert.match((res.json() as { error: string }).error, /environment variable/);
      await proxy.sentinels(1);
    }));

  test('a 1 MiB argument arrives only on stdin', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\nbytes=$(wc -c | tr -d " ")\necho "{\\"argc\\":$#,\\"stdin\\":$bytes}"\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const value = { big: 'x'.repeat(1024 * 1024) };
      const res = await proxy.post('/run', { value });
      assert.deepEqual(res.json(), { argc: 0, stdin: JSON.stringify(value).length });
      const small = await proxy.post('/run', { value: { big: 'x'.repeat(131071 - 10) } });
      assert.deepEqual(small.json(), { argc: 1, stdin: 131071 }, '131071 bytes still fit in argv');
    }));

  test('an action that never reads stdin is fine with a large input', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho \'{"ok":true}\'\n')).status, 200);
      const res = await proxy.post('/run', { value: { big: 'y'.repeat(4 * 1024 * 1024) } });
      assert.deepEqual(res.json(), { ok: true });
    }));

  test('invalid UTF-8 in logs passes through unchanged; the result still parses', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, "#!/bin/sh\nprintf 'bad \\377\\376 bytes\\n'\nprintf 'err \\300\\n' >&2\necho '{\"ok\":\"\\377\"}'\n")).status, 200);
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { ok: '\ufffd' });
      await proxy.sentinels(1);
      assert.deepEqual(proxy.stdout.buffer, Buffer.concat([Buffer.from('bad \xff\xfe bytes\n', 'latin1'), Buffer.from(SENTINEL)]));
      assert.deepEqual(proxy.stderr.buffer, Buffer.concat([Buffer.from('err \xc0\n', 'latin1'), Buffer.from(SENTINEL)]));
    }));

  test('an action killed by a signal → 502 naming it, even after printing JSON; a non-zero exit with JSON is a result, the code logged', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\necho \'{"stale":true}\'\nif [ "$1" = \'{"exit":3}\' ]; then exit 3; fi\nkill -9 $$\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const killed = await proxy.post('/run', { value: {} });
      assert.equal(killed.status, 502);
      assert.deepEqual(killed.json(), { error: 'The action was terminated by signal SIGKILL. See logs for details.' });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, `{"stale":true}\n${SENTINEL}`, 'the stale result is a log line');
      assert.equal(proxy.stderr.text, `The action was terminated by signal SIGKILL.\n${SENTINEL}`);
      const exited = await proxy.post('/run', { value: { exit: 3 } });
      assert.deepEqual(exited.json(), { stale: true });
      await proxy.sentinels(2);
      assert.equal(proxy.stderr.text, `The action was terminated by signal SIGKILL.\n${SENTINEL}The action exited with code 3.\n${SENTINEL}`);
    }));

  test('the activation ends when both pipes are drained, not when exec exits: a background writer counts', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\n( sleep 0.3; echo late log >&2; echo \'{"from":"background"}\' ) &\necho \'{"from":"exec"}\'\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const res = await proxy.post('/run', { value: {} });
      assert.deepEqual(res.json(), { from: 'background' });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, `{"from":"exec"}\n${SENTINEL}`);
      assert.equal(proxy.stderr.text, `late log\n${SENTINEL}`);
    }));

  test('nesting over 1,000 levels → 400 from the scan, sentinels; 1,000 levels pass; such a result → 502, the reason logged', () =>
    withProxy({}, async (proxy) => {
      const nest = (levels: number): string => `${'['.repeat(levels)}${']'.repeat(levels)}`;
      assert.equal((await initScript(proxy, `#!/bin/sh\nif [ "$1" = '{}' ]; then echo '${nest(1001)}'; else echo "$1"; fi\n`)).status, 200);
      // The body's own object is one level: the value may nest 999 more.
      const deepest = `{"a":${nest(998)}}`;
      assert.equal((await proxy.post('/run', `{"value":${deepest}}`)).text, deepest);
      for (const body of [`{"value":{"a":${nest(999)}}}`, `{"value":{},"deadline":${nest(1000)}}`]) {
        const res = await proxy.post('/run', body);
        assert.equal(res.status, 400);
        assert.match(res.text, /^\{"error":"The request body is nested deeper than 1000 levels \(at position 10\d\d\)\."\}$/);
      }
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), BAD_RESULT);
      await proxy.sentinels(4);
      assert.match(proxy.stderr.text, /The action's result is not valid JSON: nested deeper than 1000 levels/);
      assert.ok(proxy.stdout.text.includes(nest(1001)), 'the result is in the logs');
    }));

  test('an 8 MiB result comes back whole', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\nprintf \'{"data":"\'\nhead -c 8388608 /dev/zero | tr "\\\\0" a\necho \'"}\'\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 200);
      assert.equal((res.json() as { data: string }).data.length, 8 * 1024 * 1024);
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, SENTINEL);
    }));

  test('64 MiB of log lines are forwarded in order with bounded proxy memory', async () => {
    const proxy = await startProxy({});
    try {
      proxy.stdout.countOnly = true;
      // 1 MiB lines of 'a', then the result: 64 MiB + 64 newlines of logs.
      const code = '#!/bin/sh\ni=0\nwhile [ $i -lt 64 ]; do head -c 1048576 /dev/zero | tr "\\\\0" a; echo; i=$((i+1)); done\necho \'{"done":true}\'\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const before = peakRss(proxy.child.pid!);
      const res = await proxy.post('/run', { value: {} });
      assert.deepEqual(res.json(), { done: true });
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.bytes, 64 * (1024 * 1024 + 1) + SENTINEL.length);
      const growth = peakRss(proxy.child.pid!) - before;
      // Buffering the output would cost at least its 64 MiB; streaming costs the pipe chunks the
      // garbage collector has not yet reclaimed (about 25 MiB measured here).
      assert.ok(growth < 40 * 1024 * 1024, `peak RSS grew by ${growth} bytes while forwarding 64 MiB`);
    } finally {
      await proxy.stop();
    }
  });

  test('overlapping activations run in parallel, each with its own environment', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nsleep 1\necho "{\\"id\\":\\"$__OW_ACTIVATION_ID\\",\\"in\\":$1}"\n')).status, 200);
      const started = Date.now();
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => proxy.post('/run', { value: { i }, activation_id: `a${i}` })),
      );
      const elapsed = Date.now() - started;
      results.forEach((res, i) => assert.deepEqual(res.json(), { id: `a${i}`, in: { i } }));
      // Eight 1-second activations one after another take 8 s; in parallel about 1 s.
      assert.ok(elapsed < 4000, `8 overlapping activations took ${elapsed} ms`);
      await proxy.sentinels(8);
    }));

  test('PROXY_MAX_ACTIVATIONS=2 → at most two run at once; the rest wait and run', () =>
    withTempDir((marks) =>
      withProxy({ env: { PROXY_MAX_ACTIVATIONS: '2' } }, async (proxy) => {
        // Each activation leaves a mark while it runs and reports how many marks it saw.
        const code = `#!/bin/sh\ntouch ${marks}/$$\nsleep 0.3\nn=$(ls ${marks} | wc -l)\nrm ${marks}/$$\necho "{\\"n\\":$n}"\n`;
        assert.equal((await initScript(proxy, code)).status, 200);
        const results = await Promise.all(Array.from({ length: 6 }, () => proxy.post('/run', { value: {} })));
        const seen = results.map((res) => (res.json() as { n: number }).n);
        assert.ok(seen.every((n) => n >= 1 && n <= 2), `concurrency seen: ${seen}`);
        assert.ok(seen.includes(2), `two ran together at some point: ${seen}`);
      }),
    ));
});

describe('HTTP', { concurrency: true }, () => {
  test('a relative PROXY_ACTION_DIR is the folder under the working directory, for init and run', () =>
    withProxy({ relativeActionDir: true }, async (proxy) => {
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
      assert.equal((await initScript(proxy, '#!/bin/sh\necho "{\\"pwd\\":\\"$(pwd)\\"}"\n')).status, 200);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { pwd: realpathSync(proxy.dir) });
    }));

  test('unknown paths → 404 JSON, wrong methods → 405 JSON with Allow, no sentinels', () =>
    withProxy({}, async (proxy) => {
      const notFound = await proxy.request('POST', '/nope', {});
      assert.equal(notFound.status, 404);
      assert.equal(notFound.headers['content-type'], 'application/json');
      assert.equal(typeof (notFound.json() as { error: string }).error, 'string');
      const get = await proxy.request('GET', '/run');
      assert.equal(get.status, 405);
      assert.equal(get.headers.allow, 'POST');
      assert.equal(typeof (get.json() as { error: string }).error, 'string');
      assert.equal((await proxy.request('PUT', '/init', {})).status, 405);
      assert.equal(proxy.stdout.text + proxy.stderr.text, '');
    }));

  test('a body over PROXY_MAX_BODY_BYTES → 413 JSON, and the proxy goes on', () =>
    withProxy({ env: { PROXY_MAX_BODY_BYTES: '1000' } }, async (proxy) => {
      const res = await proxy.post('/run', { value: { big: 'x'.repeat(5000) } });
      assert.equal(res.status, 413);
      assert.match((res.json() as { error: string }).error, /larger than the limit of 1000 bytes/);
      const init = await proxy.post('/init', { value: { code: 'x'.repeat(5000) } });
      assert.equal(init.status, 413);
      await proxy.sentinels(2);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
    }));

  test('nothing is printed at start-up when stdout is not a terminal; a bare TCP connect-and-close logs nothing', () =>
    withProxy({}, async (proxy) => {
      for (let i = 0; i < 5; i++) await exchange(proxy.port, '');
      // A request cut off half-way gets a 400 and a close; the proxy logs nothing about it.
      assert.match(await exchange(proxy.port, 'GET /ru'), /^HTTP\/1\.1 400 /);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
      await proxy.sentinels(1);
      assert.equal(proxy.stderr.text, SENTINEL);
      assert.ok(proxy.stdout.text.endsWith(SENTINEL) && proxy.stdout.text.startsWith('This is a stub action'));
    }));

  test('requests Node cannot parse → a JSON 400 or 431 and a close; the proxy goes on', () =>
    withProxy({}, async (proxy) => {
      const answers = [
        await exchange(proxy.port, 'GARBAGE\r\n\r\n'),
        await exchange(proxy.port, `POST /run HTTP/1.1\r\nHost: x\r\nX-Big: ${'x'.repeat(20_000)}\r\n\r\n`),
        await exchange(proxy.port, 'POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n'),
      ];
      const expected = [
        [400, 'Bad Request', 'The request is not valid HTTP (HPE_INVALID_METHOD).'],
        [431, 'Request Header Fields Too Large', 'The request headers are larger than the proxy accepts (node --max-http-header-size, 16 KiB by default).'],
        [400, 'Bad Request', 'The request is not valid HTTP (HPE_INVALID_EOF_STATE).'],
      ] as const;
      for (const [i, [status, reason, error]] of expected.entries()) {
        const body = JSON.stringify({ error });
        assert.equal(answers[i], `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      }
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
    }));

  test('a request timeout → a JSON 408 and a close', () => {
    // Node checks its request timeouts every 30 s; this proxy raises the same event at once instead.
    const timeoutOnConnect = `
      const { start } = require(${JSON.stringify(PROXY)});
      start().then((server) => server.on('connection', (socket) => setTimeout(() =>
        server.emit('clientError', Object.assign(new Error('Request timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }), socket), 100)));
    `;
    return withProxy({ command: [process.execPath, '-e', timeoutOnConnect] }, async (proxy) => {
      const body = JSON.stringify({ error: 'The request did not arrive in time.' });
      const answer = await exchange(proxy.port, 'POST /run HTTP/1.1\r\nHost: x\r\n', false);
      assert.equal(answer, `HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    });
  });

  test('an unknown __OW_RUNTIME_PLATFORM is warned about on stderr and openwhisk is used', () =>
    withProxy({ env: { __OW_RUNTIME_PLATFORM: 'Lambda' } }, async (proxy) => {
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
      assert.ok(
        proxy.stderr.text.startsWith('Invalid __OW_RUNTIME_PLATFORM lambda! Valid Platforms are openwhisk and knative. Defaulting to openwhisk.\n'),
      );
    }));

  test('a bad configuration value stops the proxy with a clear message', async () => {
    const proxy = await startProxy({ env: { PROXY_MAX_ACTIVATIONS: 'many' }, waitReady: false });
    try {
      const { code } = await proxy.exited;
      assert.equal(code, 1);
      assert.match(proxy.stderr.text, /PROXY_MAX_ACTIVATIONS=many is not a whole number/);
    } finally {
      await proxy.stop();
    }
  });

  test('PORT wins over FLASK_PROXY_PORT (Knative sets PORT)', async () => {
    // A port found free can be taken by another test's connection before the proxy binds it: try another.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      try {
        return await withProxy({ env: { PORT: String(port), FLASK_PROXY_PORT: '1' } }, async (proxy) => {
          assert.equal(proxy.port, port);
          assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
        });
      } catch (error) {
        if (attempt === 3 || !/EADDRINUSE/.test((error as Error).message)) throw error;
      }
    }
  });

  test('SIGTERM while an activation runs: it finishes and answers, then the proxy exits 0', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nsleep 1\necho \'{"finished":true}\'\n')).status, 200);
      const pending = proxy.post('/run', { value: {} });
      await new Promise((resolve) => setTimeout(resolve, 300));
      proxy.child.kill('SIGTERM');
      const res = await pending;
      assert.deepEqual(res.json(), { finished: true });
      const { code, signal } = await proxy.exited;
      assert.equal(signal, null);
      assert.equal(code, 0);
      assert.equal(proxy.stdout.sentinels, 1);
    }));

  test('SIGTERM when idle exits 0 at once', () =>
    withProxy({}, async (proxy) => {
      proxy.child.kill('SIGTERM');
      assert.deepEqual(await proxy.exited, { code: 0, signal: null });
    }));
});
