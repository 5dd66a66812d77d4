// Action-loop mode (spec/actionloop.md), black-box against the real proxy process with PROXY_ACTION_LOOP=1.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { SENTINEL, alive, eventually, initScript, startProxy, withProxy, withTempDir, zipBase64, type ProxyOptions, type RunningProxy } from './helpers.ts';

const EXITED = { error: 'The action exited before returning a result. See logs for details.' };
const CANNOT_START = { error: 'Cannot start action. Check logs for details.' };

// A loop action: counts its activations, logs a line for each, answers with the count and the message.
const COUNTER = `#!/bin/bash
n=0
while IFS= read -r line; do
  n=$((n+1))
  echo "log $n"
  echo "err $n" >&2
  echo "{\\"n\\":$n,\\"pid\\":$$,\\"message\\":$line}" >&3
done
`;

function loop<T>(options: ProxyOptions & { env?: Record<string, string> }, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  return withProxy({ ...options, env: { PROXY_ACTION_LOOP: '1', ...options.env } }, fn);
}

/** The action processes a proxy has now (its children). */
function children(proxy: RunningProxy): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(proxy.child.pid)]).toString().trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Installs `script` (it answers its pid once, then goes idle in its own way), runs it, waits, and checks
 * that the next activation is answered by another process; returns the first process's pid.
 */
async function answeredByAnother(proxy: RunningProxy, script: string): Promise<number> {
  await initScript(proxy, script);
  const first = (await proxy.post('/run', { value: {} })).json() as { pid: number };
  await new Promise((resolve) => setTimeout(resolve, 300));
  const second = await proxy.post('/run', { value: {} });
  assert.equal(second.status, 200);
  assert.notEqual((second.json() as { pid: number }).pid, first.pid);
  return first.pid;
}

