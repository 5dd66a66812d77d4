// A ZIP archive reader and extractor, written for binary action inits.
//
// It walks an archive the way the format is laid out (APPNOTE.TXT, PKWARE): find the end of central
// directory record at the back, follow the ZIP64 locator when the record's fields are saturated, read
// every central directory header, and only then touch the local headers to reach each entry's data.
// Sizes, modes and names come from the central directory; local headers are read just for the
// lengths of their own name and extra fields, which tools are free to make differ.

import { isUtf8 } from 'node:buffer';
import { chmodSync, closeSync, fchmodSync, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, inflateRawSync } from 'node:zlib';

const END_SIGNATURE = 0x06054b50;
const END_LEN = 22; // + comment
const MAX_COMMENT_LEN = 0xffff;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_LOCATOR_LEN = 20;
const ZIP64_END_SIGNATURE = 0x06064b50;
const ZIP64_END_LEN = 56; // + extensible data
const CENTRAL_SIGNATURE = 0x02014b50;
const CENTRAL_HEADER_LEN = 46; // + name + extra + comment
const LOCAL_SIGNATURE = 0x04034b50;
const LOCAL_HEADER_LEN = 30; // + name + extra

const ZIP64_EXTRA_ID = 0x0001;
const UNICODE_PATH_EXTRA_ID = 0x7075; // Info-ZIP: a UTF-8 name beside a legacy one

const FLAG_ENCRYPTED = 0x0001;
const FLAG_UTF8 = 0x0800;
const METHOD_STORED = 0;
const METHOD_DEFLATED = 8;

const CREATOR_UNIX = 3; // "version made by" high byte
const CREATOR_OSX = 19;
const MSDOS_DIRECTORY = 0x10; // external attributes, low byte
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

const SATURATED_16 = 0xffff; // a field that says "see the ZIP64 record"
const SATURATED_32 = 0xffffffff;

// Linux PATH_MAX: no link target (or name) can be longer and still be usable.
const PATH_MAX = 4096;

// How much extraction writes between two turns of the event loop.
const YIELD_EVERY_BYTES = 8 * 1024 * 1024;

export type ZipErrorCode = 'format' | 'checksum' | 'unsupported' | 'insecure' | 'too-large';

export class ZipError extends Error {
  readonly code: ZipErrorCode;
  constructor(code: ZipErrorCode, message: string) {
    super(`zip: ${message}`);
    this.name = 'ZipError';
    this.code = code;
  }
}

export interface ZipLimits {
  /** Most entries an archive may hold. */
  maxEntries: number;
  /** Most bytes all entries may inflate to, together. */
  maxBytes: number;
}

export const DEFAULT_ZIP_LIMITS: ZipLimits = {
  maxEntries: 100_000,
  maxBytes: 1024 * 1024 * 1024 - 1, // just under 1 GiB: a container's disk is not ours to fill
};

export type EntryKind = 'file' | 'directory' | 'symlink';

