// Installing an action: the new files are written into a staging folder beside the live ones, moved over
// them (the replaced ones set aside), built and verified; any failure puts the previous files back.
// Nothing of a failed install stays behind, whatever failed (a full disk, no inodes left, permissions):
// a leftover folder would hold the space or inodes every later init needs.

import { spawn } from 'node:child_process';
import { constants, accessSync, chmodSync, closeSync, createReadStream, fchmodSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmdirSync, statSync, unlinkSync, writeFileSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { measure, type Parts } from './timing.ts';
import { DEFAULT_ARCHIVE_LIMITS, formatOf, headOf, liftSingleFolder, writeAll, type ArchiveLimits } from './archive.ts';
import { debug } from './diagnostics.ts';
import { killGroup } from './executors/executor.ts';
import { collectGarbage } from './memory.ts';

/** The folders an install makes in the action directory; any found at the next install are leftovers. */
const STAGING_PREFIX = '.proxy-init-';
const BACKUP_PREFIX = '.proxy-previous-';
const BUILD_PREFIX = '.proxy-build-';

/**
 * The new action's files: a script, or (binary) base64 of a ZIP, a tar(.gz) or a program. The code is
 * text, or plain ASCII (initbody.ts) in the pieces it arrived in: never a second whole copy in memory.
 */
export interface ActionCode {
  code: string | Buffer[];
  binary: boolean;
}

export interface InstallOptions {
  zipLimits: Partial<ArchiveLimits>;
  /**
   * Runs after the new files are in place and before `exec` is verified (a compile step, say); throwing
   * fails the install. Without one, an archive must bring its own `exec`.
   */
  build?: () => Promise<void>;
  /** OW_COMPILER: compiles the new files when `exec` is not a program already. */
  compiler?: Compiler;
  /** OW_EXECUTION_ENV: the new action's `exec.env` must hold this value. */
  executionEnv?: string;
  /**
   * Gets the new action running once its files are in place and verified (the action-loop mode starts a
   * process); throwing fails the install and puts the previous files back.
   */
  activate?: () => Promise<void>;
  /**
   * Called once the new files are in the action directory, before they are built, verified and started:
   * from here until install() settles they are not committed, and must not be run.
   */
  swapped?: () => void;
  /** Where the install's steps add their durations (Server-Timing): extract, build, swap. */
  parts?: Parts;
}

/** `$OW_COMPILER <main> <source dir> <output dir>`, run with the action's environment, its output to the logs. */
export interface Compiler {
  command: string;
  main: string;
  env: Record<string, string>;
  logs: { stdout: Writable; stderr: Writable };
}

/**
 * Puts `action` in place in `actionDir`. Throws what went wrong, with the previous files back in place
 * and no staging or backup folder left.
 */
export async function install(actionDir: string, action: ActionCode, options: InstallOptions): Promise<void> {
  // Synchronous file operations: an init's are few and small (an archive's writes are zip.ts's), and the
  // first use of fs.promises costs a cold proxy milliseconds of module loading.
  mkdirSync(actionDir, { recursive: true });
  removeLeftovers(actionDir);
  const staging = await stage(actionDir, (folder) => writeAction(folder, action, options.zipLimits), { ...options, timed: action.binary });
  const swap = await measure(options.parts, 'swap', () => swapIn(actionDir, staging));
  options.swapped?.();
  try {
    if (options.build) await measure(options.parts, 'build', options.build);
    // Without a build step an archive must bring its own `exec` (else the stub would quietly stay).
    if (action.binary && !options.build && !swap.placed.includes('exec')) throw new Error("the archive has no 'exec' at its root");
    verifyOrThrow(join(actionDir, 'exec'));
    await options.activate?.();
  } catch (error) {
    swapBack(actionDir, swap);
    throw error;
  }
  tidy(swap.backup);
}

/**
 * Writes an action's files into a new staging folder in `workDir` (`write`), compiles them when there is
 * a compiler and `exec` is not a program yet, and checks the result (`exec.env`): the steps an init and
 * `-compile` share. Returns the folder the action is in; nothing is left behind when it throws.
 */
export async function stage(workDir: string, write: (folder: string) => Promise<void>, options: Pick<InstallOptions, 'compiler' | 'executionEnv' | 'parts'> & { timed?: boolean }): Promise<string> {
  let staging = mkdtempSync(join(workDir, STAGING_PREFIX));
  try {
    const written = staging;
    await (options.timed ? measure(options.parts, 'extract', () => write(written)) : write(written));
    if (options.compiler && !isProgram(join(staging, 'exec'))) {
      const sources = staging;
      staging = await measure(options.parts, 'build', () => compile(workDir, sources, options.compiler!));
    }
    makeExecutable(join(staging, 'exec'));
    if (options.executionEnv) checkExecutionEnv(staging, options.executionEnv);
    return staging;
  } catch (error) {
    tidy(staging);
    throw error;
  }
}

async function writeAction(staging: string, action: ActionCode, limits: Partial<ArchiveLimits>): Promise<void> {
  if (!action.binary) return writeFileSync(join(staging, 'exec'), typeof action.code === 'string' ? action.code : scriptOf(action.code), { mode: 0o755 });
  // The decoded code is a file beside the staging folder (named like it, so a crash's leftover is found):
  // on disk once, read back by format, never whole in memory.
  const decoded = `${staging}.code`;
  const fd = openSync(decoded, 'w+', 0o700);
  try {
    const large = typeof action.code !== 'string' && action.code.reduce((total, piece) => total + piece.length, 0) >= LARGE_CODE;
    decodeBase64(action.code, fd);
    if (large) await collectGarbage();
    await unpack(fd, decoded, staging, { ...DEFAULT_ARCHIVE_LIMITS, ...limits });
  } finally {
    closeSync(fd);
    tidy(decoded);
  }
}

/**
 * Unpacks decoded code by what its bytes are: a ZIP, a gzip'd or plain tar (with one top-level folder
 * holding `exec` as the root), or anything else as `exec` itself.
 */
export async function unpack(fd: number, path: string, staging: string, limits: ArchiveLimits): Promise<void> {
  const head = headOf(fd);
  if (head.length === 0) throw new Error('init code is empty (binary: true needs base64 of a ZIP, a tar(.gz) or a program)');
  const format = formatOf(head);
  debug(`init: the code is ${format === 'program' ? 'a program (exec itself)' : `a ${format} archive`}`);
  if (format === 'program') {
    fchmodSync(fd, 0o755);
    renameSync(path, join(staging, 'exec'));
    return;
  }
  if (format === 'zip') {
    const { extract, fileSource } = await import('./zip.ts');
    await extract(fileSource(fd), staging, limits);
  } else {
    const { extractTar, PIECE } = await import('./tar.ts');
    // A stream of its own: a stream closes the descriptor it reads when it is destroyed.
    await extractTar(createReadStream(path, { highWaterMark: PIECE }), format === 'gzip', staging, limits);
  }
  liftSingleFolder(staging);
}

const BASE64_ERROR = 'init code is not valid base64 (binary: true needs base64 of a ZIP, a tar(.gz) or a program)';

/**
 * Decodes base64 code into `fd`, piece by piece, each piece let go once written; text with anything but
 * base64 in it is refused.
 */
function decodeBase64(code: string | Buffer[], fd: number): void {
  // Anything past ASCII can't be base64: refused here, while it is still text.
  if (typeof code === 'string' && !/^[\x00-\x7f]*$/.test(code)) throw new Error(BASE64_ERROR);
  const pieces = typeof code === 'string' ? [/\s/.test(code) ? code.replace(/\s+/g, '') : code] : code;
  // Each group of 4 characters decodes on its own: what is left of a piece goes with the next. The
  // bytes go through one scratch buffer: decoding leaves no garbage the size of the code behind.
  let scratch = EMPTY;
  let carry = '';
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i]!;
    const text = carry + (typeof piece === 'string' ? piece : piece.toString('latin1'));
    pieces[i] = EMPTY;
    const last = i === pieces.length - 1;
    const whole = last ? text.length : text.length - (text.length % 4);
    carry = text.slice(whole);
    const groups = text.slice(0, whole);
    if (groups === '') continue;
    if (scratch.length < groups.length) scratch = Buffer.allocUnsafe(Math.max(groups.length, 65536));
    const decoded = scratch.write(groups, 'base64');
    // Node's decoder skips what is not base64 and stops at '=': either way fewer bytes come out than the
    // characters promise, so the count is the check (no second pass over the text).
    const padding = last && groups.endsWith('==') ? 2 : last && groups.endsWith('=') ? 1 : 0;
    if (decoded !== Math.floor((groups.length * 3) / 4) - padding) throw new Error(BASE64_ERROR);
    writeAll(fd, scratch.subarray(0, decoded));
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Code from this size on is followed by a full garbage collection. After a large code is decoded, the
 * request body's chunks (up to 128 MiB) are garbage, and extracting the archive makes as much again of
 * short-lived buffers: left to V8's own pace, the two pile up (measured: the 63 MiB init of a 47 MiB
 * .tar.gz peaked at +95-127 MiB on Node 24, against +80 MiB with this).
 */
