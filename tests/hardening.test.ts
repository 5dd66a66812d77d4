// What an action or a client can throw at the proxy (spec/openwhisk.md, "Hardening"), black-box against
// the real proxy process. Each test starts from a reproduction that once lost data, crashed or stalled it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { MiB, PROXY, SENTINEL, exchange, initScript, openFds, peakRss, startProxy, withProxy, withTempDir, zipBase64 } from './helpers.ts';

// Prints its argument back: the result is exactly the text it was given.
const ECHO = '#!/bin/sh\nprintf "%s\\n" "$1"\n';

describe('arguments arrive exactly as sent', { concurrency: true }, () => {
  test('big integers, number spellings, key order and escapes round-trip byte for byte', () =>
    withProxy({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      const value = '{"id":12345678901234567890,"huge":1e400,"price":1.10,"neg":-0,"b":2,"1":1,"s":"\\u00e9\\n\\/","nested":[1E+2,{"z":0.0}]}';
      const res = await proxy.post('/run', `{"value":${value}}`);
      assert.equal(res.status, 200);
      assert.equal(res.text, value);
      // Over stdin only (past MAX_ARG_STRLEN), the same bytes.
      const padded = `{"pad":"${'x'.repeat(140_000)}","id":12345678901234567890}`;
      await initScript(proxy, '#!/bin/sh\ncat\n', {});
      const viaStdin = await proxy.post('/run', `{"value":${padded}}`);
      assert.equal(viaStdin.text, padded);
    }));

  for (const loop of [false, true]) {
    test(`results come back byte for byte, ASCII or not, small or large, not UTF-8 at all (${loop ? 'loop' : 'per-activation'} mode)`, () =>
      withProxy({ env: { PROXY_ALLOW_REINIT: '1', ...(loop ? { PROXY_ACTION_LOOP: '1' } : {}) } }, async (proxy) => {
        // Small ASCII results are sent as text, the others as their bytes (protocol.ts, resultBody): 16 KiB is the line.
        const echo = loop ? '#!/bin/bash\nwhile IFS= read -r line; do printf "%s\\n" "${line:9:${#line}-10}" >&3; done\n' : '#!/bin/sh\ncat\necho\n';
        assert.equal((await initScript(proxy, echo)).status, 200);
        const pad = (bytes: number): string => `{"pad":"${'x'.repeat(bytes - 10)}"}`;
        for (const value of ['{"a":[1,2.50,"\\u00e9"]}', '{"s":"é ü ✓"}', pad(16 * 1024), pad(16 * 1024 + 1), pad(200_000)]) {
          const res = await proxy.post('/run', `{"value":${value}}`);
          assert.equal(res.status, 200);
          assert.deepEqual(res.body, Buffer.from(value), `${value.slice(0, 40)}…, ${Buffer.byteLength(value)} bytes`);
          assert.equal(res.headers['content-length'], String(Buffer.byteLength(value)));
        }
        // Bytes that are not UTF-8 inside a string: the result parses, and its bytes go out unchanged.
        assert.equal((await initScript(proxy, loop ? "#!/bin/bash\nwhile IFS= read -r line; do printf ' {\"s\":\"\\377\"}\\n' >&3; done\n" : "#!/bin/sh\nprintf ' {\"s\":\"\\377\"}\\n'\n")).status, 200);
        const raw = await proxy.post('/run', { value: {} });
        assert.deepEqual(raw.body, Buffer.from('{"s":"\xff"}', 'latin1'));
      }));
  }

  test('whitespace between tokens may go; a newline in the body never splits the argument', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nprintf "%s" "$1" | tr "\\n" "~"; echo\n')).status, 200);
      const res = await proxy.post('/run', '{ "value" : {\n  "id" : 12345678901234567890 ,\n  "s" : "a b" } }');
      assert.equal(res.status, 502, 'the argument is passed with its newlines, so tr makes it unparseable here');
      const compact = await proxy.post('/run', '{"value":{"id":12345678901234567890}}');
      assert.equal(compact.text, '{"id":12345678901234567890}');
    }));

  test('activation fields and the init env keep their numbers in the environment', () =>
    withProxy({}, async (proxy) => {
      const code = '#!/bin/sh\necho "{\\"deadline\\":\\"$__OW_DEADLINE\\",\\"big\\":\\"$BIG\\",\\"obj\\":\\"$(printf %s "$OBJ" | sed s/\\"/\\\\\\\\\\"/g)\\"}"\n';
      const init = await proxy.post('/init', `{"value":{"code":${JSON.stringify(code)},"env":{"BIG":98765432109876543210,"OBJ":{"n": 1.50}}}}`);
      assert.equal(init.status, 200, init.text);
      const res = await proxy.post('/run', '{"value":{},"deadline":12345678901234567890}');
      assert.deepEqual(res.json(), { deadline: '12345678901234567890', big: '98765432109876543210', obj: '{"n":1.50}' });
    }));
});

