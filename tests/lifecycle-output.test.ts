// Lifecycle (spec/lifecycle.md), part two: processes that die, pods that stop, output framing and bounded
// work per request. Black-box against the real proxy; memory is read from /proc, never inferred from time.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  MiB,
  SENTINEL,
  abandon,
  alive,
  childPids,
  eventually,
  groupMembers,
  countLines,
  initScript,
  pidIn,
  peakRss,
  startProxy,
  withLoopProxy,
  withProxy,
  withTempDir,
  type RunningProxy,
} from './helpers.ts';

const MODES = ['a process per activation', 'action-loop mode'] as const;

/** Runs `fn` with a proxy in `mode`, initialized with that mode's form of the action. */
function withAction<T>(mode: (typeof MODES)[number], action: { loop: string; process: string }, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  const loop = mode === 'action-loop mode';
  return withProxy({ env: loop ? { PROXY_ACTION_LOOP: '1' } : {} }, async (proxy) => {
    assert.equal((await initScript(proxy, loop ? action.loop : action.process)).status, 200);
    return fn(proxy);
  });
}

// Counts its runs; with "slow" in its arguments it takes a second.
const SLOW = `#!/bin/bash
echo run >> runs
case "$1" in *slow*) sleep 1 ;; esac
echo '{"ok":true}'
`;

describe("a process's children go with it", { concurrency: true }, () => {
  test('a loop process that exits leaves no background child behind', () =>
    withLoopProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nread -r line\nsleep 300 &\necho $! > bg\nexit 3\n')).status, 200);
      assert.equal((await proxy.post('/run', { value: {} })).status, 502);
      const background = pidIn(proxy, 'bg');
      assert.ok(await eventually(() => !alive(background)), 'the crashed launcher took its worker with it');
    }));

  test('SIGTERM with a busy and an idle loop process that ignores the end of its input: all of them and their groups are gone at exit', async () => {
    const proxy = await startProxy({ env: { PROXY_ACTION_LOOP: '1', PROXY_SHUTDOWN_GRACE_SECONDS: '3' } });
    try {
      const action = `#!/bin/bash
while true; do
  if IFS= read -r line; then
    case "$line" in *busy*) sleep 1 ;; esac
    echo "{\\"pid\\":$$}" >&3
  else
    sleep 300
  fi
done
`;
      assert.equal((await initScript(proxy, action)).status, 200);
      const busy = proxy.post('/run', { value: { busy: true } });
      const idle = (await proxy.post('/run', { value: {} })).json() as { pid: number };
      proxy.child.kill('SIGTERM');
      const answer = await busy;
      assert.equal(answer.status, 200, 'the running activation finished within the grace');
      const busyPid = (answer.json() as { pid: number }).pid;
      const { code } = await proxy.exited;
      assert.equal(code, 1, 'it had to kill the processes that ignored the end of their input');
      assert.deepEqual([...groupMembers(busyPid), ...groupMembers(idle.pid)], [], 'nothing of either group is left');
    } finally {
      await proxy.stop();
    }
  });

  test("a per-activation action's background child does not outlive the proxy", async () => {
    const proxy = await startProxy({});
    try {
      assert.equal((await initScript(proxy, '#!/bin/bash\nsleep 300 > /dev/null 2>&1 &\necho $! > bg\necho \'{"ok":true}\'\n')).status, 200);
      assert.equal((await proxy.post('/run', { value: {} })).status, 200);
      const background = pidIn(proxy, 'bg');
      assert.ok(alive(background), 'it runs on after its activation, as in the original');
      proxy.child.kill('SIGTERM');
      assert.equal((await proxy.exited).code, 0);
      assert.ok(await eventually(() => !alive(background), 5_000), 'gone with the proxy');
    } finally {
      await proxy.stop();
    }
  });

  // A compiler (OW_COMPILER) that hangs, its own background child beside it; both write their pids.
  const HANGING_COMPILER = `#!/bin/bash
sleep 300 &
echo $! > "$MARKS/child"
echo $$ > "$MARKS/compiler"
sleep 300
`;

  test("a compiler still running when the shutdown grace runs out is killed with its group; the init answers 502, the proxy exits 1", () =>
    withTempDir(async (marks) => {
      const compiler = join(marks, 'compile');
      writeFileSync(compiler, HANGING_COMPILER, { mode: 0o755 });
      const proxy = await startProxy({ env: { OW_COMPILER: compiler, MARKS: marks, PROXY_SHUTDOWN_GRACE_SECONDS: '1' } });
      try {
        // Not a program: the compiler builds it.
        const init = initScript(proxy, 'print("sources")');
        assert.ok(await eventually(() => existsSync(join(marks, 'compiler')) && existsSync(join(marks, 'child'))), 'the compiler started');
        const compilerPid = Number(readFileSync(join(marks, 'compiler'), 'utf8'));
        const childPid = Number(readFileSync(join(marks, 'child'), 'utf8'));
        proxy.child.kill('SIGTERM');
        const answer = await init;
        assert.equal(answer.status, 502);
        assert.equal((await proxy.exited).code, 1, 'it had to kill');
        assert.match(proxy.stderr.text, new RegExp(`The shutdown grace of 1 s ran out: killed the compiler ${compiler} \\(process ${compilerPid}\\)\\.`));
        assert.match(proxy.stderr.text, /the compiler \(OW_COMPILER=\S+\) was terminated by signal SIGKILL/);
        assert.ok(await eventually(() => !alive(compilerPid) && !alive(childPid), 5_000), 'the compiler and its child are gone');
      } finally {
        await proxy.stop();
      }
    }));

  test('a compiler that exits leaving a background child (holding its output pipes): the init ends, and the child is gone', () =>
    withTempDir(async (marks) => {
      const compiler = join(marks, 'compile');
      writeFileSync(compiler, `#!/bin/bash
printf '#!/bin/sh\\necho "{\\\\"built\\\\":true}"\\n' > "$3/exec"
chmod 755 "$3/exec"
sleep 300 &
echo $! > "$MARKS/child"
`, { mode: 0o755 });
      await withProxy({ env: { OW_COMPILER: compiler, MARKS: marks } }, async (proxy) => {
        assert.equal((await initScript(proxy, 'print("sources")')).status, 200);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { built: true });
        const child = Number(readFileSync(join(marks, 'child'), 'utf8'));
        assert.ok(await eventually(() => !alive(child), 5_000), 'the background child went with the compiler');
      });
    }));
});

