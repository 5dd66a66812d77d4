// The action runner: the one stateful piece of the proxy. It knows what is installed and with which
// environment, installs a new action at init (install.ts), and hands each activation to its executor
// (a process per activation, or a pool of long-lived processes), at most `maxActivations` at once.
// It knows nothing of HTTP. Runtime images that need more (a build step at init, extra environment)
// extend this class or pass options to it; see "Extending the runner" in the README.

import { join, resolve } from 'node:path';
import { CLIENT_CLOSED, MESSAGES, ProxyError } from './errors.ts';
import type { ActionResult, Activation, CancelSignal, Executor, ExecutorOptions, Logs } from './executors/executor.ts';
import { LoopExecutor, StartFailed } from './executors/loop.ts';
import { ProcessExecutor } from './executors/process.ts';
import { install, killCompilers, verify, verifyOrThrow } from './install.ts';
import { compact, kindOf, membersOf, stringValue, type Member } from './json.ts';
import type { Parts } from './timing.ts';
import type { ArchiveLimits } from './archive.ts';
import { VERSION, debug } from './diagnostics.ts';
import { collectGarbage } from './memory.ts';

export interface RunnerOptions {
  /** Where the action lives; its `exec` is what runs. */
  actionDir: string;
  /** What every activation's environment starts from. Default: the proxy's own, read once. */
  env?: Record<string, string | undefined>;
  /** Overrides of the ZIP extraction limits for binary inits. */
  zipLimits?: Partial<ArchiveLimits>;
  /** Most activations running at once; the rest wait in arrival order. 0 or absent: no limit. */
  maxActivations?: number;
  /** Most activations waiting for a slot; one more is a 503. Default 1,000. */
  maxWaiting?: number;
  /** The longest result line held; a longer one is a 502. Default 64 MiB. */
  maxResultBytes?: number;
  /** Where the action's output goes. Default: the proxy's stdout and stderr. */
  logs?: Logs;
  /**
   * Action-loop mode (PROXY_ACTION_LOOP=1): long-lived processes that take one activation per line,
   * acked on fd 3 first when `ack` (OW_WAIT_FOR_ACK). Absent: a process per activation.
   */
  actionLoop?: { ack: boolean; ackTimeoutMs: number; idleMs?: number };
  /** OW_COMPILER: compiles an init's files when `exec` is not a program already. */
  compiler?: string;
  /** OW_EXECUTION_ENV: what the action's `exec.env` must hold; the action processes and the compiler get it too. */
  executionEnv?: string;
  /**
   * After about this long with no activation, a full garbage collection gives back what the heap grew
   * by under load, when the process grew by IDLE_GC_GROWTH since the last one (PROXY_IDLE_GC_SECONDS).
   * 0 (the default): never.
   */
  idleGcMs?: number;
}

/** The `value` of an init request, read. */
export interface InitValue {
  /**
   * The script, or base64 of a ZIP, a tar(.gz) or a program; absent: keep the action that is there. A
   * request's code is the bytes between its JSON quotes, as they arrived (install.ts's ActionCode).
   */
  code?: string | Buffer[];
  binary: boolean;
  /** Accepted and not used by the proxy: the entry point is always `exec`. A build step may read it. */
  main?: string;
  /** Variables for every later activation. */
  env: Record<string, string>;
  /** Every member as sent, for runtimes that read fields of their own. */
  members: Map<string, Member>;
}

/** One activation as a platform reads it: the arguments' JSON text and the activation fields' texts. */
export interface RunMessage {
  args: string;
  /** The arguments' bytes as they arrived, when the body was ASCII: passed on without another copy. */
  argsBytes?: Buffer;
  fields: Map<string, string>;
}

export const DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_WAITING = 1000;
// Off: after a forced full collection, V8 promotes most of what survives a young-generation collection
// for the next burst, which then grows the heap more than the collection gave back (Node 24, loop mode,
// 8 clients: 28 MiB after each burst without, 36-40 with; without the image's flag 29 against 85-91).
export const DEFAULT_IDLE_GC_MS = 0;
/** Growth of the resident set since the last idle collection that makes the next one worth its pause. */
const IDLE_GC_GROWTH = 8 * 1024 * 1024;

