// The action proxy: a raw node:http server in front of one action runner.
//
// The platform (platforms/openwhisk.ts or platforms/knative.ts) maps HTTP requests to the two operations
// defined here, `init` and `run`, which own the rules every platform shares: one initialization unless
// re-init is allowed, the log sentinels, and the translation of errors into a status and a fixed text.

import { STATUS_CODES, createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { isAscii } from 'node:buffer';
import { realpathSync } from 'node:fs';
import type { Socket } from 'node:net';
import { isatty } from 'node:tty';
import { fileURLToPath } from 'node:url';
import { ActionRunner, MESSAGES, ProxyError, isObject, type InitValue } from './runner.ts';
import type { ZipLimits } from './zip.ts';

// What a runtime built on the proxy needs, from one module (the bundle the image ships is one file).
export { ActionRunner, ProxyError, type InitValue, type RunnerOptions } from './runner.ts';

/** Ends each activation's logs on stdout and on stderr, so the invoker knows where they end. */
export const LOG_SENTINEL = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n';

const PLATFORMS = ['openwhisk', 'knative'] as const;
export type PlatformName = (typeof PLATFORMS)[number];

export interface ProxyConfig {
  port: number;
  /** Where the action lives; `exec` inside it is what runs. */
  actionDir: string;
  /** Whether more than one successful init is allowed (local development). */
  allowReinit: boolean;
  platform: PlatformName;
  /** The largest request body read; more is answered 413. */
  maxBodyBytes: number;
  /** Most activations running at once; 0 for no limit. */
  maxActivations: number;
  /** How long running activations may go on after SIGTERM. */
  shutdownGraceMs: number;
  zipLimits: Partial<ZipLimits>;
}

const MiB = 1024 * 1024;

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
    actionDir: env.PROXY_ACTION_DIR || '/action',
    allowReinit: env.PROXY_ALLOW_REINIT === '1',
    platform: PLATFORMS.find((name) => name === platform) ?? 'openwhisk',
    // OpenWhisk's largest action is 48 MB of code, which base64 makes 64 MB; room for the JSON around it.
    maxBodyBytes: integer(env, 'PROXY_MAX_BODY_BYTES', 128 * MiB, 1, Number.MAX_SAFE_INTEGER),
    maxActivations: integer(env, 'PROXY_MAX_ACTIVATIONS', 0, 0, 1_000_000),
    shutdownGraceMs: 1000 * integer(env, 'PROXY_SHUTDOWN_GRACE_SECONDS', 30, 0, 86_400),
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

// The one runner and configuration every request shares; set by start().
let runner: ActionRunner;
let config: ProxyConfig;
// Inits run one at a time, so the re-init rule holds when two arrive together.
let initializing: Promise<unknown> = Promise.resolve();
let shuttingDown = false;

export interface Failure {
  ok: false;
  status: number;
  error: string;
}
export type InitOutcome = { ok: true } | Failure;
export type RunOutcome = ({ ok: true } & Awaited<ReturnType<ActionRunner['run']>>) | Failure;

/** The arguments and activation fields of one activation. */
export interface RunMessage {
  args: unknown;
  fields: Record<string, unknown>;
}

function writeSentinels(): void {
  process.stdout.write(LOG_SENTINEL);
  process.stderr.write(LOG_SENTINEL);
}

/** Turns an error into what the client sees; the cause, which the client doesn't see, goes to stderr. */
function failure(error: unknown): Failure {
  if (error instanceof ProxyError) {
    if (error.cause instanceof Error) process.stderr.write(`${error.cause.message}\n`);
    return { ok: false, status: error.status, error: error.message };
  }
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`${error instanceof Error && error.stack ? error.stack : message}\n`);
  return { ok: false, status: 500, error: `Internal error. ${message}` };
}

/**
 * Initializes the action with the init value that `read` produces (reading the request only when the
 * re-init rule lets it through). A rejected re-init logs its message and no sentinel; any other failure
 * logs its cause and the sentinels.
 */
export function init(read: () => Promise<InitValue>): Promise<InitOutcome> {
  const outcome = initializing.then(async (): Promise<InitOutcome> => {
    if (runner.initialized && !config.allowReinit) {
      process.stderr.write(`${MESSAGES.reinit}\n`);
      return { ok: false, status: 403, error: MESSAGES.reinit };
    }
    try {
      await runner.init(await read());
      return { ok: true };
    } catch (error) {
      const result = failure(error);
      writeSentinels();
      return result;
    }
  });
  initializing = outcome;
  return outcome;
}