describe('shutdown waits for activations, not connections', () => {
  test('a half-sent request does not hold the exit; a running activation finishes; exit 0', async () => {
    const proxy = await startProxy({ env: { PROXY_SHUTDOWN_GRACE_SECONDS: '120' } });
    try {
      assert.equal((await initScript(proxy, SLOW)).status, 200);
      const half = abandon(proxy.port, '/run', '{"value":{"slow":true}}', { partial: true, closeAfterMs: 600_000 });
      const running = proxy.post('/run', { value: { slow: true } });
      await eventually(() => countLines(proxy, 'runs') === 1);
      proxy.child.kill('SIGTERM');
      assert.equal((await running).status, 200);
      // A grace of two minutes: an exit within the test's wait means the half-sent request did not hold it.
      const exit = await Promise.race([proxy.exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 20_000))]);
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(await half, '', 'the half-sent request was closed unanswered');
    } finally {
      await proxy.stop();
    }
  });
});

describe('errors in action-loop mode are the fixed texts', () => {
  test('a process started for a /run that never acks: 502 "did not start", the reason on stderr, no stack, sentinels', () =>
    withLoopProxy({ env: { OW_WAIT_FOR_ACK: '1', PROXY_ACK_TIMEOUT_SECONDS: '1' } }, async (proxy) => {
      const action = `#!/bin/bash
if [ ! -e started ]; then touch started; echo '{"ok":true}' >&3; fi
while read -r line; do sleep 0.5; echo '{"ok":true}' >&3; done
`;
      assert.equal((await initScript(proxy, action)).status, 200);
      const [first, second] = await Promise.all([proxy.post('/run', { value: {} }), proxy.post('/run', { value: {} })]);
      assert.deepEqual([first.status, second.status].sort(), [200, 502]);
      const failed = first.status === 502 ? first : second;
      assert.deepEqual(failed.json(), { error: 'The action did not start. See logs for details.' });
      await proxy.sentinels(2);
      assert.match(proxy.stderr.text, /no ack on fd 3 within 1 s/);
      assert.doesNotMatch(proxy.stderr.text, /\n\s+at /, 'no stack trace');
      const again = await proxy.post('/run', { value: {} });
      assert.equal(again.status, 200, 'the process that did ack still answers');
    }));
});

