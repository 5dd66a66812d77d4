// What every archive format shares at init (zip.ts, tar.ts): the rules an entry's name must pass, the
// limits, and the extraction itself, which writes an archive's entries into an empty folder so that no
// entry is ever written outside it or through a link, whatever order the entries come in.

import { chmodSync, closeSync, fchmodSync, linkSync, lstatSync, mkdirSync, openSync, readSync, readdirSync, renameSync, rmdirSync, symlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { debug } from './diagnostics.ts';

export type ArchiveErrorCode = 'format' | 'checksum' | 'unsupported' | 'insecure' | 'too-large';

/** What is wrong with an archive; its message starts with the format (`zip: `, `tar: `, `gzip: `). */
export class ArchiveError extends Error {
  readonly code: ArchiveErrorCode;
  constructor(format: string, code: ArchiveErrorCode, message: string) {
    super(`${format}: ${message}`);
    this.name = 'ArchiveError';
    this.code = code;
  }
}

export interface ArchiveLimits {
  /** Most entries an archive may hold (PROXY_ZIP_MAX_ENTRIES). */
  maxEntries: number;
  /** Most bytes all entries may hold, together, once inflated (PROXY_ZIP_MAX_BYTES). */
  maxBytes: number;
}

export const DEFAULT_ARCHIVE_LIMITS: ArchiveLimits = {
  maxEntries: 100_000,
  maxBytes: 1024 * 1024 * 1024 - 1, // just under 1 GiB: a container's disk is not ours to fill
};

/** Linux PATH_MAX: no link target (or name) can be longer and still be usable. */
export const PATH_MAX = 4096;

/** How much extraction writes between two turns of the event loop, so running activations still flow. */
const YIELD_EVERY_BYTES = 8 * 1024 * 1024;

export type EntryKind = 'file' | 'directory' | 'symlink' | 'hardlink';

/**
 * Why an entry name can't be extracted, or undefined when it can. Both `/` and `\` count as separators
 * (PowerShell's Compress-Archive writes `\`).
 */
export function validateEntryName(name: string): string | undefined {
  if (name === '') return 'has an empty name';
  if (name.includes('\0')) return 'has a NUL byte in its name';
  if (name.length > PATH_MAX) return 'has a name longer than any path';
  if (/^([/\\]|[A-Za-z]:)/.test(name)) return 'is an absolute path';
  if (name.split(/[/\\]/).includes('..')) return 'escapes the action directory';
  return undefined;
}

/** The same scrutiny for a link's target: links may point anywhere (virtualenvs point at /usr/bin), but must be usable. */
export function validateLinkTarget(target: Buffer): string | undefined {
  if (target.length === 0) return 'is a link with an empty target';
  if (target.includes(0)) return 'is a link whose target has a NUL byte';
  if (target.length > PATH_MAX) return `is a link with a ${target.length}-byte target, longer than any path`;
  return undefined;
}

/** The relative path a name stands for: `/` separated, no `.` or empty segments, no trailing `/`. */
export function normalize(name: string): string {
  return name.split(/[/\\]/).filter((segment) => segment !== '' && segment !== '.').join('/');
}

export function printable(name: string): string {
  return name.replaceAll('\0', '\\0');
}

interface Planned {
  rawName: string;
  kind: EntryKind;
}

/**
 * An archive being written into `dir` (an empty folder). Each entry is planned first (`plan`), which
 * checks its name, the limits and the tree so far: no duplicates, nothing inside a file or a link. Folders
 * and files are written as they come; links (symbolic and hard) wait for `finish`, after every other
 * entry, so no entry is ever written through one. On error the caller removes `dir`.
 */
export class Extraction {
  private readonly dir: string;
  private readonly limits: ArchiveLimits;
  private readonly format: string;
  private readonly planned = new Map<string, Planned>();
  /** Folders that entries were placed in, named by an entry or not. */
  private readonly parents = new Set<string>();
  /** Every folder made, with the mode it ends up with (set last: a 0555 folder is common). */
  private readonly folders = new Map<string, number>();
  private readonly symlinks: Array<{ path: string; target: string }> = [];
  private readonly hardlinks: Array<{ path: string; target: string }> = [];
  private bytes = 0;
  private sinceYield = 0;

  constructor(dir: string, limits: ArchiveLimits, format: string) {
    this.dir = dir;
    this.limits = limits;
    this.format = format;
  }

  error(code: ArchiveErrorCode, message: string): ArchiveError {
    return new ArchiveError(this.format, code, message);
  }

  /** Checks one more entry against the rules and the tree so far; returns its path ('' for the root). */
  plan(rawName: string, kind: EntryKind, size: number): string {
    const reason = validateEntryName(rawName);
    if (reason) throw this.error('insecure', `entry '${printable(rawName)}' ${reason}`);
    const path = normalize(rawName);
    if (path === '') {
      if (kind !== 'directory') throw this.error('insecure', `entry '${rawName}' names the action directory itself`);
      return path;
    }
    if (this.planned.size + 1 > this.limits.maxEntries) {
      throw this.error('too-large', `the archive holds more than the limit of ${this.limits.maxEntries} entries`);
    }
    this.bytes += size;
    if (this.bytes > this.limits.maxBytes) {
      throw this.error('too-large', `the archive inflates to more than the limit of ${this.limits.maxBytes} bytes (at '${rawName}', which declares ${size})`);
    }
    const previous = this.planned.get(path);
    if (previous) throw this.error('insecure', `entry '${rawName}' is a duplicate of '${previous.rawName}'`);
    if (kind !== 'directory' && this.parents.has(path)) {
      const inside = [...this.planned.entries()].find(([other]) => other.startsWith(`${path}/`))!;
      throw this.placedInside(inside[1].rawName, rawName, kind);
    }
    for (let slash = path.indexOf('/'); slash !== -1; slash = path.indexOf('/', slash + 1)) {
      const parent = path.slice(0, slash);
      const holder = this.planned.get(parent);
      if (holder && holder.kind !== 'directory') throw this.placedInside(rawName, holder.rawName, holder.kind);
      this.parents.add(parent);
    }
    this.planned.set(path, { rawName, kind });
    return path;
  }

  private placedInside(rawName: string, holder: string, kind: EntryKind): ArchiveError {
    if (kind === 'symlink') return this.error('insecure', `entry '${rawName}' passes through the link '${holder}'`);
    return this.error('format', `entry '${rawName}' is inside '${holder}', which is a file`);
  }

  /** A folder entry (and the folders above it). */
  folder(path: string, mode: number): void {
    if (path === '') return;
    this.makeParents(path);
    if (!this.folders.has(path)) mkdirSync(join(this.dir, path));
    this.folders.set(path, mode);
  }

  /** Opens a new regular file for an entry's contents, with exact permission bits whatever the umask. */
  openFile(path: string, mode: number): number {
    this.makeParents(path);
    const fd = openSync(join(this.dir, path), 'wx', mode);
    try {
      fchmodSync(fd, mode);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return fd;
  }

  /** Writes a whole file entry. */
  async file(path: string, mode: number, contents: Buffer): Promise<void> {
    const fd = this.openFile(path, mode);
    try {
      writeAll(fd, contents);
    } finally {
      closeSync(fd);
    }
    await this.wrote(contents.length);
  }

  /** Counts bytes written, and every few megabytes gives the event loop a turn. */
  async wrote(length: number): Promise<void> {
    this.sinceYield += length + 4096;
    if (this.sinceYield > YIELD_EVERY_BYTES) {
      this.sinceYield = 0;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** A symbolic link, made as it is once everything else is written. */
  symlink(path: string, rawName: string, target: Buffer): void {
    const reason = validateLinkTarget(target);
    if (reason) throw this.error('insecure', `entry '${rawName}' ${reason}`);
    this.symlinks.push({ path, target: target.toString('utf8') });
  }

  /** A hard link to an earlier regular file of the same archive. */
  hardlink(path: string, rawName: string, targetName: string): void {
    const reason = validateEntryName(targetName);
    const target = normalize(targetName);
    if (reason || this.planned.get(target)?.kind !== 'file') {
      throw this.error('insecure', `entry '${rawName}' is a hard link to '${printable(targetName)}', which is not an earlier file of the archive`);
    }
    this.hardlinks.push({ path, target });
  }

  /** Makes the links, then gives every folder its own mode, deepest first. */
  finish(): void {
    for (const { path, target } of this.hardlinks) {
      this.makeParents(path);
      linkSync(join(this.dir, target), join(this.dir, path));
    }
    for (const { path, target } of this.symlinks) {
      this.makeParents(path);
      symlinkSync(target, join(this.dir, path));
    }
    // A child's path is always longer than its parent's.
    for (const [folder, mode] of [...this.folders].sort(([a], [b]) => b.length - a.length)) chmodSync(join(this.dir, folder), mode);
  }

  private makeParents(path: string): void {
    for (let slash = path.indexOf('/'); slash !== -1; slash = path.indexOf('/', slash + 1)) {
      const parent = path.slice(0, slash);
      if (this.folders.has(parent)) continue;
      mkdirSync(join(this.dir, parent));
      this.folders.set(parent, 0o755);
    }
  }
}

export function writeAll(fd: number, contents: Buffer): void {
  for (let written = 0; written < contents.length; ) written += writeSync(fd, contents, written);
}

/** What the first bytes of an action's decoded code say it is. */
export type CodeFormat = 'zip' | 'gzip' | 'tar' | 'program';

export function formatOf(head: Buffer): CodeFormat {
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && ((head[2] === 3 && head[3] === 4) || (head[2] === 5 && head[3] === 6))) return 'zip';
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') return 'tar';
  return 'program';
}

/** The first bytes of a file, enough to tell its format. */
export function headOf(fd: number): Buffer {
  const head = Buffer.alloc(512);
  return head.subarray(0, readSync(fd, head, 0, head.length, 0));
}

/**
 * When an extracted archive's only top-level entry is a folder holding `exec` (a folder zipped instead of
 * its contents, `npm pack`'s `package/`), that folder becomes the root.
 */
export function liftSingleFolder(dir: string): void {
  const names = readdirSync(dir);
  if (names.length !== 1 || names[0] === 'exec') return;
  const only = join(dir, names[0]!);
  if (!lstatSync(only).isDirectory() || !lstatSync(join(only, 'exec'), { throwIfNoEntry: false })) return;
  debug(`init: the archive's one top-level folder '${names[0]}' holds exec: it is the root`);
  const lifted = `${dir}-root`;
  renameSync(only, lifted);
  rmdirSync(dir);
  renameSync(lifted, dir);
}
