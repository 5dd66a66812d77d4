// A process per activation, the original proxy's protocol: `exec` is started with the arguments' JSON as
// argv[1] (when it fits) and on stdin; its stdout lines but the last are logs, the last is the result.
// Each process leads a process group of its own, so that what it started can be killed with it.

import { spawn, type ChildProcess } from 'node:child_process';
import { CLIENT_CLOSED, MESSAGES, ProxyError } from '../errors.ts';
import { verify } from '../install.ts';
import { MAX_LOG_LINE_BYTES, describeProcess, forwardLines, groupAlive, killGroup, resultOf, startFailure, trim, writeLine, type ActionResult, type Activation, type CancelSignal, type Executor, type ExecutorOptions } from './executor.ts';
import { debug, debugging } from '../diagnostics.ts';

// linux/binfmts.h MAX_ARG_STRLEN is 32 pages (131072 bytes) including the terminating NUL; it bounds
// each argument and each environment variable.
const MAX_ARG_STRLEN = 131071;

/** After a cancelled activation's process has exited, how long a descendant may still hold its pipes. */
const CANCELLED_PIPES_GRACE_MS = 500;

/** Past this many groups left behind by finished activations, the ones that emptied are forgotten. */
const LINGERING_PRUNE_AT = 64;

export class ProcessExecutor implements Executor {
  private readonly options: ExecutorOptions;
  /** The processes running now, with how to name them. */
  private readonly running = new Map<ChildProcess, string>();
  /**
   * The process groups of finished activations that still had members (a background child): they are
   * killed at shutdown, so that nothing the proxy started outlives it.
   */
  private readonly lingering = new Set<number>();

  constructor(options: ExecutorOptions) {
    this.options = options;
  }

  /** Nothing to get ready: every activation starts `exec` afresh. */
  async start(): Promise<void> {}

  /** Kills what finished activations left running in their groups (shutdown). */
  async stop(): Promise<boolean> {
    for (const group of this.lingering) killGroup(group);
    this.lingering.clear();
    return false;
  }

  kill(): string[] {
    for (const child of this.running.keys()) killGroup(child.pid!);
    return [...this.running.values()];
  }

  run(activation: Activation, signal?: CancelSignal): Promise<ActionResult> {
    // An init is putting new files in place: they run once it has committed them.
    const uncommitted = this.options.uncommitted();
    if (uncommitted) return uncommitted.then(() => this.run(activation, signal));
    const { binary, actionDir, maxResultBytes } = this.options;
    const logs = this.options.logs();
    const stats = verify(binary);
    if (!stats) return Promise.reject(new ProxyError(502, MESSAGES.noBinary, { cause: new Error(`${binary} is not an executable file`) }));
    // glibc's execvp would run an empty file through /bin/sh and "succeed"; the kernel says ENOEXEC.
    if (stats.size === 0) return Promise.reject(startFailure(new Error(`spawn ${binary} ENOEXEC: exec format error (the file is empty)`), logs));
    let env: Record<string, string>;
    try {
      env = activation.env();
      checkFieldSizes(activation.fields, env);
    } catch (error) {
      return Promise.reject(error);
    }

    return new Promise((resolve, reject) => {
      const { args } = activation;
      const argv = Buffer.byteLength(args) <= MAX_ARG_STRLEN ? [args] : [];
      let child: ChildProcess;
      try {
        child = spawn(binary, argv, { cwd: actionDir, env, stdio: 'pipe', detached: true });
      } catch (error) {
        return reject(startFailure(error, logs));
      }
      // One answer per activation, whichever of its terminal events comes first.
      let settled = false;
      let cancelled = false;
      const cancel = (): void => {
        cancelled = true;
        killGroup(child.pid!);
        // A descendant that left the group can hold the pipes open: a stopped activation doesn't wait for it.
        const release = (): void => void setTimeout(() => [child.stdout, child.stderr].forEach((pipe) => pipe?.destroy()), CANCELLED_PIPES_GRACE_MS).unref();
        if (child.exitCode !== null || child.signalCode !== null) release();
        else child.once('exit', release);
      };
      const settle = (outcome: () => ActionResult): void => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', cancel);
        this.running.delete(child);
        try {
          resolve(outcome());
        } catch (error) {
          reject(error);
        }
      };
      child.on('error', (error) => {
        if (child.pid !== undefined) return; // a failed kill of a running process: its close still comes
        // It never started, so there is no output to wait for. Out of descriptors, Node leaves the pipes
        // unset; otherwise they exist and are closed here.
        for (const pipe of [child.stdin, child.stdout, child.stderr]) pipe?.destroy();
        settle(() => {
          throw startFailure(error, logs);
        });
      });
      if (child.pid === undefined) return;

      const pid = child.pid;
      if (debugging) {
        debug(`started action process ${pid}`);
        child.once('exit', (code, signal) => debug(`action process ${pid} exited (${signal ?? `code ${code}`})`));
      }
      this.running.set(child, describeProcess(pid, activation.fields));
      signal?.addEventListener('abort', cancel, { once: true });
      child.stdin!.on('error', () => {}); // EPIPE: an action need not read its input
      child.stdin!.end(activation.argsBytes ?? args);
      const lastLine = forwardLines(child.stdout!, logs.stdout, true, maxResultBytes);
      const stderrLines = forwardLines(child.stderr!, logs.stderr, false, MAX_LOG_LINE_BYTES);
      // The activation ends when the process has exited and both pipes are drained.
      child.on('close', (code, signalName) => {
        this.remember(pid);
        settle(() => {
          stderrLines.flush();
          const line = lastLine.rest();
          if (cancelled || signalName !== null) {
            // Whatever it printed last is not a result (an OOM kill must not return a stale one): a log line.
            if (line?.length) writeLine(logs.stdout, trim(line));
            if (cancelled) {
              logs.stderr.write(`${MESSAGES.cancelled}\n`);
              throw new ProxyError(CLIENT_CLOSED, MESSAGES.cancelled);
            }
            logs.stderr.write(`The action was terminated by signal ${signalName}.\n`);
            throw new ProxyError(502, `The action was terminated by signal ${signalName}. See logs for details.`);
          }
          if (code !== 0) logs.stderr.write(`The action exited with code ${code}.\n`);
          return resultOf(line, logs, maxResultBytes);
        });
      });
    });
  }

  /** Notes a finished activation's group when something is still running in it. */
  private remember(group: number): void {
    if (!groupAlive(group)) return;
    if (this.lingering.size >= LINGERING_PRUNE_AT) for (const known of this.lingering) if (!groupAlive(known)) this.lingering.delete(known);
    this.lingering.add(group);
  }
}

/**
 * Each activation field becomes a `__OW_<NAME>=<value>` variable, which the kernel refuses beyond
 * MAX_ARG_STRLEN (spawn would fail with E2BIG): such a field is the client's to fix, a 413.
 */
function checkFieldSizes(fields: Map<string, string>, env: Record<string, string>): void {
  for (const name of fields.keys()) {
    const variable = `__OW_${name.toUpperCase()}`;
    const value = env[variable];
    if (value === undefined) continue;
    const size = Buffer.byteLength(variable) + 1 + Buffer.byteLength(value);
    if (size > MAX_ARG_STRLEN) throw new ProxyError(413, `The activation field '${name}' is larger than ${MAX_ARG_STRLEN + 1} bytes.`);
  }
}