describe('the protocol', { concurrency: true }, () => {
  test('one process keeps its state across runs; each message is one line with value and activation fields', () =>
    loop({}, async (proxy) => {
      assert.equal((await initScript(proxy, COUNTER)).status, 200);
      const first = (await proxy.post('/run', '{"value":{"id":12345678901234567890,"s":"a\\nb"},"activation_id":"a1","deadline":1.50}')).json() as Record<string, unknown>;
      const second = (await proxy.post('/run', { value: [1], activation: { namespace: 'ns', api_key: 'k' } })).json() as Record<string, unknown>;
      assert.equal(first.n, 1);
      assert.equal(second.n, 2);
      assert.equal(first.pid, second.pid, 'the same process');
      assert.deepEqual(second.message, { value: [1], namespace: 'ns', api_key: 'k' }, 'nested fields are lifted');
      // The message as the action read it: the texts as sent, one line.
      const raw = await proxy.post('/run', '{"value":{"id":12345678901234567890, "s":"a\\nb"},\n"deadline":1.50}');
      assert.match(raw.text, /"message":\{"value":\{"id":12345678901234567890,"s":"a\\nb"\},"deadline":1\.50\}\}$/);
      await proxy.sentinels(3);
      assert.equal(proxy.stdout.text, `log 1\n${SENTINEL}log 2\n${SENTINEL}log 3\n${SENTINEL}`);
      assert.equal(proxy.stderr.text, `err 1\n${SENTINEL}err 2\n${SENTINEL}err 3\n${SENTINEL}`);
    }));

  test('a 1 MiB argument arrives whole in the line', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nwhile IFS= read -r line; do echo "{\\"length\\":${#line}}" >&3; done\n');
      const big = 'x'.repeat(1024 * 1024);
      const res = await proxy.post('/run', { value: { big } });
      assert.deepEqual(res.json(), { length: `{"value":{"big":"${big}"}}`.length });
    }));

  test('logs written before the result line come before that activation\'s sentinels, however much', () =>
    loop({}, async (proxy) => {
      proxy.stdout.countOnly = false;
      const code = '#!/bin/bash\nwhile IFS= read -r line; do head -c 300000 /dev/zero | tr "\\\\0" a; echo; echo tail-$line; echo \'{"ok":1}\' >&3; done\n';
      await initScript(proxy, code);
      for (let i = 0; i < 5; i++) {
        await proxy.post('/run', { value: { i } });
        await proxy.sentinels(i + 1);
        assert.ok(proxy.stdout.text.endsWith(`tail-{"value":{"i":${i}}}\n${SENTINEL}`), `activation ${i}: its last log line just before its sentinel; the log ends ${JSON.stringify(proxy.stdout.text.slice(-120))}`);
      }
    }));

  test('logs before the result line come before the sentinels even while the proxy\'s own log is backed up', () =>
    loop({}, async (proxy) => {
      const code = '#!/bin/bash\nwhile IFS= read -r line; do head -c 2000000 /dev/zero | tr "\\\\0" b; echo; echo tail-$line; echo \'{"ok":1}\' >&3; done\n';
      await initScript(proxy, code);
      // Stop reading the proxy's stdout: its pipe fills and it has to hold the action's output back
      // (and so the action, which can't write its result before its logs are out).
      proxy.child.stdout!.pause();
      const answer = proxy.post('/run', { value: { held: 1 } });
      await new Promise((resolve) => setTimeout(resolve, 500));
      proxy.child.stdout!.resume();
      assert.deepEqual((await answer).json(), { ok: 1 });
      await proxy.sentinels(1);
      assert.ok(proxy.stdout.text.endsWith(`tail-{"value":{"held":1}}\n${SENTINEL}`), `the log ends ${JSON.stringify(proxy.stdout.text.slice(-100))}`);
    }));

  test('a result does not wait for the logs before it: with the proxy\'s own log backed up it is answered, the sentinels come after those logs', () =>
    loop({}, async (proxy) => {
      // 300 KB of logs: more than the test's reader and the proxy's stdout pipe take while paused (~200 KB
      // here), less than the action can still write with the proxy holding the rest of its output back.
      const code = '#!/bin/bash\nwhile IFS= read -r line; do head -c 300000 /dev/zero | tr "\\\\0" b; echo; echo tail-$line; echo \'{"ok":1}\' >&3; done\n';
      await initScript(proxy, code);
      // Stop reading the proxy's stdout: its pipe fills and it has to hold the action's output back.
      proxy.child.stdout!.pause();
      const answer = await Promise.race([proxy.post('/run', { value: { held: 1 } }), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer while the proxy\'s log was backed up')), 10_000).unref())]);
      assert.deepEqual(answer.json(), { ok: 1 });
      proxy.child.stdout!.resume();
      await proxy.sentinels(1);
      assert.ok(proxy.stdout.text.endsWith(`tail-{"value":{"held":1}}\n${SENTINEL}`), `the log ends ${JSON.stringify(proxy.stdout.text.slice(-100))}`);
    }));

  test('a bad result line → 502, logged; the next run answers normally (no desync)', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nn=0\nwhile read -r line; do n=$((n+1)); if [ $n = 1 ]; then echo "not json" >&3; else echo "{\\"n\\":$n}" >&3; fi; done\n');
      const bad = await proxy.post('/run', { value: {} });
      assert.equal(bad.status, 502);
      assert.deepEqual(bad.json(), { error: 'The action did not return a dictionary or array.' });
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { n: 2 });
      await proxy.sentinels(2);
      assert.match(proxy.stdout.text, /^not json\n/);
    }));

  test('a stray second answer goes to the logs, never to the next activation', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nn=0\nwhile read -r line; do n=$((n+1)); echo "{\\"n\\":$n}" >&3; echo "{\\"stray\\":$n}" >&3; done\n');
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { n: 1 });
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { n: 2 });
      await proxy.sentinels(2);
      assert.match(proxy.stdout.text, /\{"stray":1\}/);
    }));

  test('a crash mid-activation → 502 with the status logged; the next run gets a fresh process', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nwhile read -r line; do if [[ $line == *crash* ]]; then echo dying; exit 3; fi; echo "{\\"pid\\":$$}" >&3; done\n');
      const before = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      const crashed = await proxy.post('/run', { value: { crash: true } });
      assert.equal(crashed.status, 502);
      assert.deepEqual(crashed.json(), EXITED);
      const after = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      assert.notEqual(after.pid, before.pid);
      await proxy.sentinels(3);
      assert.match(proxy.stderr.text, /The action process \d+ exited with code 3\.\n/);
      assert.match(proxy.stdout.text, /dying\n/);
    }));

  test('a process that exits while idle is dropped; the next activation is answered normally', () =>
    loop({}, async (proxy) => {
      await answeredByAnother(proxy, '#!/bin/bash\nread -r line; echo "{\\"pid\\":$$}" >&3; sleep 0.1; exit 0\n');
      await proxy.sentinels(2); // the exit was logged before the second activation began
      assert.match(proxy.stderr.text, /exited with code 0 while idle/);
    }));

  test('a process that closed its input while idle: the message it could not take goes to a fresh process; the old one is stopped', () =>
    loop({}, async (proxy) => {
      const first = await answeredByAnother(proxy, '#!/bin/bash\nread -r line; echo "{\\"pid\\":$$}" >&3; exec 0<&-; sleep 30\n');
      assert.ok(await eventually(() => !alive(first), 5_000), 'the process that closed its input is stopped');
    }));

  test('fd 3 closed with a partial line: that is the answer; the process is replaced', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nread -r line; printf \'{"pid":%s}\' $$ >&3; exec 3>&-; sleep 30\n');
      const first = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      const second = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      assert.notEqual(first.pid, second.pid);
    }));

  test('a result line over PROXY_MAX_RESULT_BYTES → 502; the process is replaced', () =>
    loop({ env: { PROXY_MAX_RESULT_BYTES: '100' } }, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nwhile read -r line; do if [[ $line == *big* ]]; then head -c 100000 /dev/zero | tr "\\\\0" a >&3; echo >&3; fi; echo "{\\"pid\\":$$}" >&3; done\n');
      const before = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      const big = await proxy.post('/run', { value: { big: 1 } });
      assert.deepEqual(big.json(), { error: 'The action\'s result is larger than the limit of 100 bytes (PROXY_MAX_RESULT_BYTES).' });
      const after = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      assert.notEqual(after.pid, before.pid);
    }));

  test('8 overlapping slow activations each get a process and finish in about the time of one', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nwhile IFS= read -r line; do sleep 0.5; echo "{\\"pid\\":$$,\\"message\\":$line}" >&3; done\n');
      await proxy.post('/run', { value: { warm: true } });
      const started = Date.now();
      const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => proxy.post('/run', { value: { i } })));
      const elapsed = Date.now() - started;
      answers.forEach((res, i) => assert.deepEqual((res.json() as { message: unknown }).message, { value: { i } }));
      assert.equal(new Set(answers.map((res) => (res.json() as { pid: number }).pid)).size, 8);
      assert.ok(elapsed < 2500, `8 activations of 0.5 s took ${elapsed} ms (one at a time: 4000 ms)`);
    }));

  test('PROXY_MAX_ACTIVATIONS=2 caps the processes; the rest wait', () =>
    loop({ env: { PROXY_MAX_ACTIVATIONS: '2' } }, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\nwhile IFS= read -r line; do sleep 0.2; echo "{\\"pid\\":$$}" >&3; done\n');
      const answers = await Promise.all(Array.from({ length: 6 }, () => proxy.post('/run', { value: {} })));
      assert.equal(new Set(answers.map((res) => (res.json() as { pid: number }).pid)).size, 2);
    }));
});

