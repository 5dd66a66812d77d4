// Test helpers: start the real proxy as a child process, each with its own port and action directory,
// and talk HTTP to it.

import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { request as httpRequest, type Agent } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled repository root (tests run from dist/tests). */
export const DIST = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = join(DIST, '..');
// The single-file bundle: what npm start and the image run.
export const PROXY = join(DIST, 'proxy.cjs');
export const STUB = join(ROOT, 'action', 'exec');
export const SENTINEL = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Everything a process wrote on one stream, with a count of sentinel lines as they arrive. */
export class Log {
  private chunks: Buffer[] = [];
  private carry = '';
  bytes = 0;
  sentinels = 0;
  private waiters: Array<() => void> = [];
  /** Keep only a count of bytes and sentinels (for outputs too large to hold). */
  countOnly = false;
  /** Starts reading a stream that was left unread (ProxyOptions.stalledStdout). */
  resume = (): void => {};

  add(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (!this.countOnly) this.chunks.push(chunk);
    const text = this.carry + chunk.toString('latin1');
    let at = text.indexOf(SENTINEL);
    while (at !== -1) {
      this.sentinels++;
      at = text.indexOf(SENTINEL, at + SENTINEL.length);
    }
    this.carry = text.slice(-(SENTINEL.length - 1));
    for (const wake of this.waiters.splice(0)) wake();
  }
  get buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
  get text(): string {
    return this.buffer.toString('utf8');
  }
  /** The text with the sentinel lines taken out. */
  get withoutSentinels(): string {
    return this.text.replaceAll(SENTINEL, '');
  }
  /** Resolves once `text` has arrived; rejects after `ms`. */
  async until(text: string, ms = 30_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!this.text.includes(text)) {
      if (Date.now() > deadline) throw new Error(`expected ${JSON.stringify(text)}; log so far:\n${this.text.slice(-2000)}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  /** Resolves once `n` sentinels have arrived; rejects after `ms`. */
  async untilSentinels(n: number, ms = 30_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.sentinels < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} sentinels, saw ${this.sentinels}; log so far:\n${this.text.slice(-2000)}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }
}

export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
  json(): unknown;
}

export interface RunningProxy {
  port: number;
  dir: string;
  child: ChildProcess;
  stdout: Log;
  stderr: Log;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  request(method: string, path: string, body?: string | Buffer | object, headers?: Record<string, string>): Promise<Response>;
  post(path: string, body?: string | Buffer | object): Promise<Response>;
  /** Waits until both streams carry `n` sentinels. */
  sentinels(n: number): Promise<void>;
  stop(): Promise<void>;
}

export interface ProxyOptions {
  env?: Record<string, string>;
  /** Put the stub at exec (default true). */
  stub?: boolean;
  /** Wait for the port to accept connections (default true). */
  waitReady?: boolean;
  /** Command to run instead of `node dist/proxy.js`. */
  command?: string[];
  /** Give PROXY_ACTION_DIR relative to the proxy's working directory, as `npm start` does. */
  relativeActionDir?: boolean;
  /** Don't read the proxy's stdout until `stdout.resume()` is called (a stalled log collector). */
  stalledStdout?: boolean;
}

/**
 * Starts the proxy with a fresh action directory holding the stub. It listens on a port of the
 * kernel's choosing (FLASK_PROXY_PORT=0), read back from /proc: choosing a free port here and handing
 * it over would race with the other proxies the parallel tests start.
 */
export async function startProxy(options: ProxyOptions = {}): Promise<RunningProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'proxy-test-'));
  if (options.stub !== false) copyFileSync(STUB, join(dir, 'exec'));
  const env: Record<string, string | undefined> = {
    ...process.env,
    FLASK_PROXY_PORT: '0',
    PROXY_ACTION_DIR: options.relativeActionDir ? basename(dir) : dir,
    ...options.env,
  };
  for (const key of ['PORT', 'NODE_EXTRA_CA_CERTS', 'NODE_TEST_CONTEXT', 'NODE_OPTIONS']) if (!(key in (options.env ?? {}))) delete env[key];
  const [command, ...args] = options.command ?? [process.execPath, PROXY];
  const child = spawn(command!, args, { env, cwd: dirname(dir), stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout = new Log();
  const stderr = new Log();
  if (options.stalledStdout) stdout.resume = () => child.stdout!.on('data', (chunk: Buffer) => stdout.add(chunk));
  else child.stdout!.on('data', (chunk: Buffer) => stdout.add(chunk));
  child.stderr!.on('data', (chunk: Buffer) => stderr.add(chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  );
  const proxy: RunningProxy = {
    port: 0,
    dir,
    child,
    stdout,
    stderr,
    exited,
    request: (method, path, body, headers) => request(proxy.port, method, path, body, headers),
    post: (path, body) => request(proxy.port, 'POST', path, body),
    async sentinels(n) {
      await stdout.untilSentinels(n);
      await stderr.untilSentinels(n);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        // What it started goes first, with its process groups: killed, the proxy can't end an activation
        // a test left running (one being cancelled as the test ends, say).
        for (const pid of childPids(child.pid!)) {
          try {
            process.kill(-pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
        child.kill('SIGKILL');
      }
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  if (options.waitReady !== false) {
    try {
      proxy.port = await waitUntilListening(child.pid!, exited);
    } catch (error) {
      await proxy.stop();
      throw new Error(`${(error as Error).message}; stderr: ${stderr.text}`);
    }
  }
  return proxy;
}

/** The port a process listens on: its socket inodes, found in the kernel's TCP tables in LISTEN state. */
function listeningPort(pid: number): number | undefined {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`, { encoding: 'utf8' });
      if (link.startsWith('socket:[')) inodes.add(link.slice(8, -1));
    }
  } catch {
    return undefined; // gone, or a descriptor closed while being read: try again
  }
  for (const table of ['tcp6', 'tcp']) {
    const lines = readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1);
    for (const line of lines) {
      const fields = line.trim().split(/\s+/);
      const LISTEN = '0A';
      if (fields[3] === LISTEN && inodes.has(fields[9]!)) return parseInt(fields[1]!.split(':')[1]!, 16);
    }
  }
  return undefined;
}

