// `npm run bench`: the proxy's speed and footprint against physical floors measured in the same run.
//
// This process is the client; the proxy and every floor run as child processes. Medians throughout.
// Writes bench/results.json and bench/results.svg (shown in the README) and prints a table.
//
//   BENCH_QUICK=1 npm run bench    fewer repetitions, for a smoke run

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import * as nodeModule from 'node:module';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = join(DIST, '..');
const PROXY = join(DIST, 'proxy.cjs');
const STUB = join(ROOT, 'action', 'exec');
const QUICK = process.env.BENCH_QUICK === '1';
// BENCH_PROXY_FLAGS: Node flags for the proxy process, to measure what one costs or saves.
// None by default: a V8 flag can cost start-up time (measured: --max-semi-space-size=1 made ready about 8 ms slower on Node 20).
const PROXY_FLAGS = (process.env.BENCH_PROXY_FLAGS ?? '').split(' ').filter(Boolean);
// The floor servers run under the same flags: the same Node, configured the same way.
const FLOOR_NODE = [process.execPath, ...PROXY_FLAGS];
// Extraction is measured where disk writeback can't add noise: tmpfs when the machine has one.
const FAST_FS = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const REPEAT = QUICK ? 5 : 21;
// Cold starts vary more from one to the next than anything else measured here: twice the samples.
const COLD_REPEAT = 2 * REPEAT;
const WARM_RUNS = QUICK ? 200 : 1000;
// Loop mode's warm rounds take half a millisecond each: enough of them that its p99 rests on 50 samples,
// not 10 (with 1,000 rounds the ratio of two p99s went from 1.15 to 1.64 in five runs of the same build).
const LOOP_WARM_RUNS = QUICK ? 1000 : 5000;
const THROUGHPUT_RUNS = QUICK ? 800 : 4000;
const SOAK_RUNS = QUICK ? 2000 : 10_000;
// V8 gives memory back only when its memory reducer sees the process idle; on Node 20 here that took
// 10–30 s after the last activation.
const IDLE_AGAIN_MS = QUICK ? 5_000 : 30_000;
const CLIENTS = 8;
// What a warm container holds while it waits for the next burst (past the idle collection of a proxy
// run with PROXY_IDLE_GC_SECONDS=5, off by default: it runs 5-10 s after the last activation).
const IDLE_COLLECTED_MS = 11_000;
// BENCH_BASELINE=<another build's dist/proxy.cjs>, with BENCH_BASELINE_FLAGS its Node flags: this build
// against that one, interleaved in one run (the before and after of a change). BENCH_ONLY=baseline runs
// only that.
const BASELINE = process.env.BENCH_BASELINE ? [process.execPath, ...(process.env.BENCH_BASELINE_FLAGS ?? '').split(' ').filter(Boolean), process.env.BENCH_BASELINE] : undefined;
const BARE_SERVER = "require('http').createServer((q,s)=>s.end('{}')).listen(process.env.FLASK_PROXY_PORT)";
// The smallest proxy of the per-activation design, the floor of cold start, warm latency, throughput and
// memory under load: a node:http server that spawns the action for every request and answers its last line.
const SPAWN_FLOOR_SERVER = `
const { spawn } = require('child_process');
require('http').createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => (body += chunk));
  req.on('end', () => {
    if (req.url === '/init') {
      require('fs').writeFileSync(process.env.PROXY_ACTION_DIR + '/exec', JSON.parse(body).value.code, { mode: 0o755 });
      return res.end('OK');
    }
    const child = spawn(process.env.PROXY_ACTION_DIR + '/exec', ['{}'], { cwd: process.env.PROXY_ACTION_DIR, stdio: 'pipe' });
    let out = '';
    child.stdin.on('error', () => {}); // EPIPE: the action need not read its input
    child.stdin.end('{}');
    child.stdout.on('data', (chunk) => (out += chunk));
    child.stderr.resume();
    child.on('close', () => {
      const line = out.trim().split('\\n').pop();
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(line) }).end(line);
    });
  });
}).listen(process.env.FLASK_PROXY_PORT);
`;
const TRIVIAL = "#!/bin/sh\necho '{\"ok\":true}'\n";
// The trivial action in action-loop form: one activation per line on stdin, the result on fd 3.
const TRIVIAL_LOOP = "#!/bin/bash\nwhile IFS= read -r line; do echo '{\"ok\":true}' >&3; done\n";
// The smallest loop proxy there can be, the loop mode's floor: each request body as a line to one bash
// loop, each fd-3 line to the oldest waiting request (the loop answers in order).
const LOOP_FLOOR_SERVER = `
const { spawn } = require('child_process');
const loop = spawn('bash', ['-c', process.env.LOOP], { stdio: ['pipe', 'ignore', 'ignore', 'pipe'] });
const waiting = [];
let held = '';
loop.stdio[3].setEncoding('utf8').on('data', (chunk) => {
  held += chunk;
  for (let end = held.indexOf('\\n'); end !== -1; end = held.indexOf('\\n')) {
    const line = held.slice(0, end);
    held = held.slice(end + 1);
    waiting.shift().writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(line) }).end(line);
  }
});
require('http').createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => (body += chunk));
  req.on('end', () => {
    waiting.push(res);
    loop.stdin.write(JSON.stringify(JSON.parse(body || '{}')) + '\\n');
  });
}).listen(process.env.FLASK_PROXY_PORT);
`;
// The smallest server of the proxy's line design (lifecycle.md), the floor of what abandoned requests
// cost: node:http with the proxy's socket buffer size, at most 64 activations, a line of at most 1,000
// whose bodies are read only when their turn comes, a client that left then noticed before anything
// runs, a running action's group killed when its client leaves.
const LINE_FLOOR_SERVER = `
const { spawn } = require('child_process');
let running = 0;
const line = [];
const done = () => { running--; const next = line.shift(); if (next) next(); };
require('http').createServer({ highWaterMark: 16384 }, (req, res) => {
  const start = () => {
    running++;
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => setImmediate(() => setImmediate(() => {
      if (res.destroyed || req.socket.readableEnded) return done();
      const body = Buffer.concat(chunks).toString();
      // As the proxy does: the arguments in argv[1] when they fit, and on stdin.
      const argv = Buffer.byteLength(body) < 131072 ? [body] : [];
      const child = spawn('bash', ['-c', process.env.ACTION, 'action', ...argv], { detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
      child.stdin.on('error', () => {});
      child.stdin.end(body);
      let out = '';
      child.stdout.on('data', (chunk) => (out += chunk));
      res.once('close', () => { if (!res.writableFinished) try { process.kill(-child.pid, 'SIGKILL'); } catch {} });
      child.on('close', () => { done(); if (!res.destroyed) res.end(out); });
    })));
    req.on('close', () => { if (!req.complete) done(); });
  };
  if (running < 64) return start();
  if (line.length >= 1000) return res.writeHead(503, { 'Retry-After': '1' }).end('{}');
  line.push(start);
  res.once('close', () => { const at = line.indexOf(start); if (at !== -1) line.splice(at, 1); });
}).listen(process.env.FLASK_PROXY_PORT, '127.0.0.1', 4096);
`;
// The action of the line rows: it hangs when asked to, else answers at once.
const HANGING_WEB_ACTION = '#!/bin/bash\ncase "$1" in *hang*) sleep 300 ;; esac\necho \'{"body":"ok"}\'\n';

