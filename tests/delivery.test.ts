// What people deliver and how they look inside (spec/delivery.md): offline builds with `-compile`, the
// version, PROXY_DEBUG's decision lines, the bind address. Black-box: the real proxy as a command and as
// a server.

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PROXY, ROOT, alive, eventually, initScript, tree, withProxy, withTempDir } from './helpers.ts';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** Runs the proxy as a command with `args`, `input` on stdin. */
function proxyCommand(args: string[], input: Buffer | string = '', env: Record<string, string> = {}): { status: number | null; stdout: Buffer; stderr: string } {
  const result = spawnSync(process.execPath, [PROXY, ...args], { input, env: { ...process.env, ...env }, maxBuffer: 1 << 28 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr.toString() };
}

// A compiler that, as OpenWhisk's do, reads sources from $2 and writes the action into $3: it joins
// every *.src file (in name order, from any folder) into a script, and warns on stderr.
const COMPILER = `#!/bin/bash
set -e
echo "compiling $1 from $(basename "$2") into $(basename "$3") with GREETING=$GREETING" >&2
echo "warning: this is only a warning" >&2
{ echo '#!/bin/bash'; cat $(find "$2" -name '*.src' | sort); } > "$3/exec"
chmod 755 "$3/exec"
echo "$OW_EXECUTION_ENV" > "$3/exec.env"
ln -s exec "$3/link-to-exec"
`;

describe('-compile: an offline build', { concurrency: true }, () => {
  test('a ZIP of sources on stdin: the compiler runs with -env, stdout is a ZIP that unzip accepts, the same bytes twice, and an /init of it skips compiling', () =>
    withTempDir(async (dir) => {
      const compiler = join(dir, 'compile');
      writeFileSync(compiler, COMPILER, { mode: 0o755 });
      mkdirSync(join(dir, 'src', 'pkg'), { recursive: true });
      writeFileSync(join(dir, 'src', 'a.src'), 'echo "{\\"greeting\\":\\"$GREETING\\",\\"pkg\\":$(cat pkg.json)}"\n');
      writeFileSync(join(dir, 'src', 'pkg', 'b.src'), 'true\n');
      const sources = execFileSync('zip', ['-q', '-r', '-', '.'], { cwd: join(dir, 'src') });
      const env = { OW_COMPILER: compiler, OW_EXECUTION_ENV: 'test/runtime:1' };
      const first = proxyCommand(['-compile', 'main', '-env', '{"GREETING":"hi"}'], sources, env);
      assert.equal(first.status, 0, first.stderr);
      assert.match(first.stderr, /compiling main from src into bin with GREETING=hi\nwarning: this is only a warning\n/);
      const second = proxyCommand(['--compile=main', '--env', '{"GREETING":"hi"}'], sources, env);
      assert.equal(second.status, 0, second.stderr);
      assert.ok(first.stdout.equals(second.stdout), 'the same input gives the same bytes');
      writeFileSync(join(dir, 'out.zip'), first.stdout);
      assert.match(execFileSync('unzip', ['-t', join(dir, 'out.zip')]).toString(), /No errors detected/);
      assert.match(execFileSync('unzip', ['-Z', join(dir, 'out.zip')]).toString(), /-rwxr-xr-x .* exec\n[^]*lrwxrwxrwx .* link-to-exec/);
      // The compiled action initializes where the compiler is not even there.
      await withProxy({ env: { OW_COMPILER: '/bin/false', OW_EXECUTION_ENV: 'test/runtime:1' } }, async (proxy) => {
        const res = await proxy.post('/init', { value: { binary: true, code: first.stdout.toString('base64'), env: { GREETING: 'from init' } } });
        assert.equal(res.status, 200, proxy.stderr.text);
        writeFileSync(join(proxy.dir, 'pkg.json'), '1');
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { greeting: 'from init', pkg: 1 });
        assert.equal(tree(proxy.dir)['link-to-exec'], 'l->exec');
      });
    }));

  test('a tar.gz and a single file on stdin; without OW_COMPILER the action is packaged as it is', () =>
    withTempDir(async (dir) => {
      mkdirSync(join(dir, 'action'));
      writeFileSync(join(dir, 'action', 'exec'), '#!/bin/sh\necho {}\n', { mode: 0o755 });
      symlinkSync('exec', join(dir, 'action', 'again'));
      const tgz = proxyCommand(['-compile', 'main'], execFileSync('tar', ['-czf', '-', '-C', join(dir, 'action'), '.']));
      assert.equal(tgz.status, 0, tgz.stderr);
      writeFileSync(join(dir, 'tgz.zip'), tgz.stdout);
      assert.match(execFileSync('unzip', ['-Z1', join(dir, 'tgz.zip')]).toString(), /^again\nexec\n$/);
      const single = proxyCommand(['-compile', 'main'], '#!/bin/sh\necho {}\n');
      assert.equal(single.status, 0, single.stderr);
      writeFileSync(join(dir, 'single.zip'), single.stdout);
      assert.match(execFileSync('unzip', ['-Z', join(dir, 'single.zip')]).toString(), /-rwxr-xr-x .* exec\n/);
    }));

  test('failures: exit 1 with the reason on stderr and nothing on stdout; usage errors and a terminal exit 2', () => {
    const compilerFails = proxyCommand(['-compile', 'main'], 'source', { OW_COMPILER: '/bin/false' });
    assert.equal(compilerFails.status, 1);
    assert.equal(compilerFails.stdout.length, 0);
    assert.match(compilerFails.stderr, /-compile failed: the compiler \(OW_COMPILER=\/bin\/false\) exited with code 1/);
    const notAProgram = proxyCommand(['-compile', 'main'], 'just text');
    assert.equal(notAProgram.status, 1);
    assert.match(notAProgram.stderr, /no exec that is a program/);
    const badArchive = proxyCommand(['-compile', 'main'], Buffer.from('PK\x03\x04 broken'));
    assert.equal(badArchive.status, 1);
    assert.match(badArchive.stderr, /-compile failed: zip: /);
    const usage = proxyCommand(['-compile']);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /-compile needs a value/);
    // A terminal as stdout: script(1) gives the command one.
    const terminal = spawnSync('script', ['-qec', `${process.execPath} ${PROXY} -compile main < /dev/null`, '/dev/null']);
    assert.equal(terminal.status, 2, terminal.stdout.toString());
    assert.match(terminal.stdout.toString(), /stdout, which is a terminal: redirect it/);
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    test(`${signal} while the compiler runs: it and its process group are killed, the work folder removed, exit 128 + the signal's number`, () =>
      withTempDir(async (dir) => {
        const compiler = join(dir, 'compile');
        writeFileSync(compiler, '#!/bin/bash\nsleep 300 &\necho $! > "$MARKS/child"\necho $$ > "$MARKS/compiler"\nsleep 300\n', { mode: 0o755 });
        const work = join(dir, 'tmp');
        mkdirSync(work);
        const command = spawn(process.execPath, [PROXY, '-compile', 'main'], { env: { ...process.env, OW_COMPILER: compiler, MARKS: dir, TMPDIR: work }, stdio: ['pipe', 'ignore', 'ignore'] });
        const exited = new Promise<number | null>((resolve) => command.on('close', (code) => resolve(code)));
        command.stdin!.end('print("sources")');
        assert.ok(await eventually(() => existsSync(join(dir, 'compiler')) && existsSync(join(dir, 'child'))), 'the compiler started');
        const pids = ['compiler', 'child'].map((name) => Number(readFileSync(join(dir, name), 'utf8')));
        command.kill(signal);
        assert.equal(await exited, 128 + osConstants.signals[signal]);
        assert.ok(await eventually(() => pids.every((pid) => !alive(pid)), 5_000), 'the compiler and its child are gone');
        assert.deepEqual(readdirSync(work), [], 'no work folder left');
      }));
  }
});