const LARGE_CODE = 8 * 1024 * 1024;

/** A script that arrived as plain ASCII pieces (initbody.ts): JSON forbids control characters in it. */
function scriptOf(pieces: Buffer[]): Buffer {
  const script = Buffer.concat(pieces);
  if (/[\x00-\x1f]/.test(script.toString('latin1'))) throw new Error('init code is not a valid JSON string: it has a raw control character');
  return script;
}

/** Whether `path` is a program the kernel runs as it is: an ELF binary or a `#!` script. */
export function isProgram(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false; // no exec at all: sources to compile
  }
  try {
    const head = Buffer.alloc(4);
    const length = readSync(fd, head, 0, 4, 0);
    return (length >= 2 && head[0] === 0x23 && head[1] === 0x21) || (length === 4 && head.toString('latin1') === '\x7fELF');
  } finally {
    closeSync(fd);
  }
}

/**
 * Runs the compiler on the staged sources and returns the folder it built the action in (a new staging
 * folder); the sources are gone either way. The compiler's folders are laid out as Go's proxy lays them
 * out, `src` and `bin` side by side in a fresh folder: OpenWhisk's Go compiler sets GOPATH to their
 * parent. It must exit 0 and leave an `exec`; output of its own is logs, not failure (warnings are not
 * errors).
 */