// Every measured Node process gets this environment: NODE_EXTRA_CA_CERTS costs start-up time on some
// machines and is not set in containers.
const ENV: NodeJS.ProcessEnv = { ...process.env };
for (const key of ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS', 'NODE_COMPILE_CACHE', 'PROXY_CODE_CACHE']) delete ENV[key];

const median = (values: number[]): number => percentile(values, 50);
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const round = (n: number, digits = 2): number => Number(n.toFixed(digits));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

function post(port: number, path: string, body: string | Buffer, agent: Agent | false): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    // A JSON Content-Type: openwhisk-runtime-nodejs (express) reads nothing else.
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** How long a server that is not listening yet may take to come up. */
const START_TIMEOUT_MS = 60_000;

/** Retries until the server answers; resolves with the answer. A server that never comes up (it crashed) ends the bench. */
async function postWhenUp(port: number, path: string, body: string): Promise<{ status: number; text: string }> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      return await post(port, path, body, false);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ECONNREFUSED') throw error;
      if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${START_TIMEOUT_MS / 1000} s: the server did not start`, { cause: error });
      // Not a busy loop: the proxy starting up needs the CPU more than this client does.
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
}

interface Proxy {
  port: number;
  dir: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

async function spawnProxy(extraEnv: NodeJS.ProcessEnv = {}, command = [process.execPath, ...PROXY_FLAGS, PROXY], base = tmpdir()): Promise<Proxy> {
  const port = await freePort();
  const dir = makeFolder('proxy-bench-', base);
  copyFileSync(STUB, join(dir, 'exec'));
  const child = spawn(command[0]!, command.slice(1), {
    env: { ...ENV, FLASK_PROXY_PORT: String(port), PROXY_ACTION_DIR: dir, ...extraEnv },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  return serving(child, port, dir);
}

// Every server started and not yet stopped, and every folder made and not yet removed: a bench that
// fails midway leaves none of them behind.
const servers = new Set<ChildProcess>();
const folders = new Set<string>();
process.on('exit', () => {
  for (const child of servers) child.kill('SIGKILL');
  for (const folder of folders) rmSync(folder, { recursive: true, force: true });
});

/** A new temporary folder (removed at exit if not before, by removeFolder). */
function makeFolder(prefix: string, base = tmpdir()): string {
  const folder = mkdtempSync(join(base, prefix));
  folders.add(folder);
  return folder;
}

function removeFolder(folder: string): void {
  rmSync(folder, { recursive: true, force: true });
  folders.delete(folder);
}

/** A server started as `child` on `port` with its folder `dir`; stopping it kills it and removes the folder. */
function serving(child: ChildProcess, port: number, dir: string): Proxy {
  servers.add(child);
  const exited = new Promise((resolve) => child.once('close', resolve));
  return {
    port,
    dir,
    child,
    async stop() {
      child.kill('SIGKILL');
      await exited;
      servers.delete(child);
      removeFolder(dir);
    },
  };
}

function initBody(code: string, binary = false): string {
  return JSON.stringify({ value: { code, binary } });
}

async function ready(proxy: Proxy): Promise<void> {
  await postWhenUp(proxy.port, '/nothing', '');
}

/** The floor of every start-up: `node -e 0`, spawn to exit. */
async function nodeStartup(): Promise<number> {
  const start = now();
  await new Promise((resolve) => spawn(process.execPath, ['-e', '0'], { env: ENV, stdio: 'ignore' }).once('close', resolve));
  return now() - start;
}

async function readyTime(command?: string[]): Promise<number> {
  const start = now();
  const proxy = await spawnProxy({}, command);
  await ready(proxy);
  const elapsed = now() - start;
  await proxy.stop();
  return elapsed;
}

/** Spawn → init → first run, and its parts: until the /init is answered, and the first /run. */
async function coldTime(command?: string[], env: NodeJS.ProcessEnv = {}): Promise<{ total: number; init: number; run: number }> {
  const start = now();
  const proxy = await spawnProxy(env, command);
  const init = await postWhenUp(proxy.port, '/init', initBody(TRIVIAL));
  const initialized = now();
  const run = await post(proxy.port, '/run', '{"value":{}}', false);
  const elapsed = now() - start;
  if (init.status !== 200 || run.status !== 200) throw new Error(`cold start failed: ${init.status} ${run.status}`);
  await proxy.stop();
  return { total: elapsed, init: initialized - start, run: start + elapsed - initialized };
}

/**
 * The spawn floor's cold start as an OpenWhisk container has it: spawn → its /init → its first run.
 * `carryingCode`: the floor first loads the proxy's bundle (without starting it), the least any server
 * that ships this code in one file pays.
 */
async function floorColdTime(carryingCode = false, env: NodeJS.ProcessEnv = {}): Promise<number> {
  const start = now();
  const floor = await spawnFloor(carryingCode, env);
  await postWhenUp(floor.port, '/init', initBody(TRIVIAL));
  const run = await post(floor.port, '/run', '{"value":{}}', false);
  const elapsed = now() - start;
  if (run.status !== 200 || run.text !== '{"ok":true}') throw new Error(`the spawn floor failed: ${run.status} ${run.text}`);
  await floor.stop();
  return elapsed;
}

/**
 * V8's compiled code of the proxy as the image carries it, made by one cold start that then exits on
 * SIGTERM, when it is written: the proxy's code cache (codecache.js) and, on Node 22.1 and later, Node's
 * compile cache. Returns the folder that holds them and the environment that uses them.
 */
async function makeCodeCaches(): Promise<{ folder: string; env: { PROXY_CODE_CACHE: string; NODE_COMPILE_CACHE?: string } }> {
  const folder = makeFolder('proxy-bench-code-caches-');
  const env: { PROXY_CODE_CACHE: string; NODE_COMPILE_CACHE?: string } = { PROXY_CODE_CACHE: join(folder, 'proxy') };
  if ('enableCompileCache' in nodeModule) env.NODE_COMPILE_CACHE = join(folder, 'node');
  const proxy = await spawnProxy({ ...env, PROXY_CODE_CACHE_WRITE: '1' });
  await postWhenUp(proxy.port, '/init', initBody(TRIVIAL));
  await post(proxy.port, '/run', '{"value":{}}', false);
  const exited = new Promise((resolve) => proxy.child.once('close', resolve));
  proxy.child.kill('SIGTERM');
  await exited;
  await proxy.stop();
  const nodeCacheWritten = (dir: string): boolean => readdirSync(dir).some((version) => readdirSync(join(dir, version)).length > 0);
  if (!existsSync(env.PROXY_CODE_CACHE) || (env.NODE_COMPILE_CACHE && !nodeCacheWritten(env.NODE_COMPILE_CACHE))) throw new Error(`the code caches were not written in ${folder}`);
  return { folder, env };
}

/** How long an /init with `body` takes a fresh proxy whose action directory is on FAST_FS. */
async function initTime(body: Buffer, what: string): Promise<number> {
  const proxy = await spawnProxy({}, undefined, FAST_FS);
  await ready(proxy);
  execFileSync('sync');
  const begin = now();
  const answer = await post(proxy.port, '/init', body, false);
  const elapsed = now() - begin;
  if (answer.status !== 200) throw new Error(`${what} init failed: ${answer.text}`);
  await proxy.stop();
  return elapsed;
}

/** The smallest spawn-per-request server, with the trivial action in its folder. */
async function spawnFloor(carryingCode = false, env: NodeJS.ProcessEnv = {}): Promise<Proxy> {
  const floor = await spawnProxy(env, [...FLOOR_NODE, '-e', `${carryingCode ? `require(${JSON.stringify(PROXY)});` : ''}${SPAWN_FLOOR_SERVER}`]);
  writeFileSync(join(floor.dir, 'exec'), TRIVIAL, { mode: 0o755 });
  return floor;
}

/** The action spawned straight from Node as the runner does it: argv, stdin, piped output, no HTTP. */
function directSpawn(exec: string, cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const input = '{}';
    const child = spawn(exec, [input], { cwd, env: ENV, stdio: 'pipe' });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
    child.stdout.on('data', () => {});
    child.stderr.on('data', () => {});
    child.on('error', reject);
    child.on('close', () => resolve());
  });
}

async function timed(times: number, once: () => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < times; i++) {
    const start = now();
    await once();
    samples.push(now() - start);
  }
  return samples;
}

/**
 * Times `rounds` calls of each of `calls` (one client), interleaved so that machine noise hits all alike,
 * each round in an order of its own: the first server after the client's own work, or after a direct
 * spawn, finds the CPU's caches cold, and a fixed order gave that cost to the same server every round.
 * Each call gets its round's number. Answers each call's timings, by round, in the order given.
 */
async function interleaved(rounds: number, calls: Array<(round: number) => Promise<unknown>>): Promise<number[][]> {
  const samples = calls.map((): number[] => []);
  for (let round = 0; round < rounds; round++) {
    const steps = calls.map((call, at) => async () => samples[at]!.push(...(await timed(1, () => call(round)))));
    for (const step of shuffled(steps)) await step();
  }
  return samples;
}

/** Runs `total` calls of `once` from `clients` concurrent loops; answers calls per second. */
async function rate(total: number, clients: number, once: () => Promise<unknown>): Promise<number> {
  let left = total;
  const start = now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (left-- > 0) await once();
    }),
  );
  return (total / (now() - start)) * 1000;
}

function rss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/**
 * A process's anonymous memory (`Anonymous` in smaps_rollup), in bytes: what each container of the same
 * image adds on a host, the pages of the `node` binary being shared through the page cache.
 */
function anonymous(pid: number): number {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Anonymous:\s+(\d+) kB/m.exec(rollup)![1]) * 1024;
}

async function settle(ms = 500): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A server's memory right after a load of its own (and a settle): measured after the next server's
 * load instead, it would have been idle for that long, and a proxy run with an idle collection
 * (PROXY_IDLE_GC_SECONDS) would have given back what the load grew, the floor's not.
 */
async function memoryAfter(load: () => Promise<unknown>, pid: number): Promise<{ rss: number; anonymous: number }> {
  await load();
  await settle();
  return { rss: rss(pid) / 2 ** 20, anonymous: anonymous(pid) / 2 ** 20 };
}

/** ~2000 files, ~40 MB: text, random (incompressible) data, nested folders, an exec. */
function makeBigArchive(dir: string): string {
  const source = join(dir, 'source');
  const words = 'the quick brown fox jumps over the lazy dog activation sentinel central directory '.split(' ');
  for (let i = 0; i < 2000; i++) {
    const folder = join(source, `pkg${i % 40}`, `mod${i % 7}`);
    mkdirSync(folder, { recursive: true });
    let contents: Buffer;
    if (i % 4 === 0) contents = randomBytes(40_000 + (i % 10) * 1000);
    else {
      const size = 10_000 + (i % 13) * 1000;
      const text: string[] = [];
      for (let length = 0; length < size; ) {
        const word = words[(i * 7 + length) % words.length]!;
        text.push(word);
        length += word.length + 1;
      }
      contents = Buffer.from(text.join(' '));
    }
    writeFileSync(join(folder, `file${i}.${i % 4 === 0 ? 'bin' : 'txt'}`), contents);
  }
  writeFileSync(join(source, 'exec'), TRIVIAL, { mode: 0o755 });
  const archive = join(dir, 'big.zip');
  execFileSync('zip', ['-q', '-r', archive, '.'], { cwd: source });
  // The same tree as a .tar.gz, for the tar reader against `tar -xzf`.
  execFileSync('tar', ['-czf', join(dir, 'big.tar.gz'), '.'], { cwd: source });
  rmSync(source, { recursive: true });
  return archive;
}

function treeBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const stats = statSync(join(dir, name));
    if (stats.isFile()) total += stats.size;
  }
  return total;
}

/** A row as a part adds it: its ratio is value / floor unless the part gives one. */
type NewRow = Omit<Row, 'ratio'> & { ratio?: number };

interface Row {
  metric: string;
  value: number;
  unit: string;
  floor: number;
  floorName: string;
  /** value / floor, or (start-up rows) the median of each repetition's own ratio. */
  ratio: number;
  /** The target ratio: at most this, or at least it when `higherIsBetter`. */
  limit?: number;
  higherIsBetter?: boolean;
}

function target(row: Row): string {
  return row.limit === undefined ? '' : `${row.higherIsBetter ? '≥' : '≤'} ${round(row.limit)}x`;
}

function met(row: Row): boolean | undefined {
  if (row.limit === undefined) return undefined;
  return row.higherIsBetter ? row.ratio >= row.limit : row.ratio <= row.limit;
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  const add = (row: NewRow): void => {
    const ratio = row.ratio ?? row.value / row.floor;
    const full: Row = { ...row, value: round(row.value), floor: round(row.floor), ratio: round(ratio, ratio < 0.01 ? 4 : 2) };
    rows.push(full);
    console.error(`${full.metric}: ${full.value} ${full.unit} (floor ${full.floor}, ${full.ratio}x, target ${target(full) || 'none'})`);
  };
  // BENCH_ONLY=<part>: only that part, results.json untouched: `cold` (start-up and cold start),
  // `archives` (ZIP and tar.gz inits against unzip and tar), `loop` (action-loop mode), `line` (abandoned
  // requests in line), `runtimes` (the Node.js runtime beside openwhisk-runtime-nodejs), `baseline` (this
  // build beside BENCH_BASELINE's).
  const only = process.env.BENCH_ONLY;
  if (only) {
    const parts: Record<string, () => Promise<void>> = { cold: () => startUp(add), archives: () => archives(add), loop: () => loopMode(add), line: () => abandonedLine(add), runtimes: () => nodejsRuntimes(add), baseline: () => againstBaseline(add) };
    if (!parts[only]) throw new Error(`BENCH_ONLY=${only}: not one of ${Object.keys(parts).join(', ')}`);
    await parts[only]();
    console.log(table(rows));
    return;
  }

  await startUp(add);

  // Warm runs, throughput and memory: the proxy and the spawn floor, each with the trivial action.
  const proxy = await spawnProxy();
  await ready(proxy);
  await post(proxy.port, '/init', initBody(TRIVIAL), false);
  const floor = await spawnFloor();
  await postWhenUp(floor.port, '/run', '{"value":{}}');
  await settle();
  const idleRss = rss(proxy.child.pid!);
  const idleAnonymous = anonymous(proxy.child.pid!);
  const keepAlive = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const floorAgent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const run = (agent: Agent | false) => () => post(proxy.port, '/run', '{"value":{}}', agent);
  const floorRun = () => post(floor.port, '/run', '{"value":{}}', floorAgent);
  const exec = join(proxy.dir, 'exec');
  const direct = () => directSpawn(exec, proxy.dir);
  await timed(50, run(keepAlive)); // warm-up
  await timed(50, floorRun);
  await timed(50, direct);
  const [warmKeepAlive, warmNew, warmFloor, warmDirect] = (await interleaved(WARM_RUNS, [run(keepAlive), run(false), floorRun, direct])) as [number[], number[], number[], number[]];
  add({ metric: 'warm /run p50, keep-alive', value: median(warmKeepAlive), unit: 'ms', floor: median(warmFloor), floorName: 'spawn floor p50', limit: 1.1 });
  add({ metric: 'warm /run p99, keep-alive', value: percentile(warmKeepAlive, 99), unit: 'ms', floor: percentile(warmFloor, 99), floorName: 'spawn floor p99' });
  add({ metric: 'warm /run p50, new connection', value: median(warmNew), unit: 'ms', floor: median(warmFloor), floorName: 'spawn floor p50 (keep-alive)' });
  add({ metric: 'warm /run p50 against a direct spawn (reference)', value: median(warmKeepAlive), unit: 'ms', floor: median(warmDirect), floorName: 'direct spawn p50' });

  const throughput: number[] = [];
  const throughputFloor: number[] = [];
  const throughputDirect: number[] = [];
  for (let i = 0; i < 3; i++) {
    throughput.push(await rate(THROUGHPUT_RUNS, CLIENTS, run(keepAlive)));
    throughputFloor.push(await rate(THROUGHPUT_RUNS, CLIENTS, floorRun));
    throughputDirect.push(await rate(THROUGHPUT_RUNS, CLIENTS, direct));
  }
  add({ metric: `throughput, ${CLIENTS} keep-alive clients`, value: median(throughput), unit: 'runs/s', floor: median(throughputFloor), floorName: 'spawn floor', limit: 0.9, higherIsBetter: true });
  add({ metric: `throughput against ${CLIENTS} parallel direct spawns (reference)`, value: median(throughput), unit: 'runs/s', floor: median(throughputDirect), floorName: `${CLIENTS} parallel direct spawns` });

  await loopMode(add);
  await nodejsRuntimes(add);
  await abandonedLine(add);
  await againstBaseline(add);

  // Memory: idle after init against a bare node:http server; after the same load, against the spawn floor
  // after it (the throughput runs above were the same for both).
  const bare = await spawnProxy({}, [...FLOOR_NODE, '-e', BARE_SERVER]);
  await postWhenUp(bare.port, '/', '');
  await settle();
  const bareRss = rss(bare.child.pid!);
  const bareAnonymous = anonymous(bare.child.pid!);
  await bare.stop();
  add({ metric: 'RSS idle after init', value: idleRss / 2 ** 20, unit: 'MiB', floor: bareRss / 2 ** 20, floorName: 'bare node:http server', limit: 1.15 });
  add({ metric: 'anonymous memory idle after init', value: idleAnonymous / 2 ** 20, unit: 'MiB', floor: bareAnonymous / 2 ** 20, floorName: 'bare node:http server' });
  const soak = await memoryAfter(() => rate(SOAK_RUNS, CLIENTS, run(keepAlive)), proxy.child.pid!);
  const floorSoak = await memoryAfter(() => rate(SOAK_RUNS, CLIENTS, floorRun), floor.child.pid!);
  add({ metric: `RSS after ${SOAK_RUNS} activations`, value: soak.rss, unit: 'MiB', floor: floorSoak.rss, floorName: 'spawn floor after the same load', limit: 1.05 });
  add({ metric: `anonymous memory after ${SOAK_RUNS} activations`, value: soak.anonymous, unit: 'MiB', floor: floorSoak.anonymous, floorName: 'spawn floor after the same load' });
  // Growth that stays after the process is idle again would be a leak; V8's young generation is not.
  await settle(IDLE_AGAIN_MS);
  add({ metric: `RSS ${IDLE_AGAIN_MS / 1000} s after the last activation (reference)`, value: rss(proxy.child.pid!) / 2 ** 20, unit: 'MiB', floor: rss(floor.child.pid!) / 2 ** 20, floorName: 'spawn floor, as long after' });
  keepAlive.destroy();
  floorAgent.destroy();
  await floor.stop();
  await proxy.stop();

  await archives(add);

  // Size: what the proxy adds to its base image.
  const proxyBytes = statSync(PROXY).size + statSync(STUB).size;
  const nodeBytes = statSync(process.execPath).size;
  add({ metric: 'bytes added to the base image (JS + stub)', value: proxyBytes / 1024, unit: 'KiB', floor: nodeBytes / 1024, floorName: 'the node binary' });

  const results = { date: new Date().toISOString(), node: process.version, proxyFlags: PROXY_FLAGS, quick: QUICK, rows };
  writeFileSync(join(ROOT, 'bench', 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(ROOT, 'bench', 'results.svg'), chart(rows));
  console.log(table(rows));
}

/** Archives: the whole /init against `unzip -q` and `tar -xzf` of the same tree. */
async function archives(add: (row: NewRow) => void): Promise<void> {
  const work = makeFolder('proxy-bench-zip-', FAST_FS);
  try {
    const archive = makeBigArchive(work);
    const formats: Array<[name: string, path: string, floorName: string, extract: (to: string) => void]> = [
      ['zip', archive, 'unzip -q', (to) => execFileSync('unzip', ['-q', archive, '-d', to])],
      ['tar.gz', join(work, 'big.tar.gz'), 'tar -xzf', (to) => execFileSync('tar', ['-xzf', join(work, 'big.tar.gz'), '-C', to])],
    ];
    for (const [name, path, floorName, extractWithTool] of formats) {
      const bytes = readFileSync(path);
      // Encoded once here: the client's own string encoding is not the proxy's time.
      const body = Buffer.from(initBody(bytes.toString('base64'), true));
      // A program of the archive's size: an /init that receives and decodes as much, and extracts nothing.
      const program = Buffer.concat([Buffer.from('#!/bin/sh\n'), randomBytes(bytes.length - 10)]);
      const programBody = Buffer.from(initBody(program.toString('base64'), true));
      const tool: number[] = [];
      const init: number[] = [];
      const programInit: number[] = [];
      let extracted = 0;
      for (let i = 0; i < (QUICK ? 3 : 7); i++) {
        const unpacked = join(work, `unpacked${i}`);
        mkdirSync(unpacked);
        execFileSync('sync');
        const start = now();
        extractWithTool(unpacked);
        tool.push(now() - start);
        extracted = treeBytes(unpacked);
        rmSync(unpacked, { recursive: true });

        init.push(await initTime(body, `the ${name}`));
        programInit.push(await initTime(programBody, "the program's"));
      }
      console.error(`${name} archive: ${bytes.length} bytes, ${extracted} bytes extracted`);
      add({ metric: `/init of a ${(bytes.length / 2 ** 20).toFixed(0)} MiB, 2001-file ${name} (on ${FAST_FS})`, value: median(init), unit: 'ms', floor: median(tool), floorName, limit: 1.1 });
      // The tool reads a file; an /init first receives the body and decodes its base64 (the program's /init).
      add({ metric: `/init of the ${name} against ${floorName} after receiving and decoding the same body (reference)`, value: median(init), unit: 'ms', floor: median(tool) + median(programInit), floorName: `${floorName} + the /init of a program of the archive's size (${round(median(programInit))} ms)` });
    }
  } finally {
    removeFolder(work);
  }
}

