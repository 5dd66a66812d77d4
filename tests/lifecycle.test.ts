// Lifecycle (spec/lifecycle.md): clients that give up, bursts that pass, processes that die, pods that
// stop. Black-box against the real proxy; memory is read from /proc, never inferred from time.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  SENTINEL,
  abandon,
  alive,
  childPids,
  eventually,
  groupMembers,
  initScript,
  openFds,
  peakRss,
  rss,
  startProxy,
  withProxy,
  type ProxyOptions,
  type RunningProxy,
} from './helpers.ts';

const MiB = 1024 * 1024;
const CANCELLED = 'The client closed the connection; the activation was stopped.\n';

function loop<T>(options: ProxyOptions, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  return withProxy({ ...options, env: { PROXY_ACTION_LOOP: '1', ...options.env } }, fn);
}

/** How many lines a file in the action directory has (actions count their runs in one). */
function lines(proxy: RunningProxy, name: string): number {
  const path = join(proxy.dir, name);
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean).length : 0;
}

function pidIn(proxy: RunningProxy, name: string): number {
  return Number(readFileSync(join(proxy.dir, name), 'utf8').trim());
}

// A per-activation action: counts its runs; with "hang" in its arguments it says so on stderr and waits
// for a background child that would run for five minutes.
const HANGING = `#!/bin/bash
echo run >> runs
case "$1" in
  *hang*) echo started >&2; sleep 300 & echo $! > bg; wait ;;
  *slow*) sleep 1 ;;
esac
echo '{"ok":true}'
`;

// The same as a loop action: one activation per line, its pid in the answer.
const LOOP_HANGING = `#!/bin/bash
while IFS= read -r line; do
  echo run >> runs
  case "$line" in
    *hang*) echo started >&2; sleep 300 & echo $! > bg; wait ;;
  esac
  echo "{\\"pid\\":$$}" >&3
done
`;