/** Runs one activation of what `read` produces. Always ends with the sentinels, before the answer. */
export async function run(read: () => Promise<RunMessage>): Promise<RunOutcome> {
  try {
    const message = await read();
    return { ok: true, ...(await runner.run(message.args, message.fields)) };
  } catch (error) {
    return failure(error);
  } finally {
    writeSentinels();
  }
}

/**
 * The activation fields of a run message: `activation` when present (the newer protocol), else every
 * top-level field but `value`.
 */
export function activationFields(message: Record<string, unknown>): Record<string, unknown> {
  if ('activation' in message) {
    const activation = message.activation ?? {};
    if (!isObject(activation)) throw new ProxyError(400, 'The activation fields must be a JSON object.');
    return activation;
  }
  const { value: _args, ...fields } = message;
  return fields;
}

/** Reads a request body, at most `maxBodyBytes` of it; more is a 413. */
export function readBody(req: IncomingMessage): Promise<Buffer> {
  const limit = config.maxBodyBytes;
  const tooLarge = (): ProxyError => new ProxyError(413, `The request body is larger than the limit of ${limit} bytes (PROXY_MAX_BODY_BYTES).`);
  if (Number(req.headers['content-length']) > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length)));
    req.on('error', reject);
  });
}

/** Parses a JSON request body; an empty body is `undefined`, invalid JSON a 400. */
export function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  try {
    // An ASCII body (base64 code is) decodes faster as latin1, to the same string.
    return JSON.parse(isAscii(body) ? body.toString('latin1') : body.toString('utf8'));
  } catch (error) {
    throw new ProxyError(400, `The request body is not valid JSON: ${(error as Error).message}`);
  }
}

export function send(res: ServerResponse, status: number, body: string | Buffer, headers: OutgoingHttpHeaders): void {
  if (shuttingDown) res.setHeader('Connection', 'close');
  res.writeHead(status, { ...headers, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, json: string, headers: OutgoingHttpHeaders = {}): void {
  send(res, status, json, { 'Content-Type': 'application/json', ...headers });
}

export function sendError(res: ServerResponse, status: number, error: string, headers: OutgoingHttpHeaders = {}): void {
  sendJson(res, status, JSON.stringify({ error }), headers);
}

// Requests Node's HTTP parser refuses before the platform sees them; the rest are a 400.
const CLIENT_ERRORS: Record<string, { status: number; error: string }> = {
  HPE_HEADER_OVERFLOW: { status: 431, error: 'The request headers are larger than the proxy accepts (node --max-http-header-size, 16 KiB by default).' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, error: 'The request did not arrive in time.' },
};

/**
 * Answers a request Node could not parse with a JSON error, as every other answer is (Node's own has no
 * body), and closes the connection. Every answer of the proxy is written whole by one end(), so this
 * lands after complete responses, never inside one; closing waits until they are flushed.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable || error.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const known = CLIENT_ERRORS[error.code ?? ''];
  const status = known?.status ?? 400;
  const body = JSON.stringify({ error: known?.error ?? `The request is not valid HTTP (${error.code ?? error.message}).` });
  // A client that stops reading can't hold the connection open.
  socket.setTimeout(5_000, () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`, () => socket.destroy());
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
  config = { ...configFromEnv(), ...options.config };
  runner =
    options.runner ??
    new ActionRunner({ actionDir: config.actionDir, zipLimits: config.zipLimits, maxActivations: config.maxActivations });
  const platform = await loadPlatform(config.platform);
  await platform.prepare?.();

  const server = createServer((req, res) => {
    platform.handle(req, res).catch((error: unknown) => {
      const result = failure(error);
      if (!res.headersSent) sendError(res, result.status, result.error);
      else res.destroy();
    });
  });
  // A client that is slow or silent may not hold a connection forever; a long /run response may.
  server.headersTimeout = 60_000;
  server.requestTimeout = 300_000;
  server.keepAliveTimeout = 5_000;
  server.on('clientError', answerClientError);

  const stop = (): void => {
    if (shuttingDown) return;
    shuttingDown = true;
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    // Activations that outlive the grace period are the platform's to kill; the proxy exits anyway.
    setTimeout(() => process.exit(0), config.shutdownGraceMs).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // No host: Node binds the dual-stack `::` (IPv4 on every address, as 0.0.0.0, plus IPv6), or
    // 0.0.0.0 where there is no IPv6. Naming 0.0.0.0 costs a DNS module load at start-up (~0.8 ms).
    server.listen(config.port, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // isatty, not process.stdout.isTTY: creating the stdout stream costs start-up time.
  if (isatty(1)) {
    process.stdout.write(`Action proxy (${config.platform}) listening on port ${config.port}, action directory ${config.actionDir}\n`);
  }
  return server;
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
  start().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