/** The items in a random order (Fisher-Yates). */
function shuffled<T>(items: T[]): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy;
}

/**
 * The ratio of two servers' start-ups measured in the same repetitions: the median of each repetition's
 * own ratio. The servers of a repetition start within a second of each other, while the machine's speed
 * drifts over the minutes of the whole: the spawn floor against itself, in four runs of 40 cold starts,
 * came out 0.89-1.03x as a ratio of medians and 0.98-1.01x as this.
 */
function pairedRatio(values: number[], floors: number[]): number {
  return median(values.map((value, i) => value / floors[i]!));
}

/** Start-up: the cold start and its parts, against the floors; interleaved so that machine noise hits all alike. */
async function startUp(add: (row: NewRow) => void): Promise<void> {
  // As the image starts it: with V8's compiled code, the floor given the same environment.
  const caches = await makeCodeCaches();
  const samples: Record<string, number[]> = {};
  const sample = (name: string, value: number): void => void (samples[name] ??= []).push(value);
  const steps: Array<() => Promise<void>> = [
    async () => sample('node', await nodeStartup()),
    async () => sample('ready', await readyTime()),
    async () => sample('bareReady', await readyTime([...FLOOR_NODE, '-e', BARE_SERVER])),
    async () => {
      const parts = await coldTime();
      sample('cold', parts.total);
      sample('coldInit', parts.init);
      sample('coldRun', parts.run);
    },
    async () => sample('floorCold', await floorColdTime()),
    async () => sample('floorCarryingCode', await floorColdTime(true)),
    async () => sample('cachedCold', (await coldTime(undefined, caches.env)).total),
    async () => sample('floorCachedCold', await floorColdTime(false, caches.env)),
  ];
  const nodeCache = caches.env.NODE_COMPILE_CACHE;
  if (nodeCache) steps.push(async () => sample('nodeCachedCold', (await coldTime(undefined, { NODE_COMPILE_CACHE: nodeCache })).total));
  // Each repetition in an order of its own, so that no measurement always follows the same one (the
  // previous server's exit can still be under way when the next starts).
  for (let i = 0; i < COLD_REPEAT; i++) for (const step of shuffled(steps)) await step();
  const m = (name: string): number => median(samples[name] ?? []);
  const row = (metric: string, name: string, floorName: string, floorLabel: string, limit?: number): void =>
    add({ metric, value: m(name), unit: 'ms', floor: m(floorName), floorName: floorLabel, ratio: pairedRatio(samples[name]!, samples[floorName]!), limit });
  removeFolder(caches.folder);
  row('cold start (spawn → init → first run)', 'cold', 'floorCold', 'spawn floor: spawn → init → first run', 1.1);
  row(`cold start as the image starts, with V8's compiled code (${nodeCache ? "the proxy's code cache and Node's compile cache" : "the proxy's code cache"})`, 'cachedCold', 'floorCachedCold', 'spawn floor, the same environment', 1.1);
  if (nodeCache) row("cold start with Node's compile cache alone, without the proxy's code cache (reference)", 'nodeCachedCold', 'floorCachedCold', 'spawn floor, the same environment');
  // How far apart two runs of the same server come out: the spawn floor is a `node -e` script, which
  // Node's compile cache does not serve, so the environment above changes nothing for it.
  row('the spawn floor in the same environment as the image, against itself (reference)', 'floorCachedCold', 'floorCold', 'spawn floor');
  // The share of the target that loading the proxy's code alone takes.
  row("cold start of the spawn floor loading the proxy's code first (reference)", 'floorCarryingCode', 'floorCold', 'spawn floor: spawn → init → first run');
  row('cold start against node -e 0 (reference)', 'cold', 'node', 'node -e 0');
  // Where a cold start goes: until the /init is answered (start-up, then the init), and the first /run.
  row('cold start, part: spawn → /init answered (reference)', 'coldInit', 'bareReady', 'bare node:http server: spawn → first answer');
  add({ metric: 'cold start, part: the first /run (reference)', value: m('coldRun'), unit: 'ms', floor: Math.max(0.01, m('floorCold') - m('bareReady')), floorName: 'spawn floor: its init and first run, less a bare server\'s start' });
  row('ready (spawn → first HTTP answer) (reference)', 'ready', 'bareReady', 'bare node:http server');
  row('ready, a bare node:http server (reference)', 'bareReady', 'node', 'node -e 0');
}

