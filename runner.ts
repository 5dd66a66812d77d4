// The action runner: puts an action in place at init, and runs it once per activation.
//
// It is the one stateful piece of the proxy (what is initialized, with which environment) and it knows
// nothing of HTTP. Runtime images that need more (a compile step at init, extra environment) extend
// this class or pass options to it; see "Extending the runner" in the README.

import { spawn } from 'node:child_process';
import { constants, accessSync, chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmdirSync, statSync, unlinkSync, writeFileSync, type Stats } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { ZipLimits } from './zip.ts';

/** The fixed texts clients see; the specific cause goes to the logs. */
export const MESSAGES = {
  reinit: 'Cannot initialize the action more than once.',
  initFailed: 'The action failed to generate or locate a binary. See logs for details.',
  noBinary: 'The action failed to locate a binary. See logs for details.',
  badArguments: 'The action did not receive a dictionary or array as an argument.',
  badResult: 'The action did not return a dictionary or array.',
} as const;

/** An error that knows its HTTP status. Only the HTTP layer turns it into a response. */
export class ProxyError extends Error {
  readonly status: number;
  constructor(status: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ProxyError';
    this.status = status;
  }
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The JSON text of a value parsed from JSON. JSON.parse takes millions of nesting levels, JSON.stringify
 * recurses and runs out of stack at about 4,000; that is the sender's input, answered with `status`.
 */
export function jsonText(value: unknown, status: number, what: string): string {
  try {
    return JSON.stringify(value);
  } catch (error) {
    throw new ProxyError(status, `${what} nested too deeply to pass on (${(error as Error).message}).`);
  }
}

// linux/binfmts.h MAX_ARG_STRLEN is 32 pages (131072 bytes) including the terminating NUL.
const MAX_ARG_STRLEN = 131071;
const NEWLINE = 0x0a;

export interface RunnerOptions {
  /** Where the action lives; its `exec` is what runs. */
  actionDir: string;
  /** What every activation's environment starts from. Default: the proxy's own, read once. */
  env?: Record<string, string | undefined>;
  /** Overrides of the ZIP extraction limits for binary inits. */
  zipLimits?: Partial<ZipLimits>;
  /** Most activations running at once; the rest wait in arrival order. 0 or absent: no limit. */
  maxActivations?: number;
  /** Where the action's output goes. Default: the proxy's stdout and stderr. */
  logs?: { stdout: Writable; stderr: Writable };
}

/** The `value` of an init request. `main` is accepted and ignored: the entry point is always `exec`. */
export interface InitValue {
  code?: unknown;
  binary?: unknown;
  main?: unknown;
  env?: unknown;
  [field: string]: unknown;
}

export interface ActivationResult {
  /** The parsed result: a JSON object or array. */
  result: object;
  /** Its JSON text, exactly as the action printed it (trimmed). */
  json: string;
}

export class ActionRunner {
  readonly actionDir: string;
  readonly binary: string;
  initialized = false;
  private readonly customLogs: { stdout: Writable; stderr: Writable } | undefined;
  protected readonly zipLimits: Partial<ZipLimits>;
  /** The proxy's environment, then the init `env`: what each activation starts from. */
  protected baseEnv: Record<string, string>;
  private readonly initialEnv: Record<string, string>;
  private readonly maxActivations: number;
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(options: RunnerOptions) {
    // Absolute, because the action runs with the action directory as its working directory.
    this.actionDir = resolve(options.actionDir);
    this.binary = join(this.actionDir, 'exec');
    this.customLogs = options.logs;
    // A limit given as undefined means the default, not "no limit".
    this.zipLimits = Object.fromEntries(Object.entries(options.zipLimits ?? {}).filter(([, limit]) => limit !== undefined));
    this.maxActivations = options.maxActivations ?? 0;
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(options.env ?? process.env)) if (value !== undefined) env[key] = value;
    this.initialEnv = env;
    this.baseEnv = env;
  }