describe('version and diagnostics', { concurrency: true }, () => {
  test('--version and -version print one line and exit 0; other arguments are refused', () => {
    for (const flag of ['--version', '-version']) {
      const result = proxyCommand([flag]);
      assert.equal(result.status, 0);
      assert.equal(result.stdout.toString(), `openwhisk-action-proxy ${VERSION} (node ${process.versions.node})\n`);
    }
    const unknown = proxyCommand(['--port', '80']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /Unknown arguments: --port 80/);
  });

  test('every action gets __OW_PROXY_VERSION', () =>
    withProxy({}, async (proxy) => {
      await proxy.post('/init', { value: { code: '#!/bin/sh\necho "{\\"version\\":\\"$__OW_PROXY_VERSION\\"}"\n' } });
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { version: VERSION });
    }));

  test('PROXY_DEBUG=1: proxy: lines on stderr for init steps, processes and waits; nothing on stdout; off by default', () =>
    withProxy({ env: { PROXY_DEBUG: '1', PROXY_MAX_ACTIVATIONS: '1' } }, async (proxy) => {
      await proxy.post('/init', { value: { binary: true, code: Buffer.from('#!/bin/sh\nsleep 0.3\necho {}\n').toString('base64') } });
      await Promise.all([proxy.post('/run', { value: {} }), proxy.post('/run', { value: {} })]);
      await proxy.sentinels(2);
      const lines = proxy.stderr.text.split('\n').filter((line) => line.startsWith('proxy: '));
      for (const expected of [/^proxy: init: the code is a program/, /^proxy: extract: [\d.]+ ms$/, /^proxy: swap: [\d.]+ ms$/, /^proxy: started action process \d+$/, /^proxy: action process \d+ exited \(code 0\)$/, /^proxy: an activation waits for a slot: 1 running, 0 waiting before it$/]) {
        assert.ok(lines.some((line) => expected.test(line)), `${expected} in ${JSON.stringify(lines)}`);
      }
      assert.doesNotMatch(proxy.stdout.text, /proxy: /);
    }));

  test('PROXY_DEBUG unset: no proxy: lines', () =>
    withProxy({}, async (proxy) => {
      await proxy.post('/run', { value: {} });
      await proxy.sentinels(1);
      assert.doesNotMatch(proxy.stderr.text, /proxy: /);
    }));

  test('it listens with a backlog of 4096 (or the kernel\'s net.core.somaxconn, if lower), not Node\'s 511', { skip: spawnSync('ss', ['-V']).status === 0 ? false : 'no ss on the PATH (Debian: iproute2)' }, () =>
    withProxy({ env: { PROXY_HOST: '127.0.0.1' } }, async (proxy) => {
      // For a listening socket, ss's Send-Q is its backlog.
      const [line] = execFileSync('ss', ['-Hltn', `sport = :${proxy.port}`]).toString().trim().split('\n');
      const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
      assert.equal(Number(line!.trim().split(/\s+/)[2]), Math.min(4096, somaxconn), line);
    }));

  test('on a terminal it says where it listens; with stdout a pipe or /dev/null it says nothing there', () =>
    withTempDir(async (dir) => {
      const env = { ...process.env, FLASK_PROXY_PORT: '0', PROXY_HOST: '127.0.0.1', PROXY_ACTION_DIR: dir };
      // script(1) gives the proxy a terminal; `timeout` ends it once it has had time to say it.
      const terminal = spawnSync('script', ['-qec', `timeout -s INT 3 ${process.execPath} ${PROXY}`, '/dev/null'], { env });
      assert.match(terminal.stdout.toString(), new RegExp(`Action proxy \\(openwhisk\\) listening on 127\\.0\\.0\\.1, port \\d+, action directory ${dir}`));
      for (const stdout of ['pipe', 'ignore'] as const) {
        const quiet = spawnSync('timeout', ['-s', 'INT', '2', process.execPath, PROXY], { env, stdio: ['ignore', stdout, 'pipe'] });
        assert.equal(quiet.stderr.toString(), '');
        if (stdout === 'pipe') assert.equal(quiet.stdout.toString(), '');
      }
    }));

  test('PROXY_HOST is the address it listens on: 127.0.0.1 only', () =>
    withProxy({ env: { PROXY_HOST: '127.0.0.1' } }, async (proxy) => {
      // Listening sockets on the port, from /proc/net/tcp and tcp6 (state 0A): address:port in hex.
      const port = proxy.port.toString(16).toUpperCase().padStart(4, '0');
      const listening = ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((table) =>
        readFileSync(table, 'utf8').split('\n').map((line) => line.trim().split(/\s+/)).filter((fields) => fields[3] === '0A' && fields[1]?.endsWith(`:${port}`)).map((fields) => fields[1]),
      );
      assert.deepEqual(listening, [`0100007F:${port}`]);
      const refused = await new Promise<string>((resolve) => {
        const socket = connect(proxy.port, '127.0.0.2', () => resolve('connected'));
        socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
      });
      assert.equal(refused, 'ECONNREFUSED', 'another loopback address is not served');
    }));
});