describe('a client that gives up cancels its activation', { concurrency: true }, () => {
  test('waiting for a slot: it leaves the line and never runs (8 abandoned behind a cap of 1)', () =>
    withProxy({ env: { PROXY_MAX_ACTIVATIONS: '1' } }, async (proxy) => {
      assert.equal((await initScript(proxy, HANGING)).status, 200);
      const first = proxy.post('/run', { value: { slow: true } });
      await eventually(() => lines(proxy, 'runs') === 1);
      const gone = await Promise.all(Array.from({ length: 8 }, () => abandon(proxy.port, '/run', '{"value":{"slow":true}}', { closeAfterMs: 100 })));
      assert.deepEqual(gone, Array(8).fill(''), 'nothing is answered to a client that left');
      const next = await proxy.post('/run', { value: {} });
      assert.equal((await first).status, 200);
      assert.equal(next.status, 200);
      assert.equal(lines(proxy, 'runs'), 2, 'only the two live activations ran');
      await proxy.sentinels(2);
      assert.equal(proxy.stdout.sentinels, 2, 'no sentinels for activations that never ran');
    }));

  for (const mode of ['a process per activation', 'action-loop mode'] as const) {
    test(`running, ${mode}: the process group is killed, logs then the line then sentinels, the slot is free at once`, () =>
      withProxy({ env: { PROXY_MAX_ACTIVATIONS: '1', ...(mode === 'action-loop mode' ? { PROXY_ACTION_LOOP: '1' } : {}) } }, async (proxy) => {
        assert.equal((await initScript(proxy, mode === 'action-loop mode' ? LOOP_HANGING : HANGING)).status, 200);
        const before = mode === 'action-loop mode' ? ((await proxy.post('/run', { value: {} })).json() as { pid: number }).pid : 0;
        await abandon(proxy.port, '/run', '{"value":{"hang":true}}', { closeWhen: proxy.stderr.until('started\n') });
        await proxy.sentinels(mode === 'action-loop mode' ? 2 : 1);
        assert.ok(proxy.stderr.text.endsWith(`started\n${CANCELLED}${SENTINEL}`), proxy.stderr.text);
        const background = pidIn(proxy, 'bg');
        assert.ok(await eventually(() => !alive(background)), 'the background child was killed with its group');
        // The cap is 1: a wedged slot would hang this request.
        const next = await proxy.post('/run', { value: {} });
        assert.equal(next.status, 200);
        if (mode === 'action-loop mode') {
          const { pid } = next.json() as { pid: number };
          assert.notEqual(pid, before, 'the killed process is not reused');
          assert.ok(!alive(before));
        }
      }));
  }

  test('action-loop mode with PROXY_MAX_ACTIVATIONS=2: two abandoned hung runs do not wedge it', () =>
    loop({ env: { PROXY_MAX_ACTIVATIONS: '2' } }, async (proxy) => {
      assert.equal((await initScript(proxy, LOOP_HANGING)).status, 200);
      const bothStarted = eventually(() => (proxy.stderr.text.match(/started\n/g) ?? []).length === 2);
      await Promise.all([0, 1].map(() => abandon(proxy.port, '/run', '{"value":{"hang":true}}', { closeWhen: bothStarted })));
      assert.equal((await proxy.post('/run', { value: {} })).status, 200);
      await proxy.sentinels(3);
      assert.equal(proxy.stderr.text.split(CANCELLED).length - 1, 2);
    }));

  test('Knative: 64 abandoned hung requests and 2,000 abandoned 256 KiB requests in line; RSS stays bounded and the service answers', async () => {
    const proxy = await startProxy({
      env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: '#!/bin/bash\ncase "$1" in *hang*) sleep 300 ;; esac\necho \'{"body":"ok"}\'\n' },
    });
    try {
      assert.equal((await proxy.post('/', { warm: true })).status, 200);
      const before = rss(proxy.child.pid!);
      const hungRunning = eventually(() => childPids(proxy.child.pid!).length === 64, 60_000);
      let release!: () => void;
      const letGo = new Promise<void>((resolve) => (release = resolve));
      const hung = Array.from({ length: 64 }, () => abandon(proxy.port, '/', '{"hang":true}', { closeWhen: letGo }));
      assert.ok(await hungRunning, 'the cap of 64 is reached');
      const pad = Buffer.from(`{"pad":"${'x'.repeat(256 * 1024)}"}`);
      const waiting = await Promise.all(Array.from({ length: 2000 }, () => abandon(proxy.port, '/', pad, { closeAfterMs: 1_000 })));
      const refused = waiting.filter((answer) => answer.startsWith('HTTP/1.1 503'));
      assert.equal(refused.length, 1000, 'PROXY_MAX_WAITING (1,000) wait; the rest are refused at once');
      assert.match(refused[0]!, /Retry-After: 1\r\n/);
      assert.ok(refused[0]!.endsWith('{"error":"The proxy is at its limit of 1000 waiting requests (PROXY_MAX_WAITING). Try again."}'), refused[0]);
      assert.equal(waiting.filter((answer) => answer === '').length, 1000, 'those that waited got nothing');
      release();
      await Promise.all(hung);
      const after = await proxy.post('/', { live: true });
      assert.equal(after.status, 200);
      assert.deepEqual(after.text, 'ok');
      // Node's own http server holds about 100 KiB per connection whose unread request waits (a bare
      // node:http server with 1,000 of them: +102-108 MiB), so the bound is that floor and room for
      // the bodies of abandoned requests read when their turn came; it was 2.16 GB.
      const growth = rss(proxy.child.pid!) - before;
      assert.ok(growth < 250 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
      assert.ok(await eventually(() => childPids(proxy.child.pid!).length === 0), 'every hung process was killed');
    } finally {
      await proxy.stop();
    }
  });
});

describe('the pool follows the load', () => {
  test('after 300 concurrent loop runs and the idle time, one process is left and descriptors are back', () =>
    loop({ env: { PROXY_LOOP_IDLE_SECONDS: '1' } }, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nwhile read -r line; do sleep 0.5; echo \'{"ok":true}\' >&3; done\n')).status, 200);
      assert.equal((await proxy.post('/run', { value: {} })).status, 200);
      const fds = openFds(proxy.child.pid!);
      const answers = await Promise.all(Array.from({ length: 300 }, () => proxy.post('/run', { value: {} })));
      assert.ok(answers.every((answer) => answer.status === 200));
      assert.ok(childPids(proxy.child.pid!).length > 100, 'the burst needed many processes');
      const shrunk = await eventually(() => childPids(proxy.child.pid!).length <= 1 && openFds(proxy.child.pid!) <= fds + 5, 20_000);
      assert.ok(shrunk, `${childPids(proxy.child.pid!).length} processes, ${openFds(proxy.child.pid!)} descriptors (was ${fds})`);
      assert.equal((await proxy.post('/run', { value: {} })).status, 200);
    }));
});