describe('init', { concurrency: true }, () => {
  test('a zip holding a loop exec', () =>
    withTempDir(async (folder) => {
      writeFileSync(join(folder, 'exec'), COUNTER, { mode: 0o755 });
      await loop({}, async (proxy) => {
        assert.equal((await proxy.post('/init', { value: { binary: true, code: zipBase64(folder) } })).status, 200);
        assert.equal(((await proxy.post('/run', { value: {} })).json() as { n: number }).n, 1);
      });
    }));

  test('no init: /run starts the image\'s own exec; the stub is not a loop program → the crash 502', () =>
    loop({}, async (proxy) => {
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), EXITED);
    }));

  test('acks: accepted, refused, exit before the ack, no ack in time; a failed init keeps the old processes', () =>
    loop({ env: { OW_WAIT_FOR_ACK: '1', PROXY_ACK_TIMEOUT_SECONDS: '1', PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      const acked = `#!/bin/bash\n[ "$__OW_WAIT_FOR_ACK" = 1 ] && echo '{"ok": true}' >&3\n${COUNTER.slice(12)}`;
      assert.equal((await initScript(proxy, acked)).status, 200);
      const first = (await proxy.post('/run', { value: {} })).json() as { pid: number; n: number };
      const failures = [
        ['#!/bin/bash\necho \'{"ok": false}\' >&3\nsleep 30\n', /its ack was "\{\\"ok\\": false\}", not \{"ok": true\}/],
        ['#!/bin/bash\nexit 4\n', /The action did not start: The action process \d+ exited with code 4\.\nCommand exited abruptly during initialization\.\n/],
        ['#!/bin/bash\nsleep 30\n', /no ack on fd 3 within 1 s \(PROXY_ACK_TIMEOUT_SECONDS\)/],
      ] as const;
      for (const [index, [code, cause]] of failures.entries()) {
        const res = await initScript(proxy, code);
        assert.equal(res.status, 502);
        assert.deepEqual(res.json(), CANNOT_START);
        await proxy.sentinels(2 + index); // the cause is written before them
        assert.match(proxy.stderr.text, cause);
      }
      const later = (await proxy.post('/run', { value: {} })).json() as { pid: number; n: number };
      assert.deepEqual([later.pid, later.n], [first.pid, 2], 'the first action\'s process, still counting');
    }));

  test('a successful re-init stops the old processes', () =>
    loop({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      await initScript(proxy, COUNTER);
      const old = ((await proxy.post('/run', { value: {} })).json() as { pid: number }).pid;
      await initScript(proxy, COUNTER.replace('"n\\":$n', '"n\\":$n,\\"second\\":true'));
      const res = (await proxy.post('/run', { value: {} })).json() as { second: boolean; pid: number };
      assert.equal(res.second, true);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.ok(!children(proxy).includes(old), 'the old process is gone');
    }));

  test('OW_EXECUTION_ENV: exec.env must match; the action gets __OW_EXECUTION_ENV', () =>
    withTempDir(async (folder) => {
      writeFileSync(join(folder, 'exec'), '#!/bin/bash\nwhile read -r l; do echo "{\\"env\\":\\"$__OW_EXECUTION_ENV\\"}" >&3; done\n', { mode: 0o755 });
      await loop({ env: { OW_EXECUTION_ENV: 'openwhisk/action-python-v3.11', PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
        writeFileSync(join(folder, 'exec.env'), 'openwhisk/action-python-v3.9\n');
        const mismatch = await proxy.post('/init', { value: { binary: true, code: zipBase64(folder) } });
        assert.equal(mismatch.status, 502);
        await proxy.sentinels(1);
        assert.match(proxy.stderr.text, /exec\.env is "openwhisk\/action-python-v3\.9"; OW_EXECUTION_ENV is "openwhisk\/action-python-v3\.11"/);
        writeFileSync(join(folder, 'exec.env'), ' openwhisk/action-python-v3.11\n');
        assert.equal((await proxy.post('/init', { value: { binary: true, code: zipBase64(folder) } })).status, 200);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { env: 'openwhisk/action-python-v3.11' });
      });
    }));

  for (const mode of ['loop', 'per-activation'] as const) {
    test(`OW_COMPILER (${mode} mode) builds sources into exec; a failing compiler leaves the previous action`, () =>
      withTempDir(async (folder) => {
        // A "compiler" that turns main.body (or exec when it is not a program) into a bash exec.
        const compiler = join(folder, 'compile');
        writeFileSync(compiler, `#!/bin/bash
main=$1; src=$2; out=$3
echo "compiling $main from $(ls $src | tr '\\n' ' ')"
if grep -q FAIL "$src"/*; then echo "syntax error" >&2; exit 7; fi
body=$(cat "$src"/main.body 2>/dev/null || cat "$src"/exec)
printf '#!/bin/bash\\n%s\\n' "$body" > "$out/exec"; chmod +x "$out/exec"
`, { mode: 0o755 });
        const body = mode === 'loop' ? 'while read -r l; do echo "{\\"built\\":\\"$1\\"}" >&3; done' : 'echo "{\\"built\\":true}"';
        const env: Record<string, string> = { OW_COMPILER: compiler, PROXY_ALLOW_REINIT: '1', PROXY_ACTION_LOOP: mode === 'loop' ? '1' : '0' };
        await withProxy({ env }, async (proxy) => {
          const built = await proxy.post('/init', { value: { code: body, main: 'hello' } });
          assert.equal(built.status, 200, proxy.stderr.text);
          const expected = mode === 'loop' ? { built: '' } : { built: true };
          assert.deepEqual((await proxy.post('/run', { value: {} })).json(), expected);
          await proxy.sentinels(1);
          assert.match(proxy.stdout.text, /compiling hello from exec/);
          const failed = await proxy.post('/init', { value: { code: 'FAIL' } });
          assert.equal(failed.status, 502);
          await proxy.sentinels(2);
          assert.match(proxy.stderr.text, /syntax error\n.*the compiler \(OW_COMPILER=.*\) exited with code 7/s);
          assert.deepEqual((await proxy.post('/run', { value: {} })).json(), expected, 'the previous action');
          // A script that is a program already is not compiled.
          const script = mode === 'loop' ? '#!/bin/bash\nwhile read -r l; do echo \'{"script":1}\' >&3; done\n' : '#!/bin/sh\necho \'{"script":1}\'\n';
          assert.equal((await proxy.post('/init', { value: { code: script } })).status, 200);
          assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { script: 1 });
          await proxy.sentinels(4);
          assert.equal(proxy.stdout.text.match(/compiling/g)?.length, 2);
        });
      }));
  }

  test('with OW_COMPILER an init without code is a 403 "Missing main/no code to execute."; code "" goes to the compiler', () =>
    withTempDir(async (folder) => {
      const compiler = join(folder, 'compile');
      writeFileSync(compiler, '#!/bin/bash\necho "compiling [$(cat "$2/exec")]"\nprintf \'#!/bin/bash\\nwhile read -r l; do echo "{}" >&3; done\\n\' > "$3/exec"\n', { mode: 0o755 });
      await loop({ env: { OW_COMPILER: compiler } }, async (proxy) => {
        for (const value of [{}, { code: null }]) {
          const res = await proxy.post('/init', { value });
          assert.equal(res.status, 403);
          assert.deepEqual(res.json(), { error: 'Missing main/no code to execute.' });
        }
        assert.equal((await proxy.post('/init', { value: { code: '' } })).status, 200, proxy.stderr.text);
        assert.match(proxy.stdout.text, /compiling \[\]/);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), {});
      });
    }));

  test('the compiler gets src and bin side by side in a fresh folder: a Go-style package beside main builds', () =>
    withTempDir(async (folder) => {
      // Like OpenWhisk's gobuild.py: GOPATH is the source folder's parent, packages are found under src/.
      const compiler = join(folder, 'compile');
      writeFileSync(compiler, `#!/bin/bash
main=$1; src=$2; out=$3; gopath=$(dirname "$src")
[ "$(basename "$src")" = src ] && [ "$out" = "$gopath/bin" ] || { echo "unexpected folders: $src $out" >&2; exit 1; }
[ -f "$gopath/src/hello/hello.go" ] || { echo 'cannot find package "hello"' >&2; exit 1; }
message=$(grep -o '"[^"]*"' "$gopath/src/hello/hello.go")
cat > "$out/exec" <<EOF
#!/bin/bash
echo '{"main":"$main","hello":$message}'
EOF
chmod +x "$out/exec"
`, { mode: 0o755 });
      const sources = join(folder, 'action');
      execFileSync('mkdir', ['-p', join(sources, 'hello')]);
      writeFileSync(join(sources, 'main.go'), 'package main\nimport "hello"\nfunc Main(a map[string]interface{}) map[string]interface{} { return hello.Hello() }\n');
      writeFileSync(join(sources, 'hello', 'hello.go'), 'package hello\nfunc Hello() string { return "from a package" }\n');
      await withProxy({ env: { OW_COMPILER: compiler } }, async (proxy) => {
        const res = await proxy.post('/init', { value: { binary: true, main: 'Main', code: zipBase64(sources) } });
        assert.equal(res.status, 200, proxy.stderr.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { main: 'Main', hello: 'from a package' });
      });
    }));

  test('PROXY_ACTION_LOOP other than 0 or 1 stops the proxy at start-up, naming the variable', async () => {
    const proxy = await startProxy({ env: { PROXY_ACTION_LOOP: 'yes' }, waitReady: false });
    assert.equal((await proxy.exited).code, 1);
    assert.match(proxy.stderr.text, /PROXY_ACTION_LOOP=yes/);
    await proxy.stop();
  });
});