  /** Where the action's output goes. The proxy's own streams are looked up only when first written:
   * creating them costs start-up time. */
  protected get logs(): { stdout: Writable; stderr: Writable } {
    return this.customLogs ?? { stdout: process.stdout, stderr: process.stderr };
  }

  /**
   * Puts the action in place: writes the script or extracts the archive into a fresh folder inside the
   * action directory, moves it over the live files, builds, verifies. Any failure puts the previous
   * files back and throws a 502 ProxyError whose cause says what went wrong.
   */
  async init(value: InitValue): Promise<void> {
    try {
      if (value.env !== undefined && value.env !== null && !isObject(value.env)) throw new Error('init env must be an object');
      const env = isObject(value.env) ? environment(value.env, '', 'init env') : {};
      // null is "not given", as for code and env (the original read any false-like value as false).
      if (value.binary !== undefined && value.binary !== null && typeof value.binary !== 'boolean') throw new Error(`init 'binary' must be a boolean, not ${typeof value.binary}`);
      if (value.code !== undefined && value.code !== null) {
        if (typeof value.code !== 'string') throw new Error(`init 'code' must be a string, not ${typeof value.code}`);
        await this.install(value.code, value.binary === true, value);
      } else {
        this.verifyOrThrow();
      }
      this.baseEnv = { ...this.initialEnv, ...env };
      this.initialized = true;
    } catch (error) {
      throw new ProxyError(502, MESSAGES.initFailed, { cause: error });
    }
  }

  /**
   * A hook for runtimes with a build step (compile a source file into `exec`, say). It runs after the new
   * files are in the action directory and before `exec` is verified; throwing fails the init and
   * restores the previous action.
   */
  protected async build(_value: InitValue): Promise<void> {}

  /** The `exec` file's stats when it is a regular file (a link to one is fine) and executable. */
  verify(): Stats | undefined {
    try {
      const stats = statSync(this.binary);
      if (!stats.isFile()) return undefined;
      accessSync(this.binary, constants.X_OK);
      return stats;
    } catch {
      return undefined;
    }
  }

  private verifyOrThrow(): void {
    if (!this.verify()) throw new Error(`${this.binary} is not an executable file`);
  }

  private async install(code: string, binary: boolean, value: InitValue): Promise<void> {
    // Synchronous file operations: an init's are few and small (an archive's writes are zip.ts's), and
    // the first use of fs.promises costs a cold proxy milliseconds of module loading.
    mkdirSync(this.actionDir, { recursive: true });
    const staging = mkdtempSync(join(this.actionDir, '.proxy-init-'));
    try {
      if (binary) {
        const { extract, DEFAULT_ZIP_LIMITS } = await import('./zip.ts');
        await extract(Buffer.from(code, 'base64'), staging, { ...DEFAULT_ZIP_LIMITS, ...this.zipLimits }).catch((error: unknown) => {
          // Buffer.from skips what isn't base64, so text that never was an archive fails as a bad archive.
          if (!BASE64.test(code)) throw new Error('init code is not valid base64 (binary: true needs a base64 ZIP archive)', { cause: error });
          throw error;
        });
      } else {
        writeFileSync(join(staging, 'exec'), code, { mode: 0o755 });
      }
      makeExecutable(join(staging, 'exec'));
    } catch (error) {
      remove(staging);
      throw error;
    }
    const swap = this.swapIn(staging);
    try {
      await this.build(value);
      // Without a build step an archive must bring its own `exec` (else the stub would quietly stay);
      // a runtime with one may build `exec` from the archive's sources.
      const hasBuildStep = this.build !== ActionRunner.prototype.build;
      if (binary && !hasBuildStep && !swap.placed.includes('exec')) throw new Error("the archive has no 'exec' at its root");
      this.verifyOrThrow();
    } catch (error) {
      this.swapBack(swap);
      throw error;
    }
    remove(swap.backup);
  }