export interface ZipEntry {
  /** The name as the archive spells it, for messages. */
  rawName: string;
  /** The normalized relative path: `/` separated, no `.` or empty segments, no trailing `/`. */
  path: string;
  kind: EntryKind;
  /** Permission bits (0777 part) to give the extracted file or folder. */
  mode: number;
  method: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

/** A bounds-checked little-endian reader over part of the archive. */
class Cursor {
  readonly buf: Buffer;
  pos: number;
  readonly end: number;
  constructor(buf: Buffer, pos: number, end = buf.length) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }
  need(n: number, what: string): void {
    if (this.pos < 0 || this.pos + n > this.end) {
      throw new ZipError('format', `truncated archive: ${what} runs past the end of its record`);
    }
  }
  u8(): number {
    this.need(1, 'a field');
    return this.buf[this.pos++]!;
  }
  u16(): number {
    this.need(2, 'a field');
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4, 'a field');
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    this.need(8, 'a field');
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ZipError('format', `a 64-bit field holds ${v}, past any real archive`);
    return Number(v);
  }
  skip(n: number, what: string): void {
    this.need(n, what);
    this.pos += n;
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

interface Directory {
  entries: number;
  size: number;
  offset: number;
  /** Where the central directory must end: the ZIP64 end record, or the end record. */
  end: number;
}

/** Finds the end of central directory record, scanning back over an archive comment of up to 64 KiB. */
function findEndOfCentralDirectory(archive: Buffer): number {
  const signature = Buffer.alloc(4);
  signature.writeUInt32LE(END_SIGNATURE);
  const stop = Math.max(0, archive.length - END_LEN - MAX_COMMENT_LEN);
  let at = archive.length - END_LEN;
  while (at >= stop) {
    at = archive.lastIndexOf(signature, at);
    if (at < stop) break;
    const commentLen = archive.readUInt16LE(at + 20);
    if (at + END_LEN + commentLen <= archive.length) return at;
    at -= 1;
  }
  throw new ZipError('format', 'not a zip archive (no end of central directory record)');
}

function readEndOfCentralDirectory(archive: Buffer): Directory {
  const endOffset = findEndOfCentralDirectory(archive);
  const c = new Cursor(archive, endOffset);
  c.skip(4, 'the end record signature');
  const disk = c.u16();
  const directoryDisk = c.u16();
  c.skip(2, 'the entry count on this disk');
  const entries = c.u16();
  const size = c.u32();
  const offset = c.u32();
  if (entries === SATURATED_16 || size === SATURATED_32 || offset === SATURATED_32) {
    if (hasZip64Locator(archive, endOffset)) return readZip64End(archive, endOffset);
    // Info-ZIP's `zip -fz` writing to a pipe saturates the offset without writing the ZIP64 records.
    // Where the count and size are real, the directory ends where the end record starts (as unzip reads it).
    if (offset === SATURATED_32 && entries !== SATURATED_16 && size !== SATURATED_32 && size <= endOffset) {
      if (disk !== 0 || directoryDisk !== 0) throw new ZipError('unsupported', 'multi-disk (spanned) archives are not supported');
      return { entries, size, offset: endOffset - size, end: endOffset };
    }
    throw new ZipError('format', 'the end record needs a ZIP64 locator, and there is none');
  }
  if (disk !== 0 || directoryDisk !== 0) throw new ZipError('unsupported', 'multi-disk (spanned) archives are not supported');
  return { entries, size, offset, end: endOffset };
}

/** Whether a ZIP64 locator sits right before the end record. */
function hasZip64Locator(archive: Buffer, endOffset: number): boolean {
  return endOffset >= ZIP64_LOCATOR_LEN && archive.readUInt32LE(endOffset - ZIP64_LOCATOR_LEN) === ZIP64_LOCATOR_SIGNATURE;
}

/** The ZIP64 locator sits right before the end record and points at the ZIP64 end record. */
function readZip64End(archive: Buffer, endOffset: number): Directory {
  const locator = new Cursor(archive, endOffset - ZIP64_LOCATOR_LEN, endOffset);
  locator.need(ZIP64_LOCATOR_LEN, 'the ZIP64 locator');
  locator.skip(4, 'the locator signature');
  locator.skip(4, 'the disk with the ZIP64 end record');
  const recordOffset = locator.u64();
  const record = new Cursor(archive, recordOffset, endOffset - ZIP64_LOCATOR_LEN);
  record.need(ZIP64_END_LEN, 'the ZIP64 end record');
  if (record.u32() !== ZIP64_END_SIGNATURE) throw new ZipError('format', `no ZIP64 end record at offset ${recordOffset}`);
  record.skip(8, 'the record size');
  record.skip(4, 'the versions made by and needed');
  const disk = record.u32();
  const directoryDisk = record.u32();
  if (disk !== 0 || directoryDisk !== 0) throw new ZipError('unsupported', 'multi-disk (spanned) archives are not supported');
  record.skip(8, 'the entry count on this disk');
  const entries = record.u64();
  const size = record.u64();
  const offset = record.u64();
  return { entries, size, offset, end: recordOffset };
}

/**
 * Reads every central directory header and checks the whole archive's plan before anything is written:
 * names, kinds, duplicates, paths through links, limits. Throws a ZipError naming the entry.
 */
export interface CentralDirectory {
  /** Where the central directory starts: no entry's data may reach it. */
  offset: number;
  entries: ZipEntry[];
}

export function readCentralDirectory(archive: Buffer, limits: ZipLimits = DEFAULT_ZIP_LIMITS): CentralDirectory {
  const directory = readEndOfCentralDirectory(archive);
  if (directory.entries > limits.maxEntries) {
    throw new ZipError('too-large', `the archive holds ${directory.entries} entries, over the limit of ${limits.maxEntries}`);
  }
  if (directory.offset + directory.size > directory.end) {
    throw new ZipError('format', `truncated archive: the central directory (${directory.size} bytes at offset ${directory.offset}) runs past its end record at ${directory.end}`);
  }
  // The count is the archive's claim; the loop is bounded by the directory's bytes as well.
  if (directory.entries * CENTRAL_HEADER_LEN > directory.size) {
    throw new ZipError('format', `the central directory claims ${directory.entries} entries but has only ${directory.size} bytes`);
  }
  const c = new Cursor(archive, directory.offset, directory.offset + directory.size);
  const entries: ZipEntry[] = [];
  let total = 0;
  for (let i = 0; i < directory.entries; i++) {
    const entry = readCentralHeader(c, directory.offset);
    total += entry.size;
    if (total > limits.maxBytes) {
      throw new ZipError('too-large', `the archive inflates to more than the limit of ${limits.maxBytes} bytes (at '${entry.rawName}', which declares ${entry.size})`);
    }
    entries.push(entry);
  }
  checkTree(entries);
  return { offset: directory.offset, entries };
}

function readCentralHeader(c: Cursor, directoryOffset: number): ZipEntry {
  c.need(CENTRAL_HEADER_LEN, 'a central directory header');
  if (c.u32() !== CENTRAL_SIGNATURE) throw new ZipError('format', `no central directory header at offset ${c.pos - 4}`);
  const creator = c.u16() >> 8;
  c.skip(2, 'the version needed');
  const flags = c.u16();
  const method = c.u16();
  c.skip(4, 'the modification time and date');
  const crc = c.u32();
  let compressedSize = c.u32();
  let size = c.u32();
  const nameLen = c.u16();
  const extraLen = c.u16();
  const commentLen = c.u16();
  c.skip(2, 'the disk number');
  c.skip(2, 'the internal attributes');
  const external = c.u32();
  let localHeaderOffset = c.u32();
  const rawNameBytes = c.bytes(nameLen, 'the entry name');
  const extra = new Cursor(c.buf, c.pos, c.pos + extraLen);
  c.skip(extraLen, 'the extra fields');
  c.skip(commentLen, 'the entry comment');

  let unicodeName: string | undefined;
  while (extra.pos + 4 <= extra.end) {
    const id = extra.u16();
    const len = extra.u16();
    const field = new Cursor(extra.buf, extra.pos, Math.min(extra.pos + len, extra.end));
    extra.skip(len, 'an extra field');
    if (id === ZIP64_EXTRA_ID) {
      // Only the saturated fields are present, always in this order.
      if (size === SATURATED_32) size = field.u64();
      if (compressedSize === SATURATED_32) compressedSize = field.u64();
      if (localHeaderOffset === SATURATED_32) localHeaderOffset = field.u64();
    } else if (id === UNICODE_PATH_EXTRA_ID && len > 5) {
      const version = field.u8();
      const nameCrc = field.u32();
      // The UTF-8 name only counts while it still describes the legacy name beside it.
      if (version === 1 && nameCrc === crc32(rawNameBytes)) unicodeName = field.bytes(field.end - field.pos, 'the unicode name').toString('utf8');
    }
  }

  const rawName = unicodeName ?? decodeName(rawNameBytes, flags);
  const reason = validateEntryName(rawName);
  if (reason) throw new ZipError('insecure', `entry '${printable(rawName)}' ${reason}`);
  if (flags & FLAG_ENCRYPTED) throw new ZipError('unsupported', `entry '${rawName}' is encrypted`);
  if (method !== METHOD_STORED && method !== METHOD_DEFLATED) {
    throw new ZipError('unsupported', `entry '${rawName}' uses compression method ${method}; only stored (0) and deflated (8) are supported`);
  }
  if (localHeaderOffset + LOCAL_HEADER_LEN > directoryOffset) {
    throw new ZipError('format', `entry '${rawName}' has its local header at offset ${localHeaderOffset}, inside the central directory`);
  }

  const unixMode = creator === CREATOR_UNIX || creator === CREATOR_OSX ? external >>> 16 : 0;
  const isDirectory = rawName.endsWith('/') || rawName.endsWith('\\') || (unixMode & S_IFMT) === S_IFDIR || (unixMode === 0 && (external & MSDOS_DIRECTORY) !== 0);
  const kind: EntryKind = (unixMode & S_IFMT) === S_IFLNK ? 'symlink' : isDirectory ? 'directory' : 'file';
  const permissions = unixMode & 0o777;
  const mode = permissions !== 0 ? permissions : kind === 'directory' ? 0o755 : 0o644;
  if (kind === 'symlink' && size > PATH_MAX) throw new ZipError('insecure', `entry '${rawName}' is a link with a ${size}-byte target, longer than any path`);
  if (kind === 'directory' && size !== 0) throw new ZipError('format', `entry '${rawName}' is a folder with ${size} bytes of data`);

  const path = normalize(rawName);
  if (path === '' && kind !== 'directory') throw new ZipError('insecure', `entry '${rawName}' names the action directory itself`);
  return { rawName, path, kind, mode, method, crc32: crc, compressedSize, size, localHeaderOffset };
}

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
function validateLinkTarget(target: Buffer): string | undefined {
  if (target.length === 0) return 'is a link with an empty target';
  if (target.includes(0)) return 'is a link whose target has a NUL byte';
  return undefined;
}

function normalize(name: string): string {
  return name.split(/[/\\]/).filter((segment) => segment !== '' && segment !== '.').join('/');
}

// Code page 437, the legacy encoding of names without the UTF-8 flag: bytes 0x80 to 0xFF.
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

function decodeName(bytes: Buffer, flags: number): string {
  // Info-ZIP on Unix writes UTF-8 names without setting the flag; CP437 is only the fallback.
  if (flags & FLAG_UTF8 || isUtf8(bytes)) return bytes.toString('utf8');
  let name = '';
  for (const b of bytes) name += b < 0x80 ? String.fromCharCode(b) : CP437_HIGH[b - 0x80];
  return name;
}

function printable(name: string): string {
  return name.replaceAll('\0', '\\0');
}

/** Checks the archive as a tree: no duplicates, nothing inside a file, nothing through a link. */
function checkTree(entries: ZipEntry[]): void {
  const kinds = new Map<string, ZipEntry>();
  for (const entry of entries) {
    if (entry.path === '') continue; // "./": the action directory itself
    const previous = kinds.get(entry.path);
    if (previous) throw new ZipError('insecure', `entry '${entry.rawName}' is a duplicate of '${previous.rawName}'`);
    kinds.set(entry.path, entry);
  }
  for (const entry of kinds.values()) {
    for (let slash = entry.path.indexOf('/'); slash !== -1; slash = entry.path.indexOf('/', slash + 1)) {
      const parent = kinds.get(entry.path.slice(0, slash));
      if (parent?.kind === 'symlink') throw new ZipError('insecure', `entry '${entry.rawName}' passes through the link '${parent.rawName}'`);
      if (parent?.kind === 'file') throw new ZipError('format', `entry '${entry.rawName}' is inside '${parent.rawName}', which is a file`);
    }
  }
}

/** Finds an entry's data after its local header, whose name and extra lengths are its own. */
function entryData(archive: Buffer, entry: ZipEntry, directoryOffset: number): Buffer {
  const c = new Cursor(archive, entry.localHeaderOffset, directoryOffset);
  c.need(LOCAL_HEADER_LEN, `the local header of '${entry.rawName}'`);
  if (c.u32() !== LOCAL_SIGNATURE) throw new ZipError('format', `entry '${entry.rawName}' has no local header at offset ${entry.localHeaderOffset}`);
  c.skip(22, 'the versions, flags, method, time, CRC and sizes (the central directory has them)');
  const nameLen = c.u16();
  const extraLen = c.u16();
  c.skip(nameLen + extraLen, `the local name and extra fields of '${entry.rawName}'`);
  if (c.pos + entry.compressedSize > directoryOffset) {
    throw new ZipError('format', `truncated archive: the data of '${entry.rawName}' (${entry.compressedSize} bytes at offset ${c.pos}) runs into the central directory`);
  }
  return c.bytes(entry.compressedSize, `the data of '${entry.rawName}'`);
}

function inflate(data: Buffer, entry: ZipEntry): Buffer {
  if (entry.method === METHOD_STORED) {
    if (entry.compressedSize !== entry.size) {
      throw new ZipError('format', `entry '${entry.rawName}' is stored with ${entry.compressedSize} bytes but declares ${entry.size}`);
    }
    return data;
  }
  try {
    // maxOutputLength stops a bomb at the declared size instead of after filling memory.
    // One output chunk of the declared size (up to 16 MiB, which a lying size can't make us allocate
    // in vain beyond): no growing and joining of 16 KiB chunks.
    const chunkSize = Math.min(Math.max(entry.size, 64), 16 * 1024 * 1024);
    return inflateRawSync(data, { maxOutputLength: Math.max(entry.size, 1), chunkSize });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new ZipError('format', `entry '${entry.rawName}' inflates past its declared ${entry.size} bytes`);
    }
    throw new ZipError('format', `entry '${entry.rawName}' does not inflate: ${(error as Error).message}`);
  }
}