async function compile(actionDir: string, staging: string, compiler: Compiler): Promise<string> {
  const folder = mkdtempSync(join(actionDir, BUILD_PREFIX));
  const sources = join(folder, 'src');
  const output = join(folder, 'bin');
  try {
    renameSync(staging, sources);
    mkdirSync(output);
    debug(`init: ${compiler.command} ${compiler.main} ${sources} ${output}`);
    // In a process group of its own, as an action process: what it starts (a compiler's own workers, a
    // build daemon) is ended with it.
    const child = spawn(compiler.command, [compiler.main, sources, output], { cwd: sources, env: compiler.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child.stdout.pipe(compiler.logs.stdout, { end: false });
    child.stderr.pipe(compiler.logs.stderr, { end: false });
    const group = child.pid;
    if (group !== undefined) compilers.set(group, compiler.command);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', reject);
      // Once it has exited, what it left running goes too: it would hold the output pipes (and the
      // init) open for as long as it runs.
      child.on('exit', () => group !== undefined && killGroup(group));
      child.on('close', (exitCode, exitSignal) => resolve([exitCode, exitSignal]));
    }).finally(() => group !== undefined && compilers.delete(group));
    const how = signal !== null ? `was terminated by signal ${signal}` : `exited with code ${code}`;
    if (code !== 0) throw new Error(`the compiler (OW_COMPILER=${compiler.command}) ${how}`);
    if (!lstatSync(join(output, 'exec'), { throwIfNoEntry: false })) throw new Error(`the compiler (OW_COMPILER=${compiler.command}) left no exec in its output folder`);
    // Out of the build folder, under a staging name: what the next steps (and a crash's cleanup) expect.
    const built = `${staging}-built`;
    renameSync(output, built);
    return built;
  } finally {
    tidy(folder);
    tidy(staging);
  }
}