describe('output framing', { concurrency: true }, () => {
  test('stray partial fd-3 text after an answer goes to the logs and never glues onto the next answer', () =>
    withLoopProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nwhile read -r line; do echo \'{"ok":1}\' >&3; printf stray >&3; done\n')).status, 200);
      assert.equal((await proxy.post('/run', { value: {} })).text, '{"ok":1}');
      await new Promise((resolve) => setTimeout(resolve, 200));
      const next = await proxy.post('/run', { value: {} });
      assert.equal(next.status, 200);
      assert.equal(next.text, '{"ok":1}');
      await proxy.sentinels(2);
      assert.equal(proxy.stdout.text, `${SENTINEL}stray\n${SENTINEL}`);
    }));

  for (const mode of MODES) {
    test(`${mode}: a last stderr fragment without a newline is ended before the sentinel`, () =>
      withAction(mode, { loop: '#!/bin/bash\nwhile read -r line; do printf "no newline" >&2; echo "{}" >&3; done\n', process: '#!/bin/bash\nprintf "no newline" >&2\necho "{}"\n' }, async (proxy) => {
        assert.equal((await proxy.post('/run', { value: {} })).status, 200);
        await proxy.sentinels(1);
        assert.equal(proxy.stderr.text, `no newline\n${SENTINEL}`);
      }));
  }

  test('a stalled log collector: 30 activations that print a 3 MB line before their result grow the proxy by less than 40 MiB', async () => {
    const proxy = await startProxy({ stalledStdout: true });
    try {
      proxy.stdout.countOnly = true;
      assert.equal((await initScript(proxy, '#!/bin/bash\nhead -c 3000000 /dev/zero | tr "\\0" a\necho\necho \'{"ok":true}\'\n')).status, 200);
      const before = peakRss(proxy.child.pid!);
      const runs = Array.from({ length: 30 }, () => proxy.post('/run', { value: {} }));
      // The actions have started and written what the pipes take; they wait for the logs.
      assert.ok(await eventually(() => childPids(proxy.child.pid!).length >= 20));
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      const growth = peakRss(proxy.child.pid!) - before;
      assert.ok(growth < 40 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
      proxy.stdout.resume();
      const answers = await Promise.all(runs);
      assert.ok(answers.every((answer) => answer.status === 200));
      await proxy.stdout.untilSentinels(30);
      assert.equal(proxy.stdout.bytes, 30 * (3_000_001 + SENTINEL.length), 'every log byte arrived');
    } finally {
      await proxy.stop();
    }
  });
});

describe('bounded work per request', { concurrency: true }, () => {
  for (const mode of MODES) {
    const action = {
      loop: '#!/usr/bin/env python3\nimport os, sys\nout = os.fdopen(3, "w")\nfor line in sys.stdin:\n    print(\'{"length": %d}\' % len(line), file=out, flush=True)\n',
      process: '#!/bin/bash\necho "{\\"length\\": $(wc -c)}"\n',
    };
    test(`${mode}: 40 MB of arguments raise peak RSS by at most 2.5x the body plus 30 MiB`, () =>
      withAction(mode, action, async (proxy) => {
        assert.equal((await proxy.post('/run', { value: {} })).status, 200);
        const body = Buffer.from(`{"value":{"data":"${'a'.repeat(40 * 1000 * 1000)}"}}`);
        const before = peakRss(proxy.child.pid!);
        const res = await proxy.post('/run', body);
        assert.equal(res.status, 200, res.text);
        const growth = peakRss(proxy.child.pid!) - before;
        assert.ok(growth <= 2.5 * body.length + 30 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB for a ${(body.length / MiB).toFixed(1)} MiB body`);
      }));
  }

  test('1,000 activation fields run; 1,001 are a 413', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho \'{"ok":true}\'\n')).status, 200);
      const fields = (n: number): string => `{"value":{},${Array.from({ length: n }, (_, i) => `"f${i}":${i}`).join(',')}}`;
      assert.equal((await proxy.post('/run', fields(1000))).status, 200);
      const over = await proxy.post('/run', fields(1001));
      assert.equal(over.status, 413);
      assert.deepEqual(over.json(), { error: 'The activation has more than 1000 fields.' });
      const nested = await proxy.post('/run', `{"value":{},"activation":{${Array.from({ length: 1001 }, (_, i) => `"f${i}":${i}`).join(',')}}}`);
      assert.equal(nested.status, 413);
    }));

  test('2,000,000 activation fields are a 413 while another /run is answered, memory bounded', () =>
    withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\nsleep 0.2\necho \'{"other":true}\'\n')).status, 200);
      const body = `{"value":{},${Array.from({ length: 2_000_000 }, (_, i) => `"f${i}":1`).join(',')}}`;
      const before = peakRss(proxy.child.pid!);
      const [refused, other] = await Promise.all([proxy.post('/run', body), proxy.post('/run', { value: {} })]);
      assert.equal(refused.status, 413);
      assert.deepEqual(other.json(), { other: true });
      const growth = peakRss(proxy.child.pid!) - before;
      assert.ok(growth < 3 * Buffer.byteLength(body) + 30 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    }));

  test('a 200 KB activation field: a 413 naming it for a process per activation, passed on in action-loop mode', async () => {
    const id = 'i'.repeat(200_000);
    await withProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/sh\necho \'{"ok":true}\'\n')).status, 200);
      const res = await proxy.post('/run', { value: {}, activation_id: id });
      assert.equal(res.status, 413);
      assert.deepEqual(res.json(), { error: "The activation field 'activation_id' is larger than 131072 bytes." });
    });
    await withLoopProxy({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nwhile read -r line; do echo "{\\"length\\":${#line}}" >&3; done\n')).status, 200);
      const res = await proxy.post('/run', { value: {}, activation_id: id });
      assert.equal(res.status, 200);
    });
  });
});
