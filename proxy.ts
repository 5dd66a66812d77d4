// The action proxy's entry point: configuration from the environment, a raw node:http server, the
// platform chosen once at start-up, and shutdown. Below it: the platforms (platforms/openwhisk.ts,
// platforms/knative.ts), which map HTTP to the rules they share (protocol.ts), which drive the action
// runner (runner.ts) and its executors. Nothing below imports this file.

import { STATUS_CODES, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { accessSync, constants, mkdirSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { closeConnections, failure, sendError, use } from './protocol.ts';
import { listening } from './timing.ts';
import { ActionRunner, DEFAULT_IDLE_GC_MS, DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_WAITING } from './runner.ts';
import { MESSAGES, ProxyError } from './errors.ts';
import type { ArchiveLimits } from './archive.ts';
import { versionLine } from './diagnostics.ts';
import { verify } from './install.ts';

// What a runtime built on the proxy needs, from one module (the bundle the image ships is one file).
export { ProxyError } from './errors.ts';
export { ActionRunner, type InitValue, type RunnerOptions } from './runner.ts';
export { LOG_SENTINEL } from './protocol.ts';

const PLATFORMS = ['openwhisk', 'knative'] as const;
export type PlatformName = (typeof PLATFORMS)[number];

export interface ProxyConfig {
  port: number;
  /** The address to listen on (PROXY_HOST); undefined: every interface, IPv6 too where there is IPv6. */
  host: string | undefined;
  /** Where the action lives; `exec` inside it is what runs. */
  actionDir: string;
  /** Whether more than one successful init is allowed (local development). */
  allowReinit: boolean;
  platform: PlatformName;
  /** The largest request body read; more is answered 413. */
  maxBodyBytes: number;
  /** Most activations running at once; 0 for no limit. */
  maxActivations: number;
  /** Most requests waiting for a slot when there is a limit; one more is a 503. */
  maxWaiting: number;
  /** The longest result line an action may print; a longer one is a 502. */
  maxResultBytes: number;
  /** How long running activations may go on after SIGTERM. */
  shutdownGraceMs: number;
  /** Action-loop mode (PROXY_ACTION_LOOP=1): long-lived action processes, one activation per line. */
  actionLoop: boolean;
  /** Action-loop mode: wait for the action's `{"ok": true}` on fd 3 after starting it (OW_WAIT_FOR_ACK). */
  ack: boolean;
  ackTimeoutMs: number;
  /** Action-loop mode: how long a process beyond the first may stay idle; 0 keeps every process. */
  loopIdleMs: number;
  /** How long with no activation before a full garbage collection gives memory back; 0: never. */
  idleGcMs: number;
  /** OW_COMPILER: compiles an init's files when `exec` is not a program already. */
  compiler: string | undefined;
  /** OW_EXECUTION_ENV: what the action's `exec.env` must hold. */
  executionEnv: string | undefined;
  /** PROXY_SERVER_TIMING: 1 or 0; unset, the platform's default (on for OpenWhisk, off for Knative). */
  serverTiming: boolean | undefined;
  zipLimits: Partial<ArchiveLimits>;
}

const MiB = 1024 * 1024;

/** Connections the kernel may hold for the proxy to accept. */
const LISTEN_BACKLOG = 4096;

/**
 * Reads the configuration from the environment (the README's configuration table). Throws on values
 * that can't be right; warns on stderr, as the original proxy did, about an unknown platform.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  const platform = (env.__OW_RUNTIME_PLATFORM ?? 'openwhisk').toLowerCase();
  if (!PLATFORMS.includes(platform as PlatformName)) {
    process.stderr.write(`Invalid __OW_RUNTIME_PLATFORM ${platform}! Valid Platforms are openwhisk and knative. Defaulting to openwhisk.\n`);
  }
  return {
    // Knative sets PORT and it wins: the image's FLASK_PROXY_PORT is a default baked in at build time.
    port: integer(env, env.PORT ? 'PORT' : 'FLASK_PROXY_PORT', 8080, 0, 65535),
    host: env.PROXY_HOST || undefined,
    actionDir: env.PROXY_ACTION_DIR || '/action',
    allowReinit: env.PROXY_ALLOW_REINIT === '1',
    platform: PLATFORMS.find((name) => name === platform) ?? 'openwhisk',
    // OpenWhisk's largest action is 48 MB of code, which base64 makes 64 MB; room for the JSON around it.
    maxBodyBytes: integer(env, 'PROXY_MAX_BODY_BYTES', 128 * MiB, 1, Number.MAX_SAFE_INTEGER),
    // A public Knative endpoint must not let one burst of requests start thousands of processes.
    maxActivations: integer(env, 'PROXY_MAX_ACTIVATIONS', platform === 'knative' ? 64 : 0, 0, 1_000_000),
    maxWaiting: integer(env, 'PROXY_MAX_WAITING', DEFAULT_MAX_WAITING, 0, 1_000_000),
    maxResultBytes: integer(env, 'PROXY_MAX_RESULT_BYTES', DEFAULT_MAX_RESULT_BYTES, 1, Number.MAX_SAFE_INTEGER),
    shutdownGraceMs: 1000 * integer(env, 'PROXY_SHUTDOWN_GRACE_SECONDS', 30, 0, 86_400),
    actionLoop: integer(env, 'PROXY_ACTION_LOOP', 0, 0, 1) === 1,
    ack: Boolean(env.OW_WAIT_FOR_ACK),
    ackTimeoutMs: 1000 * integer(env, 'PROXY_ACK_TIMEOUT_SECONDS', 30, 0, 86_400),
    loopIdleMs: 1000 * integer(env, 'PROXY_LOOP_IDLE_SECONDS', 10, 0, 86_400),
    idleGcMs: 1000 * integer(env, 'PROXY_IDLE_GC_SECONDS', DEFAULT_IDLE_GC_MS / 1000, 0, 86_400),
    compiler: env.OW_COMPILER || undefined,
    executionEnv: env.OW_EXECUTION_ENV || undefined,
    serverTiming: env.PROXY_SERVER_TIMING ? integer(env, 'PROXY_SERVER_TIMING', 0, 0, 1) === 1 : undefined,
    zipLimits: {
      maxBytes: integer(env, 'PROXY_ZIP_MAX_BYTES', undefined, 0, Number.MAX_SAFE_INTEGER),
      maxEntries: integer(env, 'PROXY_ZIP_MAX_ENTRIES', undefined, 0, Number.MAX_SAFE_INTEGER),
    },
  };
}

function integer<T extends number | undefined>(env: NodeJS.ProcessEnv, name: string, fallback: T, min: number, max: number): number | T {
  const text = env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name}=${text} is not a whole number from ${min} to ${max}`);
  }
  return value;
}

// Requests Node's HTTP parser refuses before the platform sees them; the rest are a 400.
const CLIENT_ERRORS: Record<string, { status: number; error: string }> = {
  HPE_HEADER_OVERFLOW: { status: 431, error: 'The request headers are larger than the proxy accepts (node --max-http-header-size, 16 KiB by default).' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, error: 'The request did not arrive in time.' },
};

/**
 * The answers each connection still owes. A request Node can't parse is answered only after them: a
 * pipelined request that was complete keeps its answer, and the error comes after it, in order.
 */
const owed = new WeakMap<Socket, Debt>();
interface Debt {
  count: number;
  settled: Array<() => void>;
}

/** Notes that `socket` owes one more answer; paid() when its response closes. */
function owe(socket: Socket): Debt {
  let debt = owed.get(socket);
  if (!debt) owed.set(socket, (debt = { count: 0, settled: [] }));
  debt.count++;
  return debt;
}

function paid(debt: Debt): void {
  if (--debt.count === 0) for (const wake of debt.settled.splice(0)) wake();
}

function afterOwedAnswers(socket: Socket, then: () => void): void {
  const debt = owed.get(socket);
  if (debt && debt.count > 0) debt.settled.push(then);
  else then();
}

/**
 * Answers a request Node could not parse with a JSON error, as every other answer is (Node's own has no
 * body), after the answers owed to earlier requests on the connection, and closes the connection.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable || error.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const known = CLIENT_ERRORS[error.code ?? ''];
  const status = known?.status ?? 400;
  const body = JSON.stringify({ error: known?.error ?? `The request is not valid HTTP (${error.code ?? error.message}).` });
  afterOwedAnswers(socket, () => {
    if (!socket.writable) return;
    // A client that stops reading can't hold the connection open.
    socket.setTimeout(5_000, () => socket.destroy());
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`, () => socket.destroy());
  });
}

/** What a platform provides: how requests map to init and run, and anything to do before listening. */
export interface Platform {
  prepare?(): Promise<void>;
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
}

async function loadPlatform(name: PlatformName): Promise<Platform> {
  // Each platform is loaded only when chosen: OpenWhisk's containers never parse the Knative code.
  return name === 'knative' ? await import('./platforms/knative.ts') : await import('./platforms/openwhisk.ts');
}

export interface StartOptions {
  /** Configuration; what is not given comes from the environment. */
  config?: Partial<ProxyConfig>;
  /** A runner of your own (a subclass with a build step, say). Default: an ActionRunner for the action directory. */
  runner?: ActionRunner;
}

/** Starts the proxy: the platform's preparation, then the server. Resolves once it listens. */
export async function start(options: StartOptions = {}): Promise<Server> {
  const config = { ...configFromEnv(), ...options.config };
  const runner =
    options.runner ??
    new ActionRunner({
      actionDir: config.actionDir,
      zipLimits: config.zipLimits,
      maxActivations: config.maxActivations,
      maxWaiting: config.maxWaiting,
      maxResultBytes: config.maxResultBytes,
      actionLoop: config.actionLoop ? { ack: config.ack, ackTimeoutMs: config.ackTimeoutMs, idleMs: config.loopIdleMs } : undefined,
      compiler: config.compiler,
      executionEnv: config.executionEnv,
      idleGcMs: config.idleGcMs,
    });
  // Server-Timing: on for the invoker's routes unless turned off; Knative answers are public, so only on request.
  const serverTiming = config.platform === 'knative' ? config.serverTiming === true : config.serverTiming !== false;
  if (!options.runner) checkActionDir(config.actionDir, config.platform === 'knative' && Boolean(process.env.__OW_ACTION_CODE));
  use(runner, { allowReinit: config.allowReinit, maxBodyBytes: config.maxBodyBytes, serverTiming });
  const platform = await loadPlatform(config.platform);
  await platform.prepare?.();

  // The requests being handled, for shutdown: it waits for them, not for connections.
  const handling = new Map<IncomingMessage, ServerResponse>();
  const sockets = new Set<Socket>();
  let onIdle: (() => void) | undefined;
  // 16 KiB, as on Node 20 (22 raised it to 64): what a request waiting for a slot may have buffered unread.
  const server = createServer({ highWaterMark: 16 * 1024 }, (req, res) => {
    const debt = owe(req.socket);
    handling.set(req, res);
    // One listener, and `on`: a response closes once, and `once` would wrap it in two more objects.
    res.on('close', () => {
      paid(debt);
      handling.delete(req);
      if (handling.size === 0) onIdle?.();
    });
    platform.handle(req, res).catch((error: unknown) => {
      const result = failure(error);
      if (!res.headersSent) sendError(res, result.status, result.error);
      else res.destroy();
    });
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  // A client that is slow or silent may not hold a connection forever; a long /run response may.
  server.headersTimeout = 60_000;
  server.requestTimeout = 300_000;
  server.keepAliveTimeout = 5_000;
  server.on('clientError', answerClientError);
  // Node answers an Expect it doesn't know with a bare 417; every answer of the proxy is JSON.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    sendError(res, 417, `The proxy does not support "Expect: ${req.headers.expect}"; only 100-continue.`);
  });

  // SIGTERM: running activations get the grace, with or without their clients; everything else (idle
  // connections, requests not yet whole, requests waiting for a slot) ends at once. The proxy exits as
  // soon as nothing runs and every process it started has ended: 0, or 1 when it had to kill.
  let shuttingDown = false;
  const stop = (): void => {
    if (shuttingDown) return;
    shuttingDown = true;
    const deadline = Date.now() + config.shutdownGraceMs;
    let exitCode = 0;
    closeConnections();
    server.close();
    runner.refuseWaiting(new ProxyError(503, MESSAGES.shuttingDown));
    let finishing = false;
    const finish = (): void => {
      if (finishing) return;
      finishing = true;
      onIdle = undefined;
      void runner.stop(Math.max(0, deadline - Date.now())).then((killed) => process.exit(killed ? 1 : exitCode));
    };
    // After the refusals above are written: a request still being received is not an activation yet.
    setImmediate(() => {
      const keep = new Set<Socket>();
      for (const [req, res] of handling) if (req.complete || res.headersSent) keep.add(req.socket);
      for (const socket of sockets) if (!keep.has(socket)) socket.destroy();
      if (handling.size === 0) finish();
      else onIdle = finish;
    });
    // Activations that outlive the grace period are killed, so none outlives the proxy; their clients
    // get the signal's 502 if they are still there, and the exit code says work was cut off.
    setTimeout(() => {
      const killed = runner.kill();
      for (const name of killed) process.stderr.write(`The shutdown grace of ${config.shutdownGraceMs / 1000} s ran out: killed the ${name}.\n`);
      if (killed.length > 0) exitCode = 1;
      // A client that never reads its answer can't hold the exit.
      setTimeout(() => {
        for (const socket of sockets) socket.destroy();
        finish();
      }, 1_000).unref();
    }, config.shutdownGraceMs).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const listened = (): void => {
      listening();
      server.off('error', reject);
      resolve();
    };
    // No host: Node binds the dual-stack `::` (IPv4 on every address, as 0.0.0.0, plus IPv6), or
    // 0.0.0.0 where there is no IPv6. Naming 0.0.0.0 costs a DNS module load at start-up (~0.8 ms).
    // The backlog: Node's 511 lets a burst of connections overflow the kernel's accept queue while the
    // proxy is busy, and the kernel then resets some of them before the proxy ever sees them (seen: 43 of
    // 2,000 abandoned requests on a loaded machine). The kernel caps it at net.core.somaxconn.
    server.listen({ port: config.port, host: config.host, backlog: LISTEN_BACKLOG }, listened);
  });
  // process.stdout.isTTY, not tty.isatty(1): the stream is the one every activation's logs go to, made
  // here instead of at the first /run, and it loads node:tty (0.5 ms of a cold start) only for a terminal.
  if (process.stdout.isTTY) {
    process.stdout.write(`Action proxy (${config.platform}) listening on ${config.host ?? 'every interface'}, port ${config.port}, action directory ${config.actionDir}\n`);
  }
  return server;
}

/**
 * The action directory must exist (it is made when it doesn't) and take an init's files: else the proxy
 * says so at start-up, naming PROXY_ACTION_DIR, instead of failing every init later. One it can't write is
 * accepted when it already holds an executable exec (an action baked into a read-only image) and no code
 * is to be installed from the environment, with a warning that inits will fail.
 */
function checkActionDir(dir: string, codeFromEnv: boolean): void {
  const who = `this user (uid ${process.getuid?.() ?? '?'})`;
  try {
    mkdirSync(dir, { recursive: true });
  } catch (error) {
    throw new Error(`The action directory ${dir} (PROXY_ACTION_DIR) does not exist and ${who} can't make it (${(error as NodeJS.ErrnoException).code}). Set PROXY_ACTION_DIR to a folder ${who} can write.`);
  }
  try {
    accessSync(dir, constants.W_OK);
  } catch (error) {
    const reason = `The action directory ${dir} (PROXY_ACTION_DIR) is not writable by ${who} (${(error as NodeJS.ErrnoException).code})`;
    if (codeFromEnv || !verify(join(dir, 'exec'))) throw new Error(`${reason}: no action can be installed there. Set PROXY_ACTION_DIR to a folder ${who} can write.`);
    process.stderr.write(`${reason}: its exec runs, and every /init will fail.\n`);
  }
}

/** Whether this file is the program (`node dist/proxy.cjs` or `node dist/proxy.js`), not a library import. */
function isMain(): boolean {
  // The CommonJS bundle the image runs: CommonJS knows its main module.
  if (typeof module !== 'undefined' && typeof require !== 'undefined') return require.main === module;
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isMain()) {
  const args = process.argv.slice(2);
  if (args.length === 1 && (args[0] === '--version' || args[0] === '-version')) {
    process.stdout.write(`${versionLine()}\n`);
  } else if (args.some((arg) => /^--?compile(=|$)/.test(arg))) {
    // Loaded only for the command: the server never parses it.
    void import('./compile.ts').then(async ({ compileCommand }) => process.exit(await compileCommand(args)));
  } else if (args.length > 0) {
    process.stderr.write(`Unknown arguments: ${args.join(' ')}. The proxy takes its settings from the environment; its only arguments are --version and -compile <main> [-env '<json object>'].\n`);
    process.exit(2);
  } else {
    start().catch((error: unknown) => {
      process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    });
  }
}