export class ActionRunner {
  readonly actionDir: string;
  readonly binary: string;
  initialized = false;
  private readonly customLogs: Logs | undefined;
  protected readonly zipLimits: Partial<ArchiveLimits>;
  /** The proxy's environment, then the init `env`: what each activation starts from. */
  protected baseEnv: Record<string, string>;
  private readonly initialEnv: Record<string, string>;
  private readonly maxActivations: number;
  private readonly maxWaiting: number;
  private running = 0;
  /** Activations waiting for a slot, in arrival order. */
  private readonly waiting: Waiter[] = [];
  /** Refusing to queue, and why (shutdown). */
  private refusal: ProxyError | undefined;
  /**
   * Set while an init's new files are in place but not committed (its build, its process's ack):
   * starting a process from them now could run code the init goes on to reject.
   */
  private uncommitted: Promise<void> | undefined;
  private readonly executor: Executor;
  private readonly compiler: string | undefined;
  private readonly executionEnv: string | undefined;
  /** Activations started so far, and the check for idleness that compares them (started with the first). */
  private activations = 0;
  private readonly idleGcMs: number;
  private idleCheck: NodeJS.Timeout | undefined;
  private rssAfterCollection: number | undefined;

  constructor(options: RunnerOptions) {
    // Absolute, because the action runs with the action directory as its working directory.
    this.actionDir = resolve(options.actionDir);
    this.binary = join(this.actionDir, 'exec');
    this.customLogs = options.logs;
    // A limit given as undefined means the default, not "no limit".
    this.zipLimits = Object.fromEntries(Object.entries(options.zipLimits ?? {}).filter(([, limit]) => limit !== undefined));
    this.maxActivations = options.maxActivations ?? 0;
    this.maxWaiting = options.maxWaiting ?? DEFAULT_MAX_WAITING;
    this.compiler = options.compiler || undefined;
    this.executionEnv = options.executionEnv || undefined;
    this.idleGcMs = options.idleGcMs ?? DEFAULT_IDLE_GC_MS;
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(options.env ?? process.env)) if (value !== undefined) env[key] = value;
    // What the action-loop runtimes' launchers and compilers read (actionloop.md).
    if (options.actionLoop?.ack) env.__OW_WAIT_FOR_ACK = '1';
    env.__OW_PROXY_VERSION = VERSION;
    if (this.executionEnv) env.__OW_EXECUTION_ENV = this.executionEnv;
    this.initialEnv = env;
    this.baseEnv = env;
    const common: ExecutorOptions = {
      actionDir: this.actionDir,
      binary: this.binary,
      logs: () => this.logs,
      maxResultBytes: options.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES,
      uncommitted: () => this.uncommitted,
    };
    // The one place that chooses how activations run.
    this.executor = options.actionLoop ? new LoopExecutor({ ...common, env, ...options.actionLoop }) : new ProcessExecutor(common);
  }

  /** Where the action's output goes. The proxy's own streams are looked up only when first written:
   * creating them costs start-up time. */
  protected get logs(): Logs {
    return this.customLogs ?? { stdout: process.stdout, stderr: process.stderr };
  }

  /**
   * Initializes from an init request's `value` members: reads them, puts the code in place (a failure
   * puts the previous files back), gets the executor ready. Throws a 502 ProxyError whose cause says
   * what went wrong.
   */
  async init(members: Map<string, Member>, parts?: Parts): Promise<void> {
    try {
      const value = initValue(members);
      // A language runtime (it has a compiler) needs code to build; only the skeleton runs the image's own exec.
      if (value.code === undefined && this.compiler !== undefined) throw new ProxyError(403, MESSAGES.noCode);
      const baseEnv = { ...this.initialEnv, ...value.env };
      const activate = (): Promise<void> => this.executor.start(baseEnv, parts);
      if (value.code !== undefined) {
        let commit = (): void => {};
        await install(this.actionDir, { code: value.code, binary: value.binary }, {
          swapped: () => {
            this.uncommitted = new Promise((resolve) => (commit = resolve));
          },
          zipLimits: this.zipLimits,
          build: this.build === ActionRunner.prototype.build ? undefined : () => this.build(value),
          compiler: this.compiler === undefined ? undefined : { command: this.compiler, main: value.main ?? 'main', env: baseEnv, logs: this.logs },
          executionEnv: this.executionEnv,
          activate,
          parts,
        }).finally(() => {
          this.uncommitted = undefined;
          commit();
        });
      } else {
        verifyOrThrow(this.binary);
        await activate();
      }
      this.baseEnv = baseEnv;
      this.initialized = true;
    } catch (error) {
      if (error instanceof ProxyError && error.message === MESSAGES.noCode) throw error;
      if (!(error instanceof StartFailed)) throw new ProxyError(502, MESSAGES.initFailed, { cause: error });
      // As OpenWhisk's actionloop runtimes answer it (Go's proxy with OW_LOG_INIT_ERROR): the reason, then their line.
      if (error.exited) this.logs.stderr.write(`${error.message}\n`);
      throw new ProxyError(502, MESSAGES.cannotStart, { cause: error.exited ? new Error('Command exited abruptly during initialization.') : error });
    }
  }

  /**
   * A hook for runtimes with a build step (compile a source file into `exec`, say). It runs after the new
   * files are in the action directory and before `exec` is verified; throwing fails the init and
   * restores the previous action.
   */
  protected async build(_value: InitValue): Promise<void> {}

  /** Whether `exec` is an executable file. */
  verify(): boolean {
    return verify(this.binary) !== undefined;
  }

  /**
   * One activation's environment, built fresh when asked for: the base environment, then one
   * `__OW_<KEY>` per activation field. Nothing of one activation is visible to the next. The fields are
   * checked at once: one that can't be a variable is a 400 before anything runs.
   */
  activationEnv(fields: Map<string, string>): () => Record<string, string> {
    let own: Record<string, string>;
    try {
      own = environment(fields, '__OW_', 'activation field');
    } catch (error) {
      throw new ProxyError(400, (error as Error).message);
    }
    const base = this.baseEnv;
    return () => ({ ...base, ...own });
  }

  /**
   * Waits for an activation slot (PROXY_MAX_ACTIVATIONS); resolves with its release, which may be
   * called more than once. An abort of `signal` while waiting leaves the line (CLIENT_CLOSED); a full
   * line (PROXY_MAX_WAITING) is a 503 at once.
   */
  admit(signal?: CancelSignal): Promise<() => void> {
    const free = this.takeSlot();
    if (free) return Promise.resolve(free);
    if (this.refusal) return Promise.reject(this.refusal);
    if (this.waiting.length >= this.maxWaiting) {
      return Promise.reject(
        new ProxyError(503, `The proxy is at its limit of ${this.maxWaiting} waiting requests (PROXY_MAX_WAITING). Try again.`, {
          // Its body is never held: Node reads it past and discards it, and the connection stays open.
          // Closing it at once would reset a client still sending its body, and lose this answer.
          headers: { 'Retry-After': '1' },
        }),
      );
    }
    debug(() => `an activation waits for a slot: ${this.running} running, ${this.waiting.length} waiting before it`);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant(release) {
          signal?.removeEventListener('abort', leave);
          resolve(release);
        },
        refuse(error) {
          signal?.removeEventListener('abort', leave);
          reject(error);
        },
      };
      const leave = (): void => {
        const at = this.waiting.indexOf(waiter);
        if (at !== -1) this.waiting.splice(at, 1);
        reject(new ProxyError(CLIENT_CLOSED, 'The client closed the connection while its activation waited for a slot.'));
      };
      signal?.addEventListener('abort', leave, { once: true });
      this.waiting.push(waiter);
    });
  }

  /** Takes a free activation slot now: its release, or undefined when there is none (admit() waits for one). */
  takeSlot(): (() => void) | undefined {
    if (!this.hasFreeSlot()) return undefined;
    this.running++;
    return this.releaser();
  }

  /** Whether an activation would start now, without waiting for a slot. */
  hasFreeSlot(): boolean {
    return this.maxActivations <= 0 || this.running < this.maxActivations;
  }

  /** A slot's release: the slot passes straight to the next in line, once. */
  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next.grant(this.releaser());
      else this.running--;
    };
  }

  /** Shutdown: those waiting for a slot are answered `error`, and no one waits any more. */
  refuseWaiting(error: ProxyError): void {
    this.refusal = error;
    for (const waiter of this.waiting.splice(0)) waiter.refuse(error);
  }

  /**
   * Runs one activation in a slot the caller holds (admit()); resolves with its result or rejects with
   * a ProxyError. An abort of `signal` stops it (CLIENT_CLOSED with MESSAGES.cancelled). Not an async
   * function: it is on every activation's path, and the executor's promise is the one to wait for.
   */
  run(message: RunMessage, signal?: CancelSignal): Promise<ActionResult> {
    let activation: Activation;
    try {
      activation = { ...message, env: this.activationEnv(message.fields) };
    } catch (error) {
      return Promise.reject(error);
    }
    this.activations++;
    if (!this.idleCheck && this.idleGcMs > 0) this.watchForIdleness();
    return this.executor.run(activation, signal);
  }

  /**
   * Every `idleGcMs`, if no activation ran since the last look and none runs now, and the process grew
   * by IDLE_GC_GROWTH since the last collection: one full garbage collection, for a container that
   * stays idle long after a single burst (off by default: see DEFAULT_IDLE_GC_MS). One timer, not one
   * per activation; the collection blocks for 15-20 ms, once per idle period, never while anything runs.
   */
  private watchForIdleness(): void {
    this.rssAfterCollection = residentSet();
    let seen = this.activations;
    let collectedAt = 0;
    this.idleCheck = setInterval(() => {
      // Nothing started since the last look, and no slot is held (run() is only called in one).
      const idle = seen === this.activations && this.running === 0 && this.waiting.length === 0;
      seen = this.activations;
      if (!idle || collectedAt === this.activations) return;
      // Where /proc can't be read (a scratch root), the growth is unknown: one collection after activity.
      const before = residentSet();
      if (before !== undefined && this.rssAfterCollection !== undefined && before < this.rssAfterCollection + IDLE_GC_GROWTH) return;
      collectedAt = this.activations;
      collectGarbage(true).then(
        () => {
          this.rssAfterCollection = residentSet();
          debug(() => `idle: a full garbage collection, resident set ${mebibytes(before)} -> ${mebibytes(this.rssAfterCollection)} MiB`);
        },
        (error: Error) => debug(() => `idle: no garbage collection (${error.message})`),
      );
    }, this.idleGcMs).unref();
  }

  /** Kills the activations and the init's compiler still running (shutdown ran out of time); returns a line naming each. */
  kill(): string[] {
    return [...this.executor.kill(), ...killCompilers()];
  }

  /**
   * Ends every process at shutdown: idle action processes are asked to exit and get `graceMs`; what is
   * left then, and what is left in their process groups, is killed, and so is a compiler still running.
   * Resolves with whether anything had to be.
   */
  async stop(graceMs: number): Promise<boolean> {
    clearInterval(this.idleCheck);
    const compilersKilled = killCompilers().length > 0;
    return (await this.executor.stop(graceMs)) || compilersKilled;
  }
}