/** The compilers running now, by process group: a shutdown ends them as it ends activations. */
const compilers = new Map<number, string>();

/** Kills every running compiler's process group (its build then fails); returns a line naming each. */
export function killCompilers(): string[] {
  const killed = [...compilers].map(([group, command]) => `compiler ${command} (process ${group})`);
  for (const group of compilers.keys()) killGroup(group);
  return killed;
}

/** The runtime's guard against actions built for another runtime version (OW_EXECUTION_ENV). */
function checkExecutionEnv(dir: string, expected: string): void {
  let found: string;
  try {
    found = readFileSync(join(dir, 'exec.env'), 'utf8').trim();
  } catch {
    throw new Error(`the action has no exec.env; OW_EXECUTION_ENV is ${JSON.stringify(expected.trim())}`);
  }
  if (found !== expected.trim()) throw new Error(`the action's exec.env is ${JSON.stringify(found)}; OW_EXECUTION_ENV is ${JSON.stringify(expected.trim())}`);
}

/** The `exec` file's stats when it is a regular file (a link to one is fine) and executable. */
export function verify(binary: string): Stats | undefined {
  try {
    const stats = statSync(binary);
    if (!stats.isFile()) return undefined;
    accessSync(binary, constants.X_OK);
    return stats;
  } catch {
    return undefined;
  }
}

export function verifyOrThrow(binary: string): void {
  if (!verify(binary)) throw new Error(`${binary} is not an executable file`);
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
 * Moves each top-level entry of `staging` into the action directory, the old one of that name aside.
 * Synchronous, so no activation can start in the middle of the swap. Staging is gone afterwards, whether
 * the swap worked or not.
 */
function swapIn(actionDir: string, staging: string): Swap {
  const swap: Swap = { backup: '', placed: [], replaced: [] };
  try {
    swap.backup = mkdtempSync(join(actionDir, BACKUP_PREFIX));
    for (const name of readdirSync(staging)) {
      const live = join(actionDir, name);
      if (lstatSync(live, { throwIfNoEntry: false })) {
        renameSync(live, join(swap.backup, name));
        swap.replaced.push(name);
      }
      renameSync(join(staging, name), live);
      swap.placed.push(name);
    }
  } catch (error) {
    swapBack(actionDir, swap);
    throw error;
  } finally {
    tidy(staging);
  }
  return swap;
}

/** Puts the replaced entries back. Renames need no new inodes or space, so this works on a full disk. */
function swapBack(actionDir: string, swap: Swap): void {
  for (const name of swap.placed) tidy(join(actionDir, name));
  for (const name of swap.replaced) renameSync(join(swap.backup, name), join(actionDir, name));
  if (swap.backup) tidy(swap.backup);
}

/** Removes staging and backup folders an earlier install could not (the proxy was killed mid-init). */
function removeLeftovers(actionDir: string): void {
  for (const name of readdirSync(actionDir)) {
    if (name.startsWith(STAGING_PREFIX) || name.startsWith(BACKUP_PREFIX) || name.startsWith(BUILD_PREFIX)) tidy(join(actionDir, name));
  }
}

/**
 * Removes a file or a folder tree while cleaning up; a failure is logged, not thrown, so it cannot hide
 * the error that made the cleanup necessary.
 */
function tidy(path: string): void {
  try {
    remove(path);
  } catch (error) {
    process.stderr.write(`Could not remove ${path}: ${(error as Error).message}\n`);
  }
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