export async function waitUntilListening(pid: number, exited?: Promise<unknown>, ms = 10_000): Promise<number> {
  const deadline = Date.now() + ms;
  let gone = false;
  void exited?.then(() => (gone = true));
  while (Date.now() < deadline) {
    if (gone) throw new Error('the proxy exited before it listened');
    const port = listeningPort(pid);
    if (port !== undefined) return port;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`the proxy does not listen after ${ms} ms`);
}

export function request(
  port: number,
  method: string,
  path: string,
  body?: string | Buffer | object,
  headers: Record<string, string> = {},
  agent: Agent | false = false,
): Promise<Response> {
  const payload = body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    // An explicit length: Node sends GET, DELETE and OPTIONS bodies without one otherwise.
    const length = payload === undefined ? {} : { 'Content-Length': String(Buffer.byteLength(payload)) };
    const req = httpRequest({ host: '127.0.0.1', port, method, path, headers: { ...length, ...headers }, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const buffer = Buffer.concat(chunks);
        const text = buffer.toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: buffer, text, json: () => JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Inits the proxy with a script; asserts nothing, returns the response. */
export function initScript(proxy: RunningProxy, code: string, extra: Record<string, unknown> = {}): Promise<Response> {
  return proxy.post('/init', { value: { code, ...extra } });
}

/** Runs `fn` with a proxy that is stopped (and its directory removed) afterwards. */
export async function withProxy<T>(options: ProxyOptions, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  const proxy = await startProxy(options);
  try {
    return await fn(proxy);
  } finally {
    await proxy.stop();
  }
}

/** A temporary folder, removed after `fn`. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'proxy-tmp-'));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Base64 of a ZIP archive that Info-ZIP `zip` makes of `dir` (symlinks kept as links). */
export function zipBase64(dir: string, flags: string[] = []): string {
  return execFileSync('zip', ['-q', '-r', '-y', ...flags, '-', '.'], { cwd: dir, maxBuffer: 1 << 30 }).toString('base64');
}

/** Peak resident set size of a process, in bytes (Linux). */
export function peakRss(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1]) * 1024;
}

/** How many file descriptors a process has open (Linux). */
export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Writes `data` on a new connection (and ends it), resolving with everything the proxy answered until it closed. */
export function exchange(port: number, data: string, end = true): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = '';
    const socket = connect(port, '127.0.0.1', () => (end ? socket.end(data) : socket.write(data)));
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

/**
 * Sends a request whose client gives up: the whole request (or, with `partial`, only the headers and
 * part of the body), then the connection is closed after `closeAfterMs`. Resolves once it is closed,
 * with whatever the proxy answered before that (usually nothing).
 */
export function abandon(port: number, path: string, body: string | Buffer, options: { closeAfterMs?: number; closeWhen?: Promise<unknown>; partial?: boolean; headers?: string } = {}): Promise<string> {
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${bytes.length}\r\n${options.headers ?? ''}\r\n`;
  return new Promise((resolve, reject) => {
    let answer = '';
    let timer: NodeJS.Timeout | undefined;
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(head);
      socket.write(options.partial ? bytes.subarray(0, bytes.length >> 1) : bytes);
      if (options.closeWhen) void options.closeWhen.then(() => socket.destroy());
      else timer = setTimeout(() => socket.destroy(), options.closeAfterMs ?? 50);
    });
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answer);
    });
    socket.on('error', reject);
  });
}

/** Whether a process exists (a zombie counts as gone). */
export function alive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Polls `condition` every 50 ms until it holds; false if it still doesn't after `ms`. */
export async function eventually(condition: () => boolean, ms = 15_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}

/** The current resident set size of a process, in bytes (Linux). */
export function rss(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1]) * 1024;
}

export const MiB = 1024 * 1024;

/** A process's anonymous memory (`Anonymous` in smaps_rollup), in bytes (Linux). */
export function anonymous(pid: number): number {
  const match = /^Anonymous:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return Number(match?.[1]) * 1024;
}

/** The processes in a process group (Linux). */
export function groupMembers(group: number): number[] {
  const members: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // After the command's closing parenthesis: state, ppid, pgrp.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === group && fields[0] !== 'Z') members.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return members;
}

/** The pids of a process's children (Linux). */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Runs `fn` with a proxy in action-loop mode (PROXY_ACTION_LOOP=1). */
export function withLoopProxy<T>(options: ProxyOptions, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  return withProxy({ ...options, env: { PROXY_ACTION_LOOP: '1', ...options.env } }, fn);
}

/** How many lines a file in the proxy's action directory has (test actions count their runs in one). */
export function countLines(proxy: RunningProxy, name: string): number {
  const path = join(proxy.dir, name);
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean).length : 0;
}

/** The pid a test action wrote to a file in the action directory. */
export function pidIn(proxy: RunningProxy, name: string): number {
  return Number(readFileSync(join(proxy.dir, name), 'utf8').trim());
}

/** A folder as `path → kind and mode` ("f755", "d700", "l->target"), for comparing trees. */
export function tree(dir: string, prefix = ''): Record<string, string> {
  const result: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    const key = prefix + name;
    const stats = lstatSync(path);
    const mode = (stats.mode & 0o7777).toString(8);
    if (stats.isSymbolicLink()) result[key] = `l->${readlinkSync(path)}`;
    else if (stats.isDirectory()) {
      result[key] = `d${mode}`;
      Object.assign(result, tree(path, `${key}/`));
    } else result[key] = `f${mode}`;
  }
  return result;
}

export const INIT_FAILED = { error: 'The action failed to generate or locate a binary. See logs for details.' };

/**
 * Asserts that an init was refused as a failed one is (502, the cause on stderr, sentinels) and left the
 * action directory as `before` with the stub in place. `sentinels`: how many both streams carry by then
 * (the init's own, and one for each request before it).
 */
export async function assertInitRefused(proxy: RunningProxy, res: Response, cause: RegExp, before: Record<string, string>, sentinels = 1): Promise<void> {
  assert.equal(res.status, 502);
  assert.deepEqual(res.json(), INIT_FAILED);
  await proxy.sentinels(sentinels);
  assert.match(proxy.stderr.text, cause);
  assert.deepEqual(tree(proxy.dir), before, 'nothing written, nothing left behind');
  assert.equal(readFileSync(join(proxy.dir, 'exec'), 'utf8'), readFileSync(STUB, 'utf8'));
}
