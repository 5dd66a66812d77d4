// Action-loop mode (OpenWhisk's "actionloop" protocol, as its Go proxy speaks it to the newer runtimes):
// the action is started once and takes one activation per line. The proxy writes each activation's
// JSON as one line to the process's stdin and answers with the one line the process writes on fd 3.
//
// Beyond the Go proxy: each process runs one activation at a time and overlapping activations get
// processes of their own (idle ones reused); a process that dies answers 502 and is replaced; a stray
// fd-3 line never answers a later activation; what an activation logged comes before its sentinels.

import { spawn, type ChildProcess } from 'node:child_process';
import { readSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { CLIENT_CLOSED, MESSAGES, ProxyError } from '../errors.ts';
import { verify } from '../install.ts';
import { compact, scan } from '../json.ts';
import { measure, type Parts } from '../timing.ts';
import { MAX_LOG_LINE_BYTES, describeProcess, forwardLines, killGroup, resultIn, resultOf, resultTooLarge, startFailure, writeLine, type ActionResult, type Activation, type CancelSignal, type Executor, type ExecutorOptions, type Logs } from './executor.ts';
import { debug } from '../diagnostics.ts';

const NEWLINE = 0x0a;
/** How long a process that is being stopped gets between SIGTERM and SIGKILL. */
const STOP_GRACE_MS = 1_000;
/** fd 3 usually closes because the process is exiting: how long its exit gets to be reported as such. */
const FD3_CLOSED_GRACE_MS = 100;

export interface LoopExecutorOptions extends ExecutorOptions {
  /** The environment processes get before any init: the proxy's own. */
  env: Record<string, string>;
  /** Wait for `{"ok": true}` on fd 3 after starting a process (OW_WAIT_FOR_ACK). */
  ack: boolean;
  ackTimeoutMs: number;
  /** How long a process beyond the first may stay idle before it is stopped (PROXY_LOOP_IDLE_SECONDS); 0: forever. */
  idleMs?: number;
}

/** One long-lived action process. */
interface LoopProcess {
  child: ChildProcess;
  /** Which start() it belongs to: a successful re-init retires the older ones. */
  generation: number;
  /** Who waits for its next fd-3 line, or for its exit: the ack at start-up, or the activation it runs. */
  waiting: AckWait | ActivationWait | undefined;
  /** It has exited. */
  gone: boolean;
  /** The proxy is stopping it: out of the pool, its exit is expected. */
  stopping: boolean;
  /** Writes the unfinished log lines it holds (at the end of an activation), each ended. */
  flushLogs(): void;
  /** Reads what the kernel still holds in its stdout and stderr pipes into the logs. */
  drainPipes(): void;
  /** A log pipe was paused (the proxy's own log was full) since its activation began. */
  backedUp: boolean;
  /** Its activation's client went away: it is being killed, and its exit ends that activation. */
  cancelled: boolean;
  /** When it last went back to the pool (Date.now()). */
  idleSince: number;
  /** Takes an unfinished fd-3 line it wrote while it had no activation: stray text, not an answer. */
  takeStray(): Buffer;
  name: string;
}

/** A start-up waiting for the process's ack. */
interface AckWait {
  ack: true;
  line(line: Buffer | undefined): void;
  gone(why: string): void;
}

/**
 * An activation waiting for the process's answer: data that the executor's own methods act on. Not
 * closures of the activation: one stored on the long-lived process object and called from the fd-3
 * reader kept each activation (its promise and all it reached) alive from one young-generation
 * collection to the next, and V8 moved about 1.5 KB per activation to the old generation (--trace-gc-nvp,
 * Node 24 with the image's flag: scavenges of 0.5 ms that moved ~100 KB each; with data, 0.2 ms and none).
 */
interface ActivationWait {
  ack: false;
  resolve(result: ActionResult): void;
  reject(error: unknown): void;
  logs: Logs;
  signal: CancelSignal | undefined;
  cancel(): void;
}

/** Why an action process did not come up: its ack, or its exit before the ack (`exited`). */
export class StartFailed extends Error {
  readonly exited: boolean;
  constructor(why: string, exited: boolean) {
    super(`The action did not start: ${why}.`);
    this.name = 'StartFailed';
    this.exited = exited;
  }
}

/** A message the process never got: its stdin was closed. Delivered to another process instead, once. */
const UNDELIVERED = new Error('the action process had closed its input');

export class LoopExecutor implements Executor {
  private readonly options: LoopExecutorOptions;
  private env: Record<string, string>;
  private generation = 0;
  /** Idle processes, the longest idle first. */
  private readonly idle: LoopProcess[] = [];
  private readonly processes = new Set<LoopProcess>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(options: LoopExecutorOptions) {
    this.options = options;
    this.env = options.env;
  }

  /**
   * Starts a process of the action now installed (acked when acks are on). Only once it is up are the
   * older processes stopped: a failed start leaves them running and answering.
   */
  async start(env: Record<string, string>, parts?: Parts): Promise<void> {
    const started = await measure(parts, 'start', () => this.launch(env, this.generation + 1));
    this.generation++;
    this.env = env;
    for (const process of [...this.processes]) if (process.generation < this.generation && !process.waiting) this.terminate(process);
    this.release(started);
  }

  run(activation: Activation, signal?: CancelSignal): Promise<ActionResult> {
    const message = messageLine(activation);
    // An idle process is taken in this turn: only a start or an uncommitted init is waited for.
    const process = this.idle.pop();
    if (process) return this.exchange(process, message, signal, true);
    return this.take().then((taken) => this.exchange(taken, message, signal, true));
  }

  /**
   * An idle process, or a new one of the committed action. While an init's files are in place and not
   * committed, a new one waits for the init to end: it would run code the init may still reject.
   */
  private async take(): Promise<LoopProcess> {
    for (;;) {
      const idle = this.idle.pop();
      if (idle) return idle;
      const uncommitted = this.options.uncommitted();
      if (!uncommitted) break;
      await uncommitted;
    }
    try {
      return await this.launch(this.env, this.generation);
    } catch (error) {
      if (error instanceof ProxyError) throw error;
      // Why it did not come up (its ack, its exit) is for the logs; the client gets the fixed text.
      throw new ProxyError(502, MESSAGES.notStarted, { cause: error });
    }
  }

  kill(): string[] {
    const busy = [...this.processes].filter((process) => process.waiting);
    for (const process of busy) killGroup(process.child.pid!);
    return busy.map((process) => process.name);
  }

  /** Shutdown: closes every process's stdin, gives them `graceMs` to exit, then kills what is left. */
  async stop(graceMs: number): Promise<boolean> {
    clearTimeout(this.sweeper);
    const left = [...this.processes];
    for (const process of left) {
      process.stopping = true;
      process.child.stdin?.end();
    }
    const exits = left.map((process) => new Promise((resolve) => (process.gone ? resolve(undefined) : process.child.once('exit', resolve))));
    const waitForExits = (ms: number): Promise<unknown> => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([Promise.all(exits), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]).finally(() => clearTimeout(timer));
    };
    await waitForExits(graceMs);
    const stubborn = left.filter((process) => !process.gone);
    for (const process of stubborn) killGroup(process.child.pid!);
    // Only once they are gone does the proxy exit.
    if (stubborn.length > 0) await waitForExits(STOP_GRACE_MS);
    return stubborn.length > 0;
  }

  /**
   * Sends one message and waits for the answer line; the process goes back to the pool after. A message
   * the process never got (it had closed its input) goes to another process once, when `retry`.
   */
  private exchange(process: LoopProcess, message: string | Array<string | Buffer>, signal: CancelSignal | undefined, retry: boolean): Promise<ActionResult> {
    const logs = this.options.logs();
    // What it wrote on fd 3 since its last answer, without a newline, is not the start of this one.
    const stray = process.takeStray();
    if (stray.length > 0) writeLine(logs.stdout, stray);
    return new Promise((resolve, reject) => {
      // A process can't be interrupted mid-activation: it is killed with its group and not reused.
      const cancel = (): void => {
        process.cancelled = true;
        this.terminate(process, true);
      };
      // Once: stopWaiting() removes it, and an abort calls each listener once.
      signal?.addEventListener('abort', cancel);
      const activation: ActivationWait = { ack: false, resolve, reject, logs, signal, cancel };
      process.waiting = activation;
      process.backedUp = false;
      const stdin = process.child.stdin!;
      const written = (error: Error | null | undefined): void => {
        if (!error || process.waiting !== activation) return;
        // It had closed its input before the message: nothing of this activation reached it.
        stopWaiting(process, activation);
        this.terminate(process);
        if (!retry) return reject(UNDELIVERED);
        this.take().then((taken) => this.exchange(taken, message, signal, false)).then(resolve, reject);
      };
      if (typeof message === 'string') return void stdin.write(message, written);
      // One writev for the parts: the arguments' bytes are not copied into a line of their own.
      stdin.cork();
      for (let i = 0; i < message.length - 1; i++) stdin.write(message[i]);
      stdin.write(message[message.length - 1], written);
      stdin.uncork();
    });
  }

  /** A line on fd 3 (undefined: longer than the limit): the ack or the answer someone waits for, else stray text. */
  private lineFrom(process: LoopProcess, line: Buffer | undefined): void {
    const waiting = process.waiting;
    if (waiting?.ack) return waiting.line(line);
    if (!waiting) {
      if (line !== undefined) writeLine(this.options.logs().stdout, line);
      return;
    }
    const { maxResultBytes } = this.options;
    if (line === undefined) {
      // Longer than the limit: the rest of the line can't be told from the next answer.
      this.terminate(process);
      return this.finish(process, waiting, () => {
        throw new ProxyError(502, resultTooLarge(maxResultBytes));
      });
    }
    const result = resultIn(line);
    if (result) return this.answer(process, waiting, result);
    this.finish(process, waiting, () => resultOf(line, waiting.logs, maxResultBytes));
  }

  /** The process exited, or closed fd 3, while someone waited. */
  private goneFrom(process: LoopProcess, why: string): void {
    const waiting = process.waiting;
    if (!waiting) return;
    if (waiting.ack) return waiting.gone(why);
    this.finish(process, waiting, () => {
      if (process.cancelled) {
        waiting.logs.stderr.write(`${MESSAGES.cancelled}\n`);
        throw new ProxyError(CLIENT_CLOSED, MESSAGES.cancelled);
      }
      waiting.logs.stderr.write(`${why}\n`);
      throw new ProxyError(502, MESSAGES.exited);
    });
  }

  /**
   * Ends the activation with a result at once: the client need not wait for the logs. What the action
   * wrote before its result is still being read; the sentinels wait for it (`logged`), and so does the
   * process's return to the pool, so that no later activation's logs come before it.
   */
  private answer(process: LoopProcess, activation: ActivationWait, result: ActionResult): void {
    result.logged = this.logsIn(process, activation);
    activation.resolve(result);
  }

  /** Ends the activation with `outcome` once its logs are in (an outcome may write to them). */
  private finish(process: LoopProcess, activation: ActivationWait, outcome: () => ActionResult): void {
    void this.logsIn(process, activation).then(() => {
      try {
        activation.resolve(outcome());
      } catch (error) {
        activation.reject(error);
      }
    });
  }

  /**
   * Resolves once what the process wrote before now is in the logs, and it is back in the pool. Its
   * answer on fd 3 came after its logs, so when the answer was read the logs were in the pipes, and
   * libuv reads every ready pipe in the same turn: the next turn is enough while the pipes flow. When one
   * was paused (the proxy's own log was full), drain() first. A callback, not an async function: this is
   * on every activation's path, and each await would be one more object to collect.
   */
  private logsIn(process: LoopProcess, activation: ActivationWait): Promise<void> {
    stopWaiting(process, activation);
    return new Promise((resolve) => {
      setImmediate(() => {
        if (process.backedUp) return void this.drain(process).then(() => this.logsDone(process, resolve));
        this.logsDone(process, resolve);
      });
    });
  }

  private logsDone(process: LoopProcess, resolve: () => void): void {
    process.flushLogs();
    if (this.processes.has(process)) this.release(process);
    resolve();
  }

  /** Puts a process back in the pool, or stops it when a re-init has replaced its action since. */
  private release(process: LoopProcess): void {
    if (process.generation < this.generation) return this.terminate(process);
    process.idleSince = Date.now();
    this.idle.push(process);
    if (this.options.idleMs && this.processes.size > 1 && !this.sweeper) this.sweepAfter(this.options.idleMs);
  }

  /**
   * The pool follows the load: after a burst, processes beyond the first that stayed idle for `idleMs`
   * are stopped (the longest idle first; the most recently used are the ones taken next).
   */
  private sweepAfter(ms: number): void {
    this.sweeper = setTimeout(() => {
      this.sweeper = undefined;
      const idleMs = this.options.idleMs!;
      const now = Date.now();
      while (this.idle.length > 0 && this.processes.size > 1 && now - this.idle[0]!.idleSince >= idleMs) this.terminate(this.idle[0]!);
      if (this.idle.length > 0 && this.processes.size > 1) this.sweepAfter(Math.max(10, this.idle[0]!.idleSince + idleMs - now));
    }, ms).unref();
  }

  /**
   * Reads what a log pipe that was paused still holds: waits until the streams hold nothing, then reads
   * the kernel pipes dry.
   */
  private async drain(process: LoopProcess): Promise<void> {
    const pipes = [process.child.stdout as Readable, process.child.stderr as Readable];
    for (;;) {
      const holding = pipes.filter((pipe) => !pipe.destroyed && (pipe.isPaused() || pipe.readableLength > 0));
      if (holding.length === 0) break;
      await new Promise<void>((resolve) => {
        const moved = (): void => {
          clearTimeout(timer);
          for (const pipe of holding) pipe.off('resume', moved);
          resolve();
        };
        const timer = setTimeout(moved, 5);
        for (const pipe of holding) pipe.once('resume', moved);
      });
    }
    process.drainPipes();
    process.backedUp = pipes.some((pipe) => pipe.isPaused());
  }

  /**
   * Stops a process: its stdin closed, SIGTERM to its group, SIGKILL after a second; or, `now`, SIGKILL
   * at once with its stdin dropped (a message it never read is released with it).
   */
  private terminate(process: LoopProcess, now = false): void {
    this.forget(process);
    if (process.gone || process.stopping) return;
    process.stopping = true;
    debug(() => `stopping loop process ${process.child.pid} (${now ? 'SIGKILL' : 'SIGTERM'}); ${this.processes.size} left in the pool`);
    if (now) {
      process.child.stdin?.destroy();
      return killGroup(process.child.pid!);
    }
    process.child.stdin?.end();
    killGroup(process.child.pid!, 'SIGTERM');
    setTimeout(() => process.gone || killGroup(process.child.pid!), STOP_GRACE_MS).unref();
  }

  private forget(process: LoopProcess): void {
    this.processes.delete(process);
    const at = this.idle.indexOf(process);
    if (at !== -1) this.idle.splice(at, 1);
  }

  /** Starts a process of the action with `env`, and waits for its ack when acks are on. */
  private launch(env: Record<string, string>, generation: number): Promise<LoopProcess> {
    const { binary, actionDir, maxResultBytes, ack, ackTimeoutMs } = this.options;
    const logs = this.options.logs();
    if (!verify(binary)) return Promise.reject(new ProxyError(502, MESSAGES.noBinary, { cause: new Error(`${binary} is not an executable file`) }));
    let child: ChildProcess;
    try {
      child = spawn(binary, [], { cwd: actionDir, env, stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true });
    } catch (error) {
      return Promise.reject(startFailure(error, logs));
    }
    return new Promise((resolve, reject) => {
      child.on('error', (error) => {
        if (child.pid !== undefined) return;
        for (const pipe of child.stdio) pipe?.destroy();
        reject(startFailure(error, logs));
      });
      if (child.pid === undefined) return;
      debug(() => `started loop process ${child.pid}; ${this.processes.size + 1} in the pool`);

      const stdoutLines = forwardLines(child.stdout!, logs.stdout, false, MAX_LOG_LINE_BYTES);
      const stderrLines = forwardLines(child.stderr!, logs.stderr, false, MAX_LOG_LINE_BYTES);
      const backedUp = (): void => {
        process.backedUp = true;
      };
      child.stdout!.on('pause', backedUp);
      child.stderr!.on('pause', backedUp);
      const process: LoopProcess = {
        child,
        generation,
        waiting: undefined,
        gone: false,
        stopping: false,
        backedUp: false,
        cancelled: false,
        idleSince: 0,
        takeStray: () => results.takePartial(),
        name: describeProcess(child.pid),
        flushLogs() {
          stdoutLines.flush();
          stderrLines.flush();
        },
        drainPipes() {
          readDry(child.stdout as Readable, stdoutLines.feed);
          readDry(child.stderr as Readable, stderrLines.feed);
        },
      };
      child.stdin!.on('error', () => {}); // EPIPE: reported to the write that failed
      const results = readResultLines(child.stdio[3] as Readable, maxResultBytes, {
        line: (line) => this.lineFrom(process, line),
        // Without fd 3 it can answer nothing more: a partial line is its last answer; it is stopped.
        closed: (partial) => {
          if (process.gone) return;
          if (partial.length > 0 && process.waiting) {
            this.lineFrom(process, partial);
            return this.terminate(process);
          }
          this.forget(process);
          setTimeout(() => {
            if (process.gone) return;
            this.goneFrom(process, `The action process ${child.pid} closed fd 3.`);
            this.terminate(process);
          }, FD3_CLOSED_GRACE_MS).unref();
        },
      });
      child.on('exit', (code, signal) => {
        process.gone = true;
        this.forget(process);
        // Its children go with it: a launcher that crashed must not leave its workers running.
        killGroup(child.pid!);
        const how = signal !== null ? `was terminated by signal ${signal}` : `exited with code ${code}`;
        if (process.waiting) return this.goneFrom(process, `The action process ${child.pid} ${how}.`);
        process.flushLogs();
        if (process.stopping) return;
        logs.stderr.write(`The action process ${child.pid} ${how} while idle; the next activation starts a new one.\n`);
      });
      this.processes.add(process);

      if (!ack) return resolve(process);
      // The first fd-3 line must be {"ok": true}.
      const timer = setTimeout(() => fail(`no ack on fd 3 within ${ackTimeoutMs / 1000} s (PROXY_ACK_TIMEOUT_SECONDS)`), ackTimeoutMs);
      const fail = (why: string, exited = false): void => {
        clearTimeout(timer);
        process.waiting = undefined;
        this.terminate(process);
        reject(new StartFailed(why, exited));
      };
      process.waiting = {
        ack: true,
        line: (line) => {
          const text = line?.toString('utf8').trim() ?? '';
          let ok = false;
          try {
            ok = scan(text).members?.get('ok')?.value === 'true';
          } catch {
            // not JSON: refused below
          }
          if (!ok) return fail(line === undefined ? 'its ack was longer than PROXY_MAX_RESULT_BYTES' : `its ack was ${JSON.stringify(text.slice(0, 200))}, not {"ok": true}`);
          clearTimeout(timer);
          process.waiting = undefined;
          resolve(process);
        },
        gone: (why) => fail(why.replace(/\.$/, ''), true),
      };
    });
  }
}

