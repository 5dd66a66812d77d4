// `-compile <main> [-env '<json object>']`: an offline build, as the Go runtimes' images do it
// (`zip -r - * | docker run -i IMAGE -compile main > main.zip`). The action arrives on stdin as an init
// would carry it (a ZIP, a tar(.gz), or a single file), goes through the init's own pipeline (staging,
// OW_COMPILER when `exec` is not a program yet, the exec.env check) in a temporary folder, and leaves as
// a deterministic ZIP on stdout; an /init of that ZIP skips compilation because `exec` is a program.
// stderr has the compiler's output and, on failure, the reason.

import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { isatty } from 'node:tty';
import { DEFAULT_ARCHIVE_LIMITS, writeAll } from './archive.ts';
import { isProgram, killCompilers, stage, unpack } from './install.ts';
import { environment } from './runner.ts';
import { membersOf } from './json.ts';
import { writeZip } from './zipwriter.ts';

const USAGE = 'usage: proxy -compile <main> [-env \'<json object>\'] < action > action.zip';

/** The command line's options: `-name value`, `--name value` or `--name=value`. */
function options(args: string[]): Map<string, string> {
  const found = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const match = /^--?(compile|env)(?:=(.*))?$/s.exec(args[i]!);
    if (!match) throw new Error(`unknown argument '${args[i]}'\n${USAGE}`);
    const value = match[2] ?? args[++i];
    if (value === undefined) throw new Error(`-${match[1]} needs a value\n${USAGE}`);
    found.set(match[1]!, value);
  }
  return found;
}

/** Blocks for 5 ms: the command does its I/O synchronously, and a non-blocking pipe may not be ready. */
function pause(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
}

/** Copies stdin into `fd`, at most `limit` bytes of it. */
function readStdin(fd: number, limit: number): void {
  const piece = Buffer.allocUnsafe(1024 * 1024);
  let total = 0;
  for (;;) {
    let got: number;
    try {
      got = readSync(0, piece, 0, piece.length, null);
    } catch (error) {
      // A non-blocking pipe with nothing in it yet: wait a little rather than spin.
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') {
        pause();
        continue;
      }
      throw error;
    }
    if (got === 0) return;
    total += got;
    if (total > limit) throw new Error(`the action on stdin is larger than the limit of ${limit} bytes (PROXY_ZIP_MAX_BYTES)`);
    writeAll(fd, piece.subarray(0, got));
  }
}


/** Writes to stdout, waiting out a non-blocking pipe that is full. */
function writeStdout(bytes: Buffer): void {
  for (let written = 0; written < bytes.length; ) {
    try {
      written += writeSync(1, bytes, written);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
      pause();
    }
  }
}

/** Runs `-compile`; resolves with the exit code (0 built, 1 failed, 2 a usage error or a terminal as stdout). */
export async function compileCommand(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let given: Map<string, string>;
  try {
    given = options(args);
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    return 2;
  }
  const main = given.get('compile')!;
  if (isatty(1)) {
    process.stderr.write(`-compile writes a ZIP archive to stdout, which is a terminal: redirect it, e.g. -compile ${main} < action.zip > ${main}.zip\n`);
    return 2;
  }
  const work = mkdtempSync(join(env.TMPDIR || tmpdir(), 'proxy-compile-'));
  // Stopped (Ctrl-C, SIGTERM): the compiler, in a process group of its own, is killed and the work
  // folder removed, as the signal would have done it all without a compiler running.
  const interrupted = (signal: NodeJS.Signals): void => {
    killCompilers();
    rmSync(work, { recursive: true, force: true });
    process.exit(128 + osConstants.signals[signal]);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    const compilerEnv: Record<string, string> = {};
    for (const [key, value] of Object.entries(env)) if (value !== undefined) compilerEnv[key] = value;
    const extra = given.get('env');
    if (extra !== undefined) {
      if (!extra.trimStart().startsWith('{')) throw new Error('-env must be a JSON object');
      const fields = new Map([...membersOf(extra)].map(([name, member]) => [name, member.value]));
      Object.assign(compilerEnv, environment(fields, '', '-env'));
    }
    const limits = {
      maxBytes: Number(env.PROXY_ZIP_MAX_BYTES) || DEFAULT_ARCHIVE_LIMITS.maxBytes,
      maxEntries: Number(env.PROXY_ZIP_MAX_ENTRIES) || DEFAULT_ARCHIVE_LIMITS.maxEntries,
    };
    const input = join(work, 'input');
    const fd = openSync(input, 'w+', 0o700);
    try {
      readStdin(fd, limits.maxBytes);
      const compiler = env.OW_COMPILER ? { command: env.OW_COMPILER, main, env: compilerEnv, logs: { stdout: process.stderr, stderr: process.stderr } } : undefined;
      const built = await stage(work, (staging) => unpack(fd, input, staging, limits), { compiler, executionEnv: env.OW_EXECUTION_ENV || undefined });
      if (!isProgram(join(built, 'exec'))) throw new Error(compiler ? 'the compiler left an exec that is not a program' : "the action has no exec that is a program (an ELF binary or a '#!' script), and OW_COMPILER is not set");
      // Into a file first: a failure leaves nothing on stdout.
      const archive = join(work, 'archive.zip');
      const out = openSync(archive, 'w+', 0o600);
      try {
        writeZip(built, (bytes) => writeAll(out, bytes));
        const size = fstatSync(out).size;
        const piece = Buffer.allocUnsafe(1024 * 1024);
        for (let at = 0; at < size; ) {
          const got = readSync(out, piece, 0, piece.length, at);
          writeStdout(piece.subarray(0, got));
          at += got;
        }
      } finally {
        closeSync(out);
      }
    } finally {
      closeSync(fd);
    }
    return 0;
  } catch (error) {
    process.stderr.write(`-compile failed: ${(error as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    rmSync(work, { recursive: true, force: true });
  }
}