/**
 * Sends a request with its whole body and closes the connection once `leave` settles; resolves with what
 * was answered before that.
 */
function abandon(port: number, body: string, leave: Promise<unknown>): Promise<string> {
  return new Promise((resolve) => {
    let answer = '';
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(`POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`);
      socket.write(body);
      void leave.then(() => socket.destroy());
    });
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => resolve(answer));
  });
}

/**
 * lifecycle.md's line of abandoned requests, in Knative mode: 64 hung activations fill the slots, 2,000
 * requests of 256 KiB arrive and leave after a second (1,000 wait, the rest are refused), the hung ones
 * are let go, and the next request is answered. RSS growth against the line floor (LINE_FLOOR_SERVER)
 * put through the same, one after the other.
 */
async function abandonedLine(add: (row: NewRow) => void): Promise<void> {
  const env = { ACTION: HANGING_WEB_ACTION, __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: HANGING_WEB_ACTION };
  const pad = `{"pad":"${'x'.repeat(256 * 1024)}"}`;
  const growth = { proxy: { waiting: [] as number[], after: [] as number[] }, floor: { waiting: [] as number[], after: [] as number[] } };
  for (let i = 0; i < (QUICK ? 1 : 3); i++) {
    for (const [name, command] of [['proxy', undefined], ['floor', [...FLOOR_NODE, '-e', LINE_FLOOR_SERVER]]] as const) {
      const server = await spawnProxy(env, command ? [...command] : undefined);
      try {
        await postWhenUp(server.port, '/', '{"warm":true}');
        await settle();
        const before = rss(server.child.pid!);
        let release!: () => void;
        const letGo = new Promise<void>((resolve) => (release = resolve));
        const hung = Array.from({ length: 64 }, () => abandon(server.port, '{"hang":true}', letGo));
        await settle(2000);
        const answers = await Promise.all(Array.from({ length: 2000 }, () => abandon(server.port, pad, settle(1000))));
        if (!answers.some((answer) => answer.startsWith('HTTP/1.1 503'))) throw new Error(`${name}: the line never filled`);
        growth[name].waiting.push(rss(server.child.pid!) - before);
        release();
        await Promise.all(hung);
        // The line may still be full of requests whose clients left: a 503 is tried again.
        let next = await post(server.port, '/', '{"live":true}', false);
        for (let tries = 0; next.status === 503 && tries < 300; tries++) {
          await settle(100);
          next = await post(server.port, '/', '{"live":true}', false);
        }
        if (next.status !== 200) throw new Error(`${name}: the next request answered ${next.status} ${next.text}`);
        growth[name].after.push(rss(server.child.pid!) - before);
      } finally {
        await server.stop();
      }
    }
  }
  const MiB = 2 ** 20;
  add({ metric: 'RSS growth, 1,000 abandoned 256 KiB requests waiting (reference)', value: median(growth.proxy.waiting) / MiB, unit: 'MiB', floor: median(growth.floor.waiting) / MiB, floorName: 'line floor, the same' });
  add({ metric: 'RSS growth after 2,000 abandoned 256 KiB requests and the next answer (lifecycle.md: < 150 MiB)', value: median(growth.proxy.after) / MiB, unit: 'MiB', floor: median(growth.floor.after) / MiB, floorName: 'line floor, the same', limit: 1.1 });
}