describe('nesting and size', { concurrency: true }, () => {
  test('10 million levels of nesting → 400 at once, bounded memory, and another /run is answered meanwhile', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nsleep 0.2\necho \'{"other":true}\'\n')).status, 200);
      const before = peakRss(proxy.child.pid!);
      const deep = `{"value":{"a":${'['.repeat(10_000_000)}}}`;
      const [refused, other] = await Promise.all([proxy.post('/run', deep), proxy.post('/run', { value: {} })]);
      assert.equal(refused.status, 400);
      assert.match(refused.text, /nested deeper than 1000 levels/);
      assert.deepEqual(other.json(), { other: true });
      const growth = peakRss(proxy.child.pid!) - before;
      // The 10 MB body is held once as bytes and once as text; JSON.parse took over a gigabyte.
      assert.ok(growth < 120 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    }));

  test('a 600 MB last line → 502 naming the limit, forwarded to the logs; the proxy lives, memory bounded', async () => {
    const proxy = await startProxy({});
    try {
      proxy.stdout.countOnly = true;
      const lineBytes = 600 * 1000 * 1000;
      assert.equal((await initScript(proxy, `#!/bin/sh\nhead -c ${lineBytes} /dev/zero | tr "\\\\0" a\n`)).status, 200);
      const res = await proxy.post('/run', { value: {} });
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), { error: `The action's result is larger than the limit of ${64 * MiB} bytes (PROXY_MAX_RESULT_BYTES).` });
      await proxy.sentinels(1);
      // The line, the newline that ends it there (the sentinel stands on a line of its own), the sentinel.
      assert.equal(proxy.stdout.bytes, lineBytes + 1 + SENTINEL.length, 'every byte of the line is in the logs, ended');
      const peak = peakRss(proxy.child.pid!);
      assert.ok(peak < 400 * MiB, `peak RSS ${(peak / MiB).toFixed(0)} MiB`);
      assert.equal((await proxy.post('/run', { value: {} })).status, 502, 'and it still answers');
    } finally {
      await proxy.stop();
    }
  });

  test('PROXY_MAX_RESULT_BYTES: a result at the limit comes back, one byte over → 502', () =>
    withProxy({ env: { PROXY_MAX_RESULT_BYTES: '1000' } }, async (proxy) => {
      // {"d":"…"} of exactly `size` bytes.
      await initScript(proxy, '#!/bin/sh\nprintf \'{"d":"\'; head -c $(($(echo "$1" | tr -dc 0-9) - 8)) /dev/zero | tr "\\\\0" x; echo \'"}\'\n');
      const atLimit = await proxy.post('/run', { value: { size: 1000 } });
      assert.equal(atLimit.status, 200, atLimit.text);
      assert.equal(atLimit.text.length, 1000);
      const over = await proxy.post('/run', { value: { size: 1001 } });
      assert.deepEqual(over.json(), { error: 'The action\'s result is larger than the limit of 1000 bytes (PROXY_MAX_RESULT_BYTES).' });
      await proxy.sentinels(2);
      assert.match(proxy.stdout.text, /^\{"d":"x{993}"\}\n/m, 'the long line went to the logs');
    }));

  test('a 200 MB log line on stderr is forwarded in pieces with bounded memory; lines under 1 MiB are never split', async () => {
    const proxy = await startProxy({});
    try {
      proxy.stderr.countOnly = true;
      const code = '#!/bin/sh\nhead -c 200000000 /dev/zero | tr "\\\\0" e >&2\necho >&2\necho \'{"ok":true}\'\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      const before = peakRss(proxy.child.pid!);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { ok: true });
      await proxy.sentinels(1);
      assert.equal(proxy.stderr.bytes, 200_000_001 + SENTINEL.length);
      const growth = peakRss(proxy.child.pid!) - before;
      assert.ok(growth < 64 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    } finally {
      await proxy.stop();
    }
  });

  test('log lines of overlapping activations under 1 MiB arrive whole', () =>
    withProxy({}, async (proxy) => {
      // Each activation writes 20 lines of 900 KiB of its own letter, in pieces.
      const code = '#!/bin/bash\nl=$(echo "$1" | cut -d\'"\' -f4)\nfor i in $(seq 20); do head -c 921600 /dev/zero | tr "\\\\0" "$l"; echo; done\necho {}\n';
      assert.equal((await initScript(proxy, code)).status, 200);
      await Promise.all(['a', 'b', 'c', 'd'].map((letter) => proxy.post('/run', { value: { l: letter } })));
      await proxy.sentinels(4);
      const lines = proxy.stdout.withoutSentinels.split('\n').filter((line) => line !== '');
      assert.equal(lines.length, 80);
      for (const line of lines) assert.match(line, /^(a{921600}|b{921600}|c{921600}|d{921600})$/);
    }));
});