describe('code that was not committed never runs', () => {
  test('a re-init whose ack fails while runs arrive: every run answers with the committed action, during and after', () =>
    loop({ env: { OW_WAIT_FOR_ACK: '1', PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      const a = '#!/bin/bash\necho \'{"ok":true}\' >&3\nwhile read -r line; do sleep 0.2; echo \'{"code":"A"}\' >&3; done\n';
      // Started by the init, it acks with a refusal after a second; started again, it would answer.
      const b = `#!/bin/bash
if [ -e started ]; then echo '{"ok":true}' >&3; else touch started; sleep 1; echo '{"ok":false}' >&3; fi
while read -r line; do echo '{"code":"B-REJECTED-CODE"}' >&3; done
`;
      assert.equal((await initScript(proxy, a)).status, 200);
      const reinit = initScript(proxy, b);
      await eventually(() => existsSync(join(proxy.dir, 'started')));
      const during = await Promise.all([0, 1, 2].map(() => proxy.post('/run', { value: {} })));
      assert.equal((await reinit).status, 502);
      const after = await Promise.all([0, 1, 2].map(() => proxy.post('/run', { value: {} })));
      assert.deepEqual([...during, ...after].map((answer) => answer.text), Array(6).fill('{"code":"A"}'));
    }));
});

describe("a process's children go with it", { concurrency: true }, () => {
  test('a loop process that exits leaves no background child behind', () =>
    loop({}, async (proxy) => {
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
});

describe('shutdown waits for activations, not connections', () => {
  test('a half-sent request does not hold the exit; a running activation finishes; exit 0', async () => {
    const proxy = await startProxy({ env: { PROXY_SHUTDOWN_GRACE_SECONDS: '120' } });
    try {
      assert.equal((await initScript(proxy, HANGING)).status, 200);
      const half = abandon(proxy.port, '/run', '{"value":{"slow":true}}', { partial: true, closeAfterMs: 600_000 });
      const running = proxy.post('/run', { value: { slow: true } });
      await eventually(() => lines(proxy, 'runs') === 1);
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
    loop({ env: { OW_WAIT_FOR_ACK: '1', PROXY_ACK_TIMEOUT_SECONDS: '1' } }, async (proxy) => {
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
    loop({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nwhile read -r line; do echo \'{"ok":1}\' >&3; printf stray >&3; done\n')).status, 200);
      assert.equal((await proxy.post('/run', { value: {} })).text, '{"ok":1}');
      await new Promise((resolve) => setTimeout(resolve, 200));
      const next = await proxy.post('/run', { value: {} });
      assert.equal(next.status, 200);
      assert.equal(next.text, '{"ok":1}');
      await proxy.sentinels(2);
      assert.equal(proxy.stdout.text, `${SENTINEL}stray\n${SENTINEL}`);
    }));

  for (const mode of ['a process per activation', 'action-loop mode'] as const) {
    test(`${mode}: a last stderr fragment without a newline is ended before the sentinel`, () =>
      withProxy({ env: mode === 'action-loop mode' ? { PROXY_ACTION_LOOP: '1' } : {} }, async (proxy) => {
        const action =
          mode === 'action-loop mode'
            ? '#!/bin/bash\nwhile read -r line; do printf "no newline" >&2; echo "{}" >&3; done\n'
            : '#!/bin/bash\nprintf "no newline" >&2\necho "{}"\n';
        assert.equal((await initScript(proxy, action)).status, 200);
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
  for (const mode of ['a process per activation', 'action-loop mode'] as const) {
    test(`${mode}: 40 MB of arguments raise peak RSS by at most 2.5x the body plus 30 MiB`, () =>
      withProxy({ env: mode === 'action-loop mode' ? { PROXY_ACTION_LOOP: '1' } : {} }, async (proxy) => {
        const action =
          mode === 'action-loop mode'
            ? '#!/usr/bin/env python3\nimport os, sys\nout = os.fdopen(3, "w")\nfor line in sys.stdin:\n    print(\'{"length": %d}\' % len(line), file=out, flush=True)\n'
            : '#!/bin/bash\necho "{\\"length\\": $(wc -c)}"\n';
        assert.equal((await initScript(proxy, action)).status, 200);
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
    await loop({}, async (proxy) => {
      assert.equal((await initScript(proxy, '#!/bin/bash\nwhile read -r line; do echo "{\\"length\\":${#line}}" >&3; done\n')).status, 200);
      const res = await proxy.post('/run', { value: {}, activation_id: id });
      assert.equal(res.status, 200);
    });
  });
});