/**
 * This build against BENCH_BASELINE's, side by side: cold start, loop mode's warm p50 and p99, and
 * anonymous memory after the same load in both modes. Nothing without BENCH_BASELINE.
 */
async function againstBaseline(add: (row: NewRow) => void): Promise<void> {
  if (!BASELINE) return;
  const floorName = `baseline ${process.env.BENCH_BASELINE}`;
  const cold: number[] = [];
  const baselineCold: number[] = [];
  for (let i = 0; i < REPEAT; i++) {
    for (const step of shuffled([async () => cold.push((await coldTime()).total), async () => baselineCold.push((await coldTime(BASELINE)).total)])) await step();
  }
  add({ metric: 'against the baseline: cold start', value: median(cold), unit: 'ms', floor: median(baselineCold), floorName, ratio: pairedRatio(cold, baselineCold) });
  for (const loop of [true, false]) {
    const mode = loop ? 'loop mode' : 'a process per activation';
    const env = loop ? { PROXY_ACTION_LOOP: '1' } : {};
    const servers = [await spawnProxy(env), await spawnProxy(env, BASELINE)];
    const agents = servers.map(() => new Agent({ keepAlive: true, maxSockets: CLIENTS }));
    const runs = servers.map((server, i) => () => post(server.port, '/run', '{"value":{}}', agents[i]!));
    try {
      for (const server of servers) {
        await ready(server);
        const init = await post(server.port, '/init', initBody(loop ? TRIVIAL_LOOP : TRIVIAL), false);
        if (init.status !== 200) throw new Error(`init failed: ${init.text}`);
      }
      if (loop) {
        for (const run of runs) await timed(200, run);
        const warm = await interleaved(WARM_RUNS, runs);
        add({ metric: 'against the baseline: loop mode warm /run p50', value: median(warm[0]!), unit: 'ms', floor: median(warm[1]!), floorName });
        add({ metric: 'against the baseline: loop mode warm /run p99', value: percentile(warm[0]!, 99), unit: 'ms', floor: percentile(warm[1]!, 99), floorName });
      }
      const memory = [];
      for (const [at, run] of runs.entries()) memory.push(await memoryAfter(() => rate(loop ? THROUGHPUT_RUNS * 4 : THROUGHPUT_RUNS, CLIENTS, run), servers[at]!.child.pid!));
      add({ metric: `against the baseline: ${mode}, anonymous memory after the load`, value: memory[0]!.anonymous, unit: 'MiB', floor: memory[1]!.anonymous, floorName });
    } finally {
      for (const agent of agents) agent.destroy();
      for (const server of servers) await server.stop();
    }
  }
}