function checkContents(contents: Buffer, entry: ZipEntry): void {
  if (contents.length !== entry.size) {
    throw new ZipError('format', `entry '${entry.rawName}' has ${contents.length} bytes but declares ${entry.size}`);
  }
  const actual = crc32(contents) >>> 0;
  if (actual !== entry.crc32) {
    throw new ZipError('checksum', `entry '${entry.rawName}' has CRC-32 ${hex(actual)} but declares ${hex(entry.crc32)}`);
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

/** Decodes and checks one entry's contents: the file bytes, or a link's target. */
function readEntry(archive: Buffer, entry: ZipEntry, directoryOffset: number): Buffer {
  const contents = inflate(entryData(archive, entry, directoryOffset), entry);
  checkContents(contents, entry);
  return contents;
}

/**
 * Extracts the archive into `dir` (an empty folder). Folders first, then files, then links, so no entry
 * is ever written through a link. On error, stops at the first one and throws it; the caller owns `dir`
 * and removes it.
 *
 * The work is synchronous (inflate, write), as `unzip` does it: for thousands of small files the thread
 * pool's round trips cost more than the work (measured: 150 ms async against 88 ms sync for 2000 files,
 * 46 MB, on tmpfs). It yields to the event loop every few megabytes so running activations still flow.
 */
export async function extract(archive: Buffer, dir: string, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<void> {
  const { offset: directoryOffset, entries } = readCentralDirectory(archive, limits);
  // Every folder, named or implied by a path, with the mode it ends up with.
  const folders = new Map<string, number>();
  for (const entry of entries) {
    if (entry.kind === 'directory') folders.set(entry.path, entry.mode);
    for (let slash = entry.path.indexOf('/'); slash !== -1; slash = entry.path.indexOf('/', slash + 1)) {
      const parent = entry.path.slice(0, slash);
      if (!folders.has(parent)) folders.set(parent, 0o755);
    }
  }
  folders.delete('');
  // Created writable now; their own modes are set after the files are in (a 0555 folder is common).
  for (const folder of [...folders.keys()].sort()) mkdirSync(join(dir, folder), { recursive: true });

  let sinceYield = 0;
  for (const entry of entries) {
    if (entry.kind !== 'file') continue;
    const contents = readEntry(archive, entry, directoryOffset);
    const fd = openSync(join(dir, entry.path), 'wx', entry.mode);
    try {
      for (let written = 0; written < contents.length; ) written += writeSync(fd, contents, written);
      fchmodSync(fd, entry.mode); // exact modes, whatever the umask
    } finally {
      closeSync(fd);
    }
    sinceYield += contents.length + 4096;
    if (sinceYield > YIELD_EVERY_BYTES) {
      sinceYield = 0;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  for (const entry of entries) {
    if (entry.kind !== 'symlink') continue;
    const target = readEntry(archive, entry, directoryOffset);
    const reason = validateLinkTarget(target);
    if (reason) throw new ZipError('insecure', `entry '${entry.rawName}' ${reason}`);
    symlinkSync(target.toString('utf8'), join(dir, entry.path));
  }
  // Deepest first: a child's path is always longer than its parent's.
  const deepestFirst = [...folders].sort(([a], [b]) => b.length - a.length);
  for (const [folder, mode] of deepestFirst) chmodSync(join(dir, folder), mode);
}