describe("the code cache (PROXY_CODE_CACHE): V8's code of a cold start, for the image", { concurrency: true }, () => {
  const ECHO = '#!/bin/sh\necho "{\\"args\\":$1}"\n';

  /**
   * Starts `bundle` writing the code cache, has it answer `activations` inits and runs, stops it; the
   * cache's size.
   */
  async function writeCache(cache: string, activations: number, bundle = PROXY): Promise<number> {
    await withProxy({ command: [process.execPath, bundle], env: { PROXY_CODE_CACHE: cache, PROXY_CODE_CACHE_WRITE: '1' } }, async (proxy) => {
      for (let i = 0; i < activations; i++) {
        assert.equal((await initScript(proxy, ECHO)).status, 200);
        assert.deepEqual((await proxy.post('/run', { value: { i } })).json(), { args: { i } });
      }
      proxy.child.kill('SIGTERM');
      assert.equal((await proxy.exited).code, 0);
    });
    return statSync(cache).size;
  }

  /** Starts `bundle` with the code cache `cache`: it must answer as ever, and say `said` on stderr. */
  function assertStartsWith(cache: string, said: RegExp, bundle = PROXY, env: Record<string, string> = {}): Promise<void> {
    return withProxy({ command: [process.execPath, bundle], env: { PROXY_CODE_CACHE: cache, ...env } }, async (proxy) => {
      assert.equal((await initScript(proxy, ECHO)).status, 200);
      assert.deepEqual((await proxy.post('/run', { value: { b: 2 } })).json(), { args: { b: 2 } });
      assert.match(proxy.stderr.text, said);
    });
  }

  test('PROXY_CODE_CACHE_WRITE=1 writes it at exit, with the code the activations compiled; a start with it uses it', () =>
    withTempDir(async (dir) => {
      const afterStart = await writeCache(join(dir, 'start-only'), 0);
      const cache = join(dir, 'code-cache');
      const afterActivations = await writeCache(cache, 1);
      // V8 compiles most functions on their first call: a cache taken after an init and a run holds them.
      assert.ok(afterActivations > afterStart + 20_000, `the cache after an init and a run (${afterActivations} bytes) holds more than after start-up alone (${afterStart} bytes)`);
      await assertStartsWith(cache, new RegExp(`^proxy: code cache: ${cache} accepted \\(\\d+ bytes\\)$`, 'm'), PROXY, { PROXY_DEBUG: '1' });
    }));

  test('a cache it can\'t use (missing, of another build of the bundle, not V8\'s) is said on stderr, and the proxy starts without it', () =>
    withTempDir(async (dir) => {
      await assertStartsWith(join(dir, 'missing'), /^The code cache \S+missing \(PROXY_CODE_CACHE\) can't be read \(ENOENT\): starting without it\.$/m);
      // V8 itself checks only the source's length: a rebuilt bundle of the same size must not take the old cache.
      const bundle = join(dir, 'proxy.cjs');
      copyFileSync(PROXY, bundle);
      const cache = join(dir, 'code-cache');
      await writeCache(cache, 1, bundle);
      const { mtime } = statSync(bundle);
      utimesSync(bundle, mtime, new Date(mtime.getTime() + 1000));
      await assertStartsWith(cache, /^The code cache \S+ \(PROXY_CODE_CACHE\) was made for another build of \S+proxy\.cjs: starting without it\.$/m, bundle);
      // Its first line names this build; what follows is not V8's.
      const stamp = readFileSync(cache, 'latin1').split('\n', 1)[0]!.replace(/modified at \S+/, `modified at ${statSync(bundle).mtimeMs}`);
      writeFileSync(cache, Buffer.concat([Buffer.from(`${stamp}\n`, 'latin1'), Buffer.alloc(4096, 7)]));
      await assertStartsWith(cache, /^The code cache \S+ \(PROXY_CODE_CACHE\) was made by another Node version or with other V8 flags: starting without it\.$/m, bundle);
    }));
});

describe('the action directory is checked at start-up', { concurrency: true }, () => {
  // As root the proxy runs as nobody, so that permissions apply, with a node nobody may run (CI's own may
  // sit in root's home).
  const root = process.getuid?.() === 0;
  const asUser = root ? { uid: 65534, gid: 65534 } : {};
  const node = root ? [process.execPath, '/usr/local/bin/node', '/usr/bin/node'].find((candidate) => spawnSync(candidate, ['-e', '0'], asUser).status === 0) : process.execPath;
  const skip = node === undefined ? 'running as root, and no node that the user nobody can run' : false;

  function startUp(dir: string, env: Record<string, string> = {}): { status: number | null; stderr: string } {
    const result = spawnSync(node!, [PROXY], { env: { ...process.env, PROXY_ACTION_DIR: dir, PORT: '0', ...env }, timeout: 3000, ...asUser });
    return { status: result.status, stderr: result.stderr.toString() };
  }

  test('one that can\'t be made, or can\'t be written and has no exec: exit 1 naming PROXY_ACTION_DIR', { skip }, () =>
    withTempDir(async (dir) => {
      chmodSync(dir, 0o555);
      const missing = startUp(join(dir, 'action'));
      assert.equal(missing.status, 1);
      assert.match(missing.stderr, /^The action directory .*\/action \(PROXY_ACTION_DIR\) does not exist and this user \(uid \d+\) can't make it \(EACCES\)\. Set PROXY_ACTION_DIR to a folder this user \(uid \d+\) can write\.\n$/);
      const unwritable = startUp(dir);
      assert.equal(unwritable.status, 1);
      assert.match(unwritable.stderr, /is not writable by this user .*: no action can be installed there\. Set PROXY_ACTION_DIR/);
      const knative = startUp(dir, { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: '#!/bin/sh\necho {}' });
      chmodSync(dir, 0o755);
      assert.equal(knative.status, 1);
      assert.match(knative.stderr, /\(PROXY_ACTION_DIR\) is not writable/);
    }));

  test('one that can\'t be written but holds an executable exec (a baked-in action): it runs, with a warning', { skip }, () =>
    withTempDir(async (dir) => {
      writeFileSync(join(dir, 'exec'), '#!/bin/sh\necho \'{"baked":true}\'\n', { mode: 0o755 });
      chmodSync(dir, 0o555);
      const child = spawn(node!, [PROXY], { env: { ...process.env, PROXY_ACTION_DIR: dir, PORT: '0' }, ...asUser });
      try {
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
        assert.ok(await eventually(() => stderr.includes('every /init will fail')), stderr);
        assert.match(stderr, /is not writable by this user .*: its exec runs, and every \/init will fail\.\n/);
        assert.equal(child.exitCode, null, 'it keeps running');
      } finally {
        child.kill('SIGKILL');
        chmodSync(dir, 0o755); // so that a non-root run can remove it
      }
    }));
});