// OpenWhisk's Go actionloop proxy listens on 8080, with its action in ./action.
const GO_ACTIONLOOP_PORT = 8080;

/**
 * OW_ACTIONLOOP_PROXY=<binary>: OpenWhisk's Go actionloop proxy (`go build ./main` in a checkout of
 * apache/openwhisk-runtime-go), started in a folder of its own with the trivial loop action; else nothing.
 */
async function startGoActionLoop(): Promise<Proxy | undefined> {
  const binary = process.env.OW_ACTIONLOOP_PROXY;
  if (!binary) return undefined;
  const dir = makeFolder('proxy-bench-go-');
  const go = serving(spawn(binary, [], { cwd: dir, env: ENV, stdio: ['ignore', 'ignore', 'ignore'] }), GO_ACTIONLOOP_PORT, dir);
  const init = await postWhenUp(GO_ACTIONLOOP_PORT, '/init', initBody(TRIVIAL_LOOP));
  if (init.status !== 200) {
    await go.stop();
    throw new Error(`the Go actionloop proxy's init failed: ${init.text}`);
  }
  return go;
}

/** The smallest loop proxy (LOOP_FLOOR_SERVER) with its bash loop, once it has answered a first /run. */
async function startLoopFloor(): Promise<Proxy> {
  const floor = await spawnProxy({ LOOP: TRIVIAL_LOOP.split('\n').slice(1).join('\n') }, [...FLOOR_NODE, '-e', LOOP_FLOOR_SERVER]);
  await postWhenUp(floor.port, '/run', '{"value":{}}');
  return floor;
}

/**
 * Action-loop mode against its floor, the smallest loop proxy (LOOP_FLOOR_SERVER), and against a direct
 * spawn of the per-activation action: warm latency and throughput, interleaved so noise hits all alike.
 */
