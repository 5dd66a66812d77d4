// A process per activation, the original proxy's protocol: `exec` is started with the arguments' JSON as
// argv[1] (when it fits) and on stdin; its stdout lines but the last are logs, the last is the result.
// Each process leads a process group of its own, so that what it started can be killed with it.

import { spawn, type ChildProcess } from 'node:child_process';
import { MESSAGES, ProxyError } from '../errors.ts';
import { verify } from '../install.ts';
import { MAX_LOG_LINE_BYTES, describeProcess, forwardLines, killGroup, resultOf, startFailure, trim, writeLine, type ActionResult, type Activation, type Executor, type ExecutorOptions } from './executor.ts';

// linux/binfmts.h MAX_ARG_STRLEN is 32 pages (131072 bytes) including the terminating NUL.
const MAX_ARG_STRLEN = 131071;

export class ProcessExecutor implements Executor {
  private readonly options: ExecutorOptions;
  /** The processes running now, with how to name them. */
  private readonly running = new Map<ChildProcess, string>();

  constructor(options: ExecutorOptions) {
    this.options = options;
  }

  /** Nothing to get ready: every activation starts `exec` afresh. */
  async start(): Promise<void> {}

  async stop(): Promise<void> {}

  kill(): string[] {
    for (const child of this.running.keys()) killGroup(child);
    return [...this.running.values()];
  }

  run(activation: Activation): Promise<ActionResult> {
    const { binary, actionDir, maxResultBytes } = this.options;
    const logs = this.options.logs();
    const stats = verify(binary);
    if (!stats) return Promise.reject(new ProxyError(502, MESSAGES.noBinary, { cause: new Error(`${binary} is not an executable file`) }));
    // glibc's execvp would run an empty file through /bin/sh and "succeed"; the kernel says ENOEXEC.
    if (stats.size === 0) return Promise.reject(startFailure(new Error(`spawn ${binary} ENOEXEC: exec format error (the file is empty)`), logs));

    return new Promise((resolve, reject) => {
      const { args } = activation;
      const argv = Buffer.byteLength(args) <= MAX_ARG_STRLEN ? [args] : [];
      let child: ChildProcess;
      try {
        child = spawn(binary, argv, { cwd: actionDir, env: activation.env(), stdio: 'pipe', detached: true });
      } catch (error) {
        return reject(startFailure(error, logs));
      }
      // One answer per activation, whichever of its terminal events comes first.
      let settled = false;
      const settle = (outcome: () => ActionResult): void => {
        if (settled) return;
        settled = true;
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

      this.running.set(child, describeProcess(child.pid, activation.fields));
      child.stdin!.on('error', () => {}); // EPIPE: an action need not read its input
      child.stdin!.end(args);
      const lastLine = forwardLines(child.stdout!, logs.stdout, true, maxResultBytes);
      const stderrRest = forwardLines(child.stderr!, logs.stderr, false, MAX_LOG_LINE_BYTES);
      // The activation ends when the process has exited and both pipes are drained.
      child.on('close', (code, signal) =>
        settle(() => {
          const rest = stderrRest.rest();
          if (rest?.length) logs.stderr.write(rest);
          const line = lastLine.rest();
          if (signal !== null) {
            // Whatever it printed last is not a result (an OOM kill must not return a stale one): a log line.
            if (line?.length) writeLine(logs.stdout, trim(line));
            logs.stderr.write(`The action was terminated by signal ${signal}.\n`);
            throw new ProxyError(502, `The action was terminated by signal ${signal}. See logs for details.`);
          }
          if (code !== 0) logs.stderr.write(`The action exited with code ${code}.\n`);
          return resultOf(line, logs, maxResultBytes);
        }),
      );
    });
  }
}