/** The process no longer runs `activation`: its fd-3 lines and its exit are no longer that activation's, nor is its client's abort. */
function stopWaiting(process: LoopProcess, activation: ActivationWait): void {
  process.waiting = undefined;
  activation.signal?.removeEventListener('abort', activation.cancel);
}

/** Most reads of one pipe when draining it: an action that never stops writing can't hold its answer back. */
const MAX_DRAIN_READS = 64;

/**
 * Reads what the kernel holds in a child's pipe, straight from its file descriptor (non-blocking, as
 * libuv made it), until it is empty; each chunk to `forward`. The stream must hold nothing itself.
 */
function readDry(pipe: Readable, forward: (chunk: Buffer) => void): void {
  // Node keeps a pipe's descriptor on the stream's handle; without one there is nothing to read.
  const handle = (pipe as unknown as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return;
  const buffer = Buffer.allocUnsafe(65536);
  for (let reads = 0; reads < MAX_DRAIN_READS; reads++) {
    let length: number;
    try {
      length = readSync(fd, buffer);
    } catch {
      return; // EAGAIN: empty
    }
    if (length === 0) return; // the end
    forward(Buffer.from(buffer.subarray(0, length)));
  }
}

/**
 * Reads fd 3 as lines, each handed to `on.line` (`undefined` for a line longer than `maxBytes`, as soon
 * as it is); when fd 3 closes, `on.closed` gets the unfinished line.
 */
function readResultLines(pipe: Readable, maxBytes: number, on: { line(line: Buffer | undefined): void; closed(partial: Buffer): void }): { takePartial(): Buffer } {
  let held: Buffer[] = [];
  let heldBytes = 0;
  // The current line grew past the limit and was answered for: the rest of it is dropped.
  let tooLong = false;
  pipe.on('data', (chunk: Buffer) => {
    let start = 0;
    for (let end = chunk.indexOf(NEWLINE); end !== -1; end = chunk.indexOf(NEWLINE, start)) {
      if (!tooLong) {
        // A line within one chunk is a view of it: a copy would come from Node's Buffer pool (see messageLine).
        const line = held.length === 0 ? chunk.subarray(start, end) : Buffer.concat([...held, chunk.subarray(start, end)]);
        on.line(line.length <= maxBytes ? line : undefined);
      }
      held = [];
      heldBytes = 0;
      tooLong = false;
      start = end + 1;
    }
    if (start < chunk.length && !tooLong) {
      held.push(chunk.subarray(start));
      heldBytes += chunk.length - start;
      if (heldBytes > maxBytes) {
        held = [];
        heldBytes = 0;
        tooLong = true;
        on.line(undefined);
      }
    }
  });
  pipe.on('error', () => {});
  pipe.on('close', () => on.closed(tooLong ? Buffer.alloc(0) : Buffer.concat(held)));
  return {
    takePartial() {
      const partial = held.length === 0 ? EMPTY : Buffer.concat(held, heldBytes);
      held = [];
      heldBytes = 0;
      tooLong = false;
      return partial;
    },
  };
}

const EMPTY = Buffer.alloc(0);

/**
 * The line an activation is sent as: `{"value": <arguments>, <field>: <value>, …}`, each text as the
 * client sent it with the whitespace between tokens taken out, so that it is one line. One string,
 * which a pipe writes as it is; or, for arguments that arrived as bytes and need no compaction, parts
 * around those bytes. Never a small Buffer made per activation: it would come from Node's Buffer pool,
 * whose 8 KiB slabs, used a few bytes at a time, live long enough to be promoted and are then held
 * until a full collection: memory would grow with every activation.
 */
function messageLine(activation: Activation): string | Array<string | Buffer> {
  let fields = '';
  for (const [name, text] of activation.fields) if (name !== 'value') fields += `,${JSON.stringify(name)}:${compact(text)}`;
  const args = compact(activation.args);
  if (args === activation.args && activation.argsBytes) return [VALUE_START, activation.argsBytes, `${fields}}\n`];
  return `{"value":${args}${fields}}\n`;
}

const VALUE_START = Buffer.from('{"value":');