async function loopMode(add: (row: NewRow) => void): Promise<void> {
  const loopProxy = await spawnProxy({ PROXY_ACTION_LOOP: '1' });
  // The per-activation form of the action, spawned directly, in a folder of its own.
  const directDir = makeFolder('proxy-bench-direct-');
  writeFileSync(join(directDir, 'exec'), TRIVIAL, { mode: 0o755 });
  const direct = () => directSpawn(join(directDir, 'exec'), directDir);
  await ready(loopProxy);
  const init = await post(loopProxy.port, '/init', initBody(TRIVIAL_LOOP), false);
  if (init.status !== 200) throw new Error(`loop init failed: ${init.text}`);
  const floor = await startLoopFloor();
  // A second floor in the same rounds: how far apart two of the same server's p50s and p99s come out.
  const twin = await startLoopFloor();
  await post(loopProxy.port, '/run', '{"value":{}}', false);
  await settle();
  add({ metric: 'loop mode: anonymous memory idle after init', value: anonymous(loopProxy.child.pid!) / 2 ** 20, unit: 'MiB', floor: anonymous(floor.child.pid!) / 2 ** 20, floorName: 'smallest Node loop proxy' });
  const agents = [0, 1, 2, 3].map(() => new Agent({ keepAlive: true, maxSockets: CLIENTS }));
  const ours = () => post(loopProxy.port, '/run', '{"value":{}}', agents[0]!);
  const theirs = () => post(floor.port, '/run', '{"value":{}}', agents[1]!);
  const go = await startGoActionLoop();
  const goRun = () => post(GO_ACTIONLOOP_PORT, '/run', '{"value":{}}', agents[2]!);
  const twinRun = () => post(twin.port, '/run', '{"value":{}}', agents[3]!);
  await timed(200, ours); // warm-up
  await timed(200, theirs);
  await timed(200, twinRun);
  if (go) await timed(200, goRun);
  // A direct spawn in one round of four (it is slow), timed in the same rounds.
  const sometimesDirect = async (round: number): Promise<unknown> => (round % 4 === 0 ? direct() : undefined);
  const [warmOurs, warmFloor, warmTwin, warmSometimesDirect, warmGo] = (await interleaved(LOOP_WARM_RUNS, [ours, theirs, twinRun, sometimesDirect, ...(go ? [goRun] : [])])) as [number[], number[], number[], number[], number[] | undefined];
  await twin.stop();
  const warmDirect = warmSometimesDirect.filter((_, round) => round % 4 === 0);
  add({ metric: 'loop mode: warm /run p50, keep-alive', value: median(warmOurs), unit: 'ms', floor: median(warmFloor), floorName: 'smallest Node loop proxy p50', limit: 1.2 });
  add({ metric: 'loop mode: warm /run p50 against a spawn', value: median(warmOurs), unit: 'ms', floor: median(warmDirect), floorName: 'direct spawn p50', limit: 0.25 });
  add({ metric: 'loop mode: warm /run p99, keep-alive', value: percentile(warmOurs, 99), unit: 'ms', floor: percentile(warmFloor, 99), floorName: 'smallest Node loop proxy p99', limit: 1.3 });
  add({ metric: 'loop mode: the smallest loop proxy against itself, p50 (reference)', value: median(warmTwin), unit: 'ms', floor: median(warmFloor), floorName: 'the same server, another process, in the same rounds' });
  add({ metric: 'loop mode: the smallest loop proxy against itself, p99 (reference)', value: percentile(warmTwin, 99), unit: 'ms', floor: percentile(warmFloor, 99), floorName: 'the same server, another process, in the same rounds' });
  if (go && warmGo) {
    add({ metric: 'loop mode: warm /run p50 against Go (reference)', value: median(warmOurs), unit: 'ms', floor: median(warmGo), floorName: "OpenWhisk's Go actionloop proxy p50" });
    add({ metric: 'loop mode: warm /run p99 against Go (reference)', value: percentile(warmOurs, 99), unit: 'ms', floor: percentile(warmGo, 99), floorName: "OpenWhisk's Go actionloop proxy p99" });
  }
  const throughput: number[] = [];
  const floorThroughput: number[] = [];
  const spawns: number[] = [];
  for (let i = 0; i < 3; i++) {
    throughput.push(await rate(THROUGHPUT_RUNS * 4, CLIENTS, ours));
    floorThroughput.push(await rate(THROUGHPUT_RUNS * 4, CLIENTS, theirs));
    spawns.push(await rate(THROUGHPUT_RUNS, CLIENTS, direct));
  }
  add({ metric: `loop mode: throughput, ${CLIENTS} keep-alive clients`, value: median(throughput), unit: 'runs/s', floor: median(spawns), floorName: `${CLIENTS} parallel direct spawns`, limit: 8, higherIsBetter: true });
  add({ metric: `loop mode: throughput of the smallest loop proxy (reference)`, value: median(floorThroughput), unit: 'runs/s', floor: median(spawns), floorName: `${CLIENTS} parallel direct spawns` });
  // Memory after such a load: the proxy process against the floor's, their action processes aside.
  const after = await memoryAfter(() => rate(THROUGHPUT_RUNS * 4, CLIENTS, ours), loopProxy.child.pid!);
  const floorAfter = await memoryAfter(() => rate(THROUGHPUT_RUNS * 4, CLIENTS, theirs), floor.child.pid!);
  add({ metric: 'loop mode: RSS after the load', value: after.rss, unit: 'MiB', floor: floorAfter.rss, floorName: 'smallest Node loop proxy after the same load' });
  add({ metric: 'loop mode: anonymous memory after the load', value: after.anonymous, unit: 'MiB', floor: floorAfter.anonymous, floorName: 'smallest Node loop proxy after the same load', limit: 1.15 });
  // What a warm container keeps while it waits for the next burst (IDLE_COLLECTED_MS).
  await settle(IDLE_COLLECTED_MS);
  add({ metric: `loop mode: anonymous memory ${IDLE_COLLECTED_MS / 1000} s after the load`, value: anonymous(loopProxy.child.pid!) / 2 ** 20, unit: 'MiB', floor: anonymous(floor.child.pid!) / 2 ** 20, floorName: 'smallest Node loop proxy after the same load', limit: 1.15 });
  if (go) {
    // One client: the Go proxy serves one activation at a time (concurrent requests get a reset).
    await rate(THROUGHPUT_RUNS * 4, 1, goRun);
    add({ metric: 'loop mode: anonymous memory after the load against Go (reference)', value: anonymous(loopProxy.child.pid!) / 2 ** 20, unit: 'MiB', floor: anonymous(go.child.pid!) / 2 ** 20, floorName: `OpenWhisk's Go actionloop proxy after ${THROUGHPUT_RUNS * 4} runs, one client` });
    await go.stop();
  }
  for (const agent of agents) agent.destroy();
  await floor.stop();
  await loopProxy.stop();
  removeFolder(directDir);
}

// openwhisk-runtime-nodejs listens on 8080 whatever it is told: this preload moves it to FLASK_PROXY_PORT.
const PORT_PRELOAD = `
const http = require('http');
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (port, ...rest) { return listen.call(this, port === 8080 ? Number(process.env.FLASK_PROXY_PORT) : port, ...rest); };
`;

/** The resident memory of a process and its children (the loop mode's action processes), in bytes. */
function treeRss(pid: number): number {
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    // gone
  }
  return rss(pid) + children.reduce((total, child) => total + treeRss(child), 0);
}

/**
 * The Node.js runtime built on the proxy (examples/nodejs: loop mode, its compile and launcher) beside
 * openwhisk-runtime-nodejs (its core/nodejsActionBase, from the checkout OW_RUNTIME_NODEJS names, with
 * that folder's dependencies installed) on the same JS action: cold start (process start → init → first
 * answer), warm p50 and p99, throughput with 8 clients, memory of the whole process tree idle and after
 * the load. Skipped, and said, without the checkout.
 */