function mebibytes(bytes: number | undefined): string {
  return bytes === undefined ? '?' : (bytes / 1048576).toFixed(1);
}

/** The process's resident set in bytes; undefined where Node can't read it (no /proc). */
function residentSet(): number | undefined {
  try {
    return process.memoryUsage.rss();
  } catch {
    return undefined;
  }
}

/** An activation waiting for a slot. */
interface Waiter {
  grant(release: () => void): void;
  refuse(error: ProxyError): void;
}

/** Reads an init value's members; throws what is wrong with them. `null` means absent throughout. */
function initValue(members: Map<string, Member>): InitValue {
  const text = (name: string): string | undefined => {
    const found = members.get(name)?.value;
    return found === undefined || found === 'null' ? undefined : found;
  };
  const code = text('code');
  if (code !== undefined && kindOf(code) !== 'string') throw new Error(`init 'code' must be a string, not ${describeKind(code)}`);
  const binary = text('binary');
  if (binary !== undefined && kindOf(binary) !== 'boolean') throw new Error(`init 'binary' must be a boolean, not ${describeKind(binary)}`);
  const env = text('env');
  if (env !== undefined && kindOf(env) !== 'object') throw new Error('init env must be an object');
  const main = text('main');
  const fields = new Map<string, string>();
  for (const [name, entry] of env === undefined ? [] : membersOf(env)) fields.set(name, entry.value);
  return {
    code: code === undefined ? undefined : (members.get('code')!.source ?? stringValue(code)),
    binary: binary === 'true',
    main: main !== undefined && kindOf(main) === 'string' ? stringValue(main) : undefined,
    env: environment(fields, '', 'init env'),
    members,
  };
}

function describeKind(text: string): string {
  const kind = kindOf(text);
  return kind === 'array' || kind === 'object' ? `an ${kind}` : `a ${kind}`;
}

/**
 * Environment variables from JSON texts: strings as they are, `null` as "", anything else as its JSON
 * text as sent (a 64-bit ID stays exact). Errors name an entry as `what`.
 */
export function environment(fields: Map<string, string>, prefix: string, what: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, json] of fields) {
    const kind = kindOf(json);
    const text = kind === 'string' ? stringValue(json) : kind === 'null' ? '' : compact(json);
    if (key === '' || key.includes('=') || key.includes('\0')) throw new Error(`${what} '${key.replaceAll('\0', '\\0')}' can't be an environment variable name`);
    if (text.includes('\0')) throw new Error(`${what} '${key}' has a NUL character, which an environment variable can't hold`);
    env[prefix + (prefix ? key.toUpperCase() : key)] = text;
  }
  return env;
}