  /**
   * Moves each top-level entry of `staging` into the action directory, the old one of that name aside.
   * Synchronous, so no activation can start in the middle of the swap.
   */
  private swapIn(staging: string): Swap {
    const swap: Swap = { backup: mkdtempSync(join(this.actionDir, '.proxy-previous-')), placed: [], replaced: [] };
    try {
      for (const name of readdirSync(staging)) {
        const live = join(this.actionDir, name);
        if (lstatSync(live, { throwIfNoEntry: false })) {
          renameSync(live, join(swap.backup, name));
          swap.replaced.push(name);
        }
        renameSync(join(staging, name), live);
        swap.placed.push(name);
      }
    } catch (error) {
      this.swapBack(swap);
      throw error;
    } finally {
      remove(staging);
    }
    return swap;
  }

  private swapBack(swap: Swap): void {
    for (const name of swap.placed) remove(join(this.actionDir, name));
    for (const name of swap.replaced) renameSync(join(swap.backup, name), join(this.actionDir, name));
    remove(swap.backup);
  }

  /**
   * One activation's environment, built fresh: the base environment, then one `__OW_<KEY>` per activation
   * field. Nothing of one activation is visible to the next.
   */
  activationEnv(fields: Record<string, unknown>): Record<string, string> {
    try {
      return { ...this.baseEnv, ...environment(fields, '__OW_', 'activation field') };
    } catch (error) {
      throw new ProxyError(400, (error as Error).message);
    }
  }

  /** Runs `exec` once with `args`; resolves with its result or rejects with a ProxyError. */
  async run(args: unknown, fields: Record<string, unknown>): Promise<ActivationResult> {
    const stats = this.verify();
    if (!stats) throw new ProxyError(502, MESSAGES.noBinary, { cause: new Error(`${this.binary} is not an executable file`) });
    const env = this.activationEnv(fields);
    const input = jsonText(args, 400, 'The arguments are');
    await this.acquire();
    try {
      return await this.execute(input, env, stats);
    } finally {
      this.release();
    }
  }

  private acquire(): Promise<void> {
    if (this.maxActivations <= 0 || this.running < this.maxActivations) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next(); // the slot passes straight to the next in line
    else this.running--;
  }

  private execute(input: string, env: Record<string, string>, stats: Stats): Promise<ActivationResult> {
    const { stdout, stderr } = this.logs;
    const startFailed = (cause: string): ProxyError => {
      stdout.write(`${cause}\n`);
      return new ProxyError(502, MESSAGES.badResult);
    };
    // glibc's execvp would run an empty file through /bin/sh and "succeed"; the kernel says ENOEXEC.
    if (stats.size === 0) return Promise.reject(startFailed(`spawn ${this.binary} ENOEXEC: exec format error (the file is empty)`));
    return new Promise((resolve, reject) => {
      const argv = Buffer.byteLength(input) <= MAX_ARG_STRLEN ? [input] : [];
      const child = spawn(this.binary, argv, { cwd: this.actionDir, env, stdio: 'pipe' });
      let spawnError: Error | undefined;
      child.on('error', (error) => {
        spawnError ??= error;
      });
      child.stdin.on('error', () => {}); // EPIPE: an action need not read its input
      child.stdin.end(input);
      const lastLine = forwardLines(child.stdout, stdout, true);
      const stderrRest = forwardLines(child.stderr, stderr, false);
      child.on('close', () => {
        const rest = stderrRest();
        if (rest.length > 0) stderr.write(rest);
        if (spawnError && child.pid === undefined) return reject(startFailed(spawnError.message));
        const candidate = trim(lastLine());
        const json = candidate.toString('utf8');
        try {
          const result: unknown = JSON.parse(json);
          if (typeof result === 'object' && result !== null) return resolve({ result, json });
        } catch {
          // not JSON: answered below like any other result that is not an object or array
        }
        stdout.write(Buffer.concat([candidate, Buffer.from('\n')]));
        reject(new ProxyError(502, MESSAGES.badResult));
      });
    });
  }
}