async function nodejsRuntimes(add: (row: NewRow) => void): Promise<void> {
  const checkout = process.env.OW_RUNTIME_NODEJS;
  const app = checkout && join(checkout, 'core', 'nodejsActionBase');
  if (!app || !existsSync(join(app, 'node_modules', 'express'))) {
    console.error('Node.js runtime rows skipped: OW_RUNTIME_NODEJS does not name a checkout of apache/openwhisk-runtime-nodejs with core/nodejsActionBase\'s dependencies installed');
    return;
  }
  const preload = join(makeFolder('proxy-bench-preload-'), 'port.cjs');
  writeFileSync(preload, PORT_PRELOAD);
  const init = JSON.stringify({ value: { code: 'function main(params) { return { greeting: "hello " + (params.name || "world") }; }', main: 'main' } });
  const run = '{"value":{"name":"you"}}';
  const start = {
    ours: () => spawnProxy({ PROXY_ACTION_LOOP: '1', OW_WAIT_FOR_ACK: '1', OW_COMPILER: join(ROOT, 'examples', 'nodejs', 'bin', 'compile') }),
    // Under the same Node flags as ours (BENCH_PROXY_FLAGS), as the floors are.
    theirs: () => spawnProxy({ __OW_ALLOW_CONCURRENT: 'true' }, [...FLOOR_NODE, '-r', preload, join(app, 'app.js')]),
  };
  const cold = { ours: [] as number[], theirs: [] as number[] };
  for (let i = 0; i < REPEAT; i++) {
    for (const name of ['ours', 'theirs'] as const) {
      const begin = now();
      const server = await start[name]();
      try {
        const initialized = await postWhenUp(server.port, '/init', init);
        const answer = await post(server.port, '/run', run, false);
        cold[name].push(now() - begin);
        if (initialized.status !== 200 || answer.status !== 200) throw new Error(`${name}: ${initialized.text} ${answer.text}`);
      } finally {
        await server.stop();
      }
    }
  }
  add({ metric: 'Node.js runtime: cold start (spawn → init → first run)', value: median(cold.ours), unit: 'ms', floor: median(cold.theirs), floorName: 'openwhisk-runtime-nodejs', limit: 1 });
  const servers = { ours: await start.ours(), theirs: await start.theirs() };
  try {
    await warmRows(servers, init, run, add);
  } finally {
    await servers.ours.stop();
    await servers.theirs.stop();
    removeFolder(dirname(preload));
  }
}

/** The warm rows of nodejsRuntimes: latency, memory and throughput of two running servers. */
async function warmRows(servers: { ours: Proxy; theirs: Proxy }, init: string, run: string, add: (row: NewRow) => void): Promise<void> {
  const agents = { ours: new Agent({ keepAlive: true, maxSockets: CLIENTS }), theirs: new Agent({ keepAlive: true, maxSockets: CLIENTS }) };
  const once = { ours: () => post(servers.ours.port, '/run', run, agents.ours), theirs: () => post(servers.theirs.port, '/run', run, agents.theirs) };
  for (const name of ['ours', 'theirs'] as const) await postWhenUp(servers[name].port, '/init', init);
  const idle = { ours: treeRss(servers.ours.child.pid!), theirs: treeRss(servers.theirs.child.pid!) };
  await timed(200, once.ours);
  await timed(200, once.theirs);
  const [warmOurs, warmTheirs] = (await interleaved(WARM_RUNS, [once.ours, once.theirs])) as [number[], number[]];
  const warm = { ours: warmOurs, theirs: warmTheirs };
  add({ metric: 'Node.js runtime: warm /run p50, keep-alive', value: median(warm.ours), unit: 'ms', floor: median(warm.theirs), floorName: 'openwhisk-runtime-nodejs', limit: 1 });
  add({ metric: 'Node.js runtime: warm /run p99, keep-alive', value: percentile(warm.ours, 99), unit: 'ms', floor: percentile(warm.theirs, 99), floorName: 'openwhisk-runtime-nodejs' });
  add({ metric: 'Node.js runtime: RSS idle after init (the process tree)', value: idle.ours / 2 ** 20, unit: 'MiB', floor: idle.theirs / 2 ** 20, floorName: 'openwhisk-runtime-nodejs' });
  await settle();
  add({ metric: `Node.js runtime: RSS after ${WARM_RUNS + 200} activations, one client (the process tree)`, value: treeRss(servers.ours.child.pid!) / 2 ** 20, unit: 'MiB', floor: treeRss(servers.theirs.child.pid!) / 2 ** 20, floorName: 'openwhisk-runtime-nodejs', limit: 1 });
  // Concurrent activations: that runtime takes them with __OW_ALLOW_CONCURRENT (as OpenWhisk sets it for
  // --concurrency above 1) in its one process; the loop mode gives each a process of its own.
  const throughput = { ours: await rate(THROUGHPUT_RUNS, CLIENTS, once.ours), theirs: await rate(THROUGHPUT_RUNS, CLIENTS, once.theirs) };
  add({ metric: 'Node.js runtime: throughput, 8 keep-alive clients', value: throughput.ours, unit: 'runs/s', floor: throughput.theirs, floorName: 'openwhisk-runtime-nodejs' });
  agents.ours.destroy();
  agents.theirs.destroy();
}

function table(rows: Row[]): string {
  const lines = ['| Metric | Proxy | Floor | Ratio | Target |', '| --- | --- | --- | --- | --- |'];
  for (const row of rows) {
    const verdict = met(row) === undefined ? '' : met(row) ? ' (met)' : ' (missed)';
    lines.push(`| ${row.metric} | ${row.value} ${row.unit} | ${row.floor} ${row.unit} (${row.floorName}) | ${row.ratio}x | ${target(row)}${verdict} |`);
  }
  return lines.join('\n');
}

/** A bar per metric: the ratio to its floor, with the floor (1x) marked. */
function chart(rows: Row[]): string {
  const shown = rows.filter((row) => row.unit !== 'KiB');
  const width = 760;
  const barHeight = 22;
  const left = 330;
  const scale = (width - left - 60) / Math.max(2, ...shown.map((row) => row.ratio));
  const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const height = shown.length * (barHeight + 8) + 40;
  const bars = shown.map((row, i) => {
    const y = 30 + i * (barHeight + 8);
    const good = met(row) !== false;
    return [
      `<text x="${left - 8}" y="${y + 15}" text-anchor="end">${escape(row.metric)}</text>`,
      `<rect x="${left}" y="${y}" width="${round(row.ratio * scale)}" height="${barHeight}" fill="${good ? '#4c9a5a' : '#c0803a'}"/>`,
      `<text x="${left + row.ratio * scale + 6}" y="${y + 15}">${row.ratio}x</text>`,
    ].join('');
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<text x="${left}" y="18">ratio to the floor measured in the same run (1x = floor)</text>`,
    ...bars,
    `<line x1="${left + scale}" y1="24" x2="${left + scale}" y2="${height - 6}" stroke="#333" stroke-dasharray="4 3"/>`,
    '</svg>',
    '',
  ].join('\n');
}

await main();