describe('failures are clear and leave nothing behind', { concurrency: true }, () => {
  test('out of file descriptors → 503 naming the cause, nothing leaked, and it recovers', () =>
    withProxy({}, async (proxy) => {
      const pid = proxy.child.pid!;
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      await proxy.post('/run', { value: {} }); // libuv's one-time signal pipe, opened at the first spawn
      await new Promise((resolve) => setTimeout(resolve, 100));
      const baseline = openFds(pid);
      // Room for the request's socket, not for the action's three pipes. Only the soft limit: lowering
      // the hard one can't be undone without CAP_SYS_RESOURCE.
      const soft = /Max open files\s+(\d+)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))![1];
      execFileSync('prlimit', [`--pid=${pid}`, `--nofile=${baseline + 2}:`]);
      for (let i = 0; i < 5; i++) {
        const res = await proxy.post('/run', { value: {} });
        assert.equal(res.status, 503);
        assert.deepEqual(res.json(), { error: 'The proxy could not start the action (EMFILE). Try again.' });
      }
      execFileSync('prlimit', [`--pid=${pid}`, `--nofile=${soft}:`]);
      assert.equal((await proxy.post('/run', { value: { back: 1 } })).text, '{"back":1}');
      await proxy.sentinels(7);
      assert.doesNotMatch(proxy.stderr.text, /TypeError|    at /, 'no stack trace');
      assert.match(proxy.stderr.text, /EMFILE/);
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(openFds(pid), baseline, 'no descriptor leaked');
    }));

  test('a valid POST /run pipelined with a malformed request: the /run answer, then the 400', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nsleep 0.3\necho "$1"\n')).status, 200);
      const body = '{"value":{"n":1}}';
      const answer = await exchange(proxy.port, `POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}GARBAGE\r\n\r\n`, false);
      const statuses = [...answer.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((match) => match[1]);
      assert.deepEqual(statuses, ['200', '400']);
      assert.ok(answer.indexOf('{"n":1}') < answer.indexOf('not valid HTTP'), answer);
    }));

  test('Expect: bogus → 417 with a JSON body; Expect: 100-continue works', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.request('POST', '/run', { value: {} }, { Expect: 'bogus' });
      assert.equal(res.status, 417);
      assert.match((res.json() as { error: string }).error, /Expect: bogus/);
      const continued = await proxy.request('POST', '/run', { value: {} }, { Expect: '100-continue' });
      assert.equal(continued.status, 200);
    }));

  test('a body that is not valid UTF-8 → 400, sentinels', () =>
    withProxy({}, async (proxy) => {
      const res = await proxy.post('/run', Buffer.from('{"value":{"s":"\xff\xfe"}}', 'latin1'));
      assert.equal(res.status, 400);
      assert.deepEqual(res.json(), { error: 'The request body is not valid UTF-8.' });
      const init = await proxy.post('/init', Buffer.from('{"value":{"code":"\xc0"}}', 'latin1'));
      assert.equal(init.status, 400);
      await proxy.sentinels(2);
    }));

  test('a request aborted mid-body leaves no stack trace and no sentinels', () =>
    withProxy({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho {}\n')).status, 200);
      for (const path of ['/run', '/init']) {
        await new Promise<void>((resolve) => {
          const req = httpRequest({ host: '127.0.0.1', port: proxy.port, method: 'POST', path, headers: { 'Content-Length': '1000' } });
          req.on('error', () => {});
          req.on('close', () => resolve());
          req.write('{"value":');
          setTimeout(() => req.destroy(), 100);
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal((await proxy.post('/run', { value: {} })).status, 200);
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.text, SENTINEL);
      assert.equal(proxy.stderr.text, SENTINEL);
    }));

  test('inodes run out mid-swap: the init fails, no staging or backup folder remains, a later init works', { skip: process.getuid?.() !== 0 && 'needs root for a private mount namespace' }, () =>
    withTempDir(async (folder) => {
      const dir = join(folder, 'action');
      mkdirSync(dir);
      // A tmpfs of 5 inodes: its root and the stub leave 3, which staging plus a two-file archive fill,
      // so the backup folder of the swap can't be made.
      const script = `mount -t tmpfs -o nr_inodes=5 tmpfs "${dir}" && cp "$STUB" "${dir}/exec" && exec "$NODE" "$PROXY"`;
      const command = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script];
      const env = { PROXY_ACTION_DIR: dir, STUB: join(PROXY, '..', '..', 'action', 'exec'), NODE: process.execPath, PROXY };
      await withProxy({ command, env, stub: false }, async (proxy) => {
        const inside = `/proc/${proxy.child.pid}/root${dir}`;
        const files = join(folder, 'files');
        mkdirSync(files);
        writeFileSync(join(files, 'exec'), '#!/bin/sh\necho \'{"zip":true}\'\n', { mode: 0o755 });
        writeFileSync(join(files, 'data'), 'x');
        const failed = await proxy.post('/init', { value: { binary: true, code: zipBase64(files) } });
        assert.equal(failed.status, 502);
        await proxy.sentinels(1);
        assert.match(proxy.stderr.text, /ENOSPC/);
        assert.deepEqual(readdirSync(inside), ['exec'], 'only the stub is left');
        const retried = await initScript(proxy, '#!/bin/sh\necho \'{"script":true}\'\n');
        assert.equal(retried.status, 200, retried.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { script: true });
        assert.deepEqual(readdirSync(inside), ['exec']);
      });
    }));

  test('the shutdown grace runs out: running activations are killed with their process groups, named on stderr, exit 1', () =>
    withProxy({ env: { PROXY_SHUTDOWN_GRACE_SECONDS: '1' } }, async (proxy) => {
      const marker = `grace-${process.pid}-${Date.now()}`;
      const code = `#!/bin/bash\n(exec -a ${marker}-child sleep 60) &\nexec -a ${marker} sleep 60\n`;
      assert.equal((await initScript(proxy, code)).status, 200);
      const running = proxy.post('/run', '{"value":{},"activation_id":"a1b2"}').catch((error: unknown) => error);
      const seen = (): string[] => execFileSync('ps', ['-eo', 'args']).toString().split('\n').filter((line) => line.startsWith(marker));
      while (seen().length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
      proxy.child.kill('SIGTERM');
      assert.deepEqual(await proxy.exited, { code: 1, signal: null });
      assert.match(proxy.stderr.text, /The shutdown grace of 1 s ran out: killed the activation a1b2 \(process \d+\)\./);
      await running;
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual(seen(), [], 'the action and its background child are gone');
    }));
});