interface Swap {
  /** The folder holding the entries that were replaced. */
  backup: string;
  /** Names moved from staging into the action directory. */
  placed: string[];
  /** Names moved from the action directory into `backup`. */
  replaced: string[];
}

/**
 * Removes a file or a folder tree. Files and empty folders directly: rmSync's recursive walk loads
 * modules on first use, a cost a cold proxy's first init would otherwise pay for one file.
 */
function remove(path: string): void {
  const stats = lstatSync(path, { throwIfNoEntry: false });
  if (!stats) return;
  if (!stats.isDirectory()) return unlinkSync(path);
  for (const name of readdirSync(path)) remove(join(path, name));
  rmdirSync(path);
}

/** An `exec` that is there always ends up executable: 0755 when it lacks the owner's execute bit. */
function makeExecutable(path: string): void {
  const stats = lstatSync(path, { throwIfNoEntry: false });
  if (stats?.isFile() && (stats.mode & 0o100) === 0) chmodSync(path, 0o755);
}

// Base64 as encoders write it, wrapped lines (`base64` wraps at 76) included.
const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;

/**
 * Environment variables from a JSON map: strings as they are, `null` as "", anything else as its JSON
 * text. Errors name an entry as `what`.
 */
function environment(fields: Record<string, unknown>, prefix: string, what: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(fields)) {
    const text = typeof value === 'string' ? value : value === null ? '' : jsonText(value, 400, `${what} '${key}' is`);
    if (key === '' || key.includes('=') || key.includes('\0')) throw new Error(`${what} '${key.replaceAll('\0', '\\0')}' can't be an environment variable name`);
    if (text.includes('\0')) throw new Error(`${what} '${key}' has a NUL character, which an environment variable can't hold`);
    env[prefix + (prefix ? key.toUpperCase() : key)] = text;
  }
  return env;
}

/**
 * Forwards complete lines from an action's pipe to a log as they arrive, never splitting a line, and
 * returns a function giving what was held back: with `holdLast`, the last line (the result candidate,
 * which is only known once the pipe ends), else just an unfinished line. Memory is bounded by the
 * longest line. A full log pauses the pipe.
 */
function forwardLines(from: Readable, to: Writable, holdLast: boolean): () => Buffer {
  let held: Buffer[] = [];
  let heldEndsLine = false;
  // Parts are written one by one, never concatenated: a long line costs no copy.
  const emit = (parts: Buffer[]): void => {
    let full = false;
    for (const part of parts) full = !to.write(part) || full;
    if (full) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  };
  from.on('data', (chunk: Buffer) => {
    // With holdLast, a newline that ends the chunk may end the output: it does not release the line.
    const searchEnd = holdLast ? chunk.length - 2 : chunk.length - 1;
    const cut = searchEnd < 0 ? -1 : chunk.lastIndexOf(NEWLINE, searchEnd);
    if (cut !== -1) {
      emit([...held, chunk.subarray(0, cut + 1)]);
      held = cut + 1 < chunk.length ? [chunk.subarray(cut + 1)] : [];
    } else if (heldEndsLine) {
      emit(held);
      held = [chunk];
    } else {
      held.push(chunk);
    }
    heldEndsLine = holdLast && chunk[chunk.length - 1] === NEWLINE;
  });
  return () => Buffer.concat(held);
}

function isSpace(byte: number | undefined): boolean {
  return byte === 0x20 || (byte !== undefined && byte >= 0x09 && byte <= 0x0d);
}

function trim(bytes: Buffer): Buffer {
  let start = 0;
  let end = bytes.length;
  while (start < end && isSpace(bytes[start])) start++;
  while (end > start && isSpace(bytes[end - 1])) end--;
  return bytes.subarray(start, end);
}