describe('around the loop', { concurrency: true }, () => {
  test('Knative in loop mode: a web request is one line whose value holds the __ow_ fields', () =>
    loop({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: COUNTER, __OW_HTTP_METHODS: 'GET' } }, async (proxy) => {
      const res = await proxy.request('GET', '/p/q?a=1');
      const { n, message } = res.json() as { n: number; message: { value: Record<string, unknown> } };
      assert.equal(n, 1);
      assert.equal(message.value.a, '1');
      assert.equal(message.value.__ow_path, '/p/q');
      assert.equal(res.headers['access-control-allow-origin'], '*');
      assert.equal(((await proxy.request('GET', '/')).json() as { n: number }).n, 2);
    }));

  test('SIGTERM lets the running activation finish, then stops every action process', () =>
    loop({}, async (proxy) => {
      await initScript(proxy, '#!/bin/bash\n(sleep 60) &\nwhile read -r l; do sleep 0.3; echo \'{"done":true}\' >&3; done\n');
      await Promise.all([proxy.post('/run', { value: {} }), proxy.post('/run', { value: {} })]);
      const pids = children(proxy);
      assert.equal(pids.length, 2);
      const running = proxy.post('/run', { value: {} });
      await new Promise((resolve) => setTimeout(resolve, 100));
      proxy.child.kill('SIGTERM');
      assert.deepEqual((await running).json(), { done: true });
      assert.deepEqual(await proxy.exited, { code: 0, signal: null });
      const alive = pids.filter((pid) => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      });
      assert.deepEqual(alive, []);
      assert.doesNotMatch(proxy.stderr.text, /while idle/, 'its own stops are not reported as exits');
    }));

  test('a Python launcher written the way OpenWhisk\'s Python runtime reads and answers', () =>
    loop({}, async (proxy) => {
      // Like actionloop's launcher.py: read a line, set __OW_* from the message, call main, write fd 3.
      const launcher = `#!/usr/bin/env python3
import os, sys, json
def main(args):
    return {"greeting": "Hello " + args.get("name", "stranger"), "id": args.get("id"), "activation": os.environ.get("__OW_ACTIVATION_ID")}
out = os.fdopen(3, "wb")
for line in sys.stdin:
    message = json.loads(line)
    for key, value in message.items():
        if key != "value":
            os.environ["__OW_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
    print("calling main", flush=True)
    result = main(message.get("value", {}))
    out.write(json.dumps(result).encode("utf-8") + b"\\n")
    out.flush()
`;
      assert.equal((await initScript(proxy, launcher)).status, 200);
      const res = await proxy.post('/run', '{"value":{"name":"Ada","id":12345678901234567890},"activation_id":"act-1"}');
      assert.deepEqual(res.json(), { greeting: 'Hello Ada', id: 12345678901234567890, activation: 'act-1' });
      assert.match(res.text, /"id": 12345678901234567890/, 'Python kept the big integer');
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, `calling main\n${SENTINEL}`);
    }));
});
