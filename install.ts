// Installing an action: the new files are written into a staging folder beside the live ones, moved over
// them (the replaced ones set aside), built and verified; any failure puts the previous files back.
// Nothing of a failed install stays behind, whatever failed (a full disk, no inodes left, permissions):
// a leftover folder would hold the space or inodes every later init needs.

import { constants, accessSync, chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmdirSync, statSync, unlinkSync, writeFileSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import type { ZipLimits } from './zip.ts';

/** The folders an install makes in the action directory; any found at the next install are leftovers. */
const STAGING_PREFIX = '.proxy-init-';
const BACKUP_PREFIX = '.proxy-previous-';

/** The new action's files: a script, or a ZIP archive (base64). */
export interface ActionCode {
  code: string;
  binary: boolean;
}

export interface InstallOptions {
  zipLimits: Partial<ZipLimits>;
  /**
   * Runs after the new files are in place and before `exec` is verified (a compile step, say); throwing
   * fails the install. `hasBuildStep` tells whether there is one: without it an archive must bring `exec`.
   */
  build?: () => Promise<void>;
  hasBuildStep: boolean;
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
  const staging = mkdtempSync(join(actionDir, STAGING_PREFIX));
  try {
    await writeAction(staging, action, options.zipLimits);
    makeExecutable(join(staging, 'exec'));
  } catch (error) {
    tidy(staging);
    throw error;
  }
  const swap = swapIn(actionDir, staging);
  try {
    await options.build?.();
    // Without a build step an archive must bring its own `exec` (else the stub would quietly stay).
    if (action.binary && !options.hasBuildStep && !swap.placed.includes('exec')) throw new Error("the archive has no 'exec' at its root");
    verifyOrThrow(join(actionDir, 'exec'));
  } catch (error) {
    swapBack(actionDir, swap);
    throw error;
  }
  tidy(swap.backup);
}

async function writeAction(staging: string, action: ActionCode, zipLimits: Partial<ZipLimits>): Promise<void> {
  if (!action.binary) return writeFileSync(join(staging, 'exec'), action.code, { mode: 0o755 });
  const { extract, DEFAULT_ZIP_LIMITS } = await import('./zip.ts');
  await extract(Buffer.from(action.code, 'base64'), staging, { ...DEFAULT_ZIP_LIMITS, ...zipLimits }).catch((error: unknown) => {
    // Buffer.from skips what isn't base64, so text that never was an archive fails as a bad archive.
    if (!BASE64.test(action.code)) throw new Error('init code is not valid base64 (binary: true needs a base64 ZIP archive)', { cause: error });
    throw error;
  });
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
    if (name.startsWith(STAGING_PREFIX) || name.startsWith(BACKUP_PREFIX)) tidy(join(actionDir, name));
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

// Base64 as encoders write it, wrapped lines (`base64` wraps at 76) included.
const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;
