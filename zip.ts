// A ZIP archive reader and extractor, written for binary action inits.
//
// It walks an archive the way the format is laid out (APPNOTE.TXT, PKWARE): find the end of central
// directory record at the back, follow the ZIP64 locator when the record's fields are saturated, read
// every central directory header, and only then touch the local headers to reach each entry's data.
// Sizes, modes and names come from the central directory; local headers are read just for the
// lengths of their own name and extra fields, which tools are free to make differ.
//
// The archive is a file read with positional reads (the init's code is decoded into one): the end
// records and the central directory are read into memory, each entry's data is streamed to its file.

import { isUtf8 } from 'node:buffer';
import { closeSync, fstatSync, readSync } from 'node:fs';
import { crc32, createInflateRaw, inflateRawSync } from 'node:zlib';
import { ArchiveError, DEFAULT_ARCHIVE_LIMITS, Extraction, PATH_MAX, writeAll, type ArchiveErrorCode, type ArchiveLimits } from './archive.ts';

export const END_SIGNATURE = 0x06054b50;
export const END_LEN = 22; // + comment
const MAX_COMMENT_LEN = 0xffff;
export const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
export const ZIP64_LOCATOR_LEN = 20;
export const ZIP64_END_SIGNATURE = 0x06064b50;
export const ZIP64_END_LEN = 56; // + extensible data
export const CENTRAL_SIGNATURE = 0x02014b50;
export const CENTRAL_HEADER_LEN = 46; // + name + extra + comment
export const LOCAL_SIGNATURE = 0x04034b50;
export const LOCAL_HEADER_LEN = 30; // + name + extra

export const ZIP64_EXTRA_ID = 0x0001;
const UNICODE_PATH_EXTRA_ID = 0x7075; // Info-ZIP: a UTF-8 name beside a legacy one

const FLAG_ENCRYPTED = 0x0001;
export const FLAG_UTF8 = 0x0800;
export const METHOD_STORED = 0;
export const METHOD_DEFLATED = 8;

export const CREATOR_UNIX = 3; // "version made by" high byte
const CREATOR_OSX = 19;
const MSDOS_DIRECTORY = 0x10; // external attributes, low byte
const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

export const SATURATED_16 = 0xffff; // a field that says "see the ZIP64 record"
export const SATURATED_32 = 0xffffffff;

// Entries up to this compressed size are read and inflated whole; larger ones are streamed in pieces
// of it, so no entry is ever whole in memory.
const PIECE = 1024 * 1024;

export class ZipError extends ArchiveError {
  constructor(code: ArchiveErrorCode, message: string) {
    super('zip', code, message);
    this.name = 'ZipError';
  }
}

export type EntryKind = 'file' | 'directory' | 'symlink';

/** Where the archive's bytes are: positional reads of a file, or a buffer. */
export interface ArchiveSource {
  size: number;
  /** `length` bytes at `position` (into `into` when given), fewer only at the end of the archive. */
  read(position: number, length: number, into?: Buffer): Buffer;
}

export function fileSource(fd: number): ArchiveSource {
  return {
    size: fstatSync(fd).size,
    read(position, length, into) {
      const wanted = Math.max(0, Math.min(length, this.size - position));
      const buffer = into ? into.subarray(0, wanted) : Buffer.allocUnsafe(wanted);
      let filled = 0;
      while (filled < buffer.length) {
        const got = readSync(fd, buffer, filled, buffer.length - filled, position + filled);
        if (got === 0) break;
        filled += got;
      }
      return buffer.subarray(0, filled);
    },
  };
}

export function bufferSource(archive: Buffer): ArchiveSource {
  return { size: archive.length, read: (position, length) => archive.subarray(position, position + length) };
}

export interface ZipEntry {
  /** The name as the archive spells it, for messages. */
  rawName: string;
  /** The normalized relative path (archive.ts's normalize), set when the entry is planned. */
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
  /** Where `buf` starts in the archive. */
  readonly base: number;
  constructor(buf: Buffer, pos: number, end = buf.length, base = 0) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
    this.base = base;
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

/**
 * Finds the end of central directory record, scanning back over an archive comment of up to 64 KiB, in
 * the archive's tail (which holds the ZIP64 locator too, when there is one).
 */
function findEndOfCentralDirectory(tail: Buffer): number {
  const signature = Buffer.alloc(4);
  signature.writeUInt32LE(END_SIGNATURE);
  const stop = Math.max(0, tail.length - END_LEN - MAX_COMMENT_LEN);
  let at = tail.length - END_LEN;
  while (at >= stop) {
    at = tail.lastIndexOf(signature, at);
    if (at < stop) break;
    const commentLen = tail.readUInt16LE(at + 20);
    if (at + END_LEN + commentLen <= tail.length) return at;
    at -= 1;
  }
  throw new ZipError('format', 'not a zip archive (no end of central directory record)');
}

function readEndOfCentralDirectory(archive: ArchiveSource): Directory {
  const tailStart = Math.max(0, archive.size - END_LEN - MAX_COMMENT_LEN - ZIP64_LOCATOR_LEN);
  const tail = archive.read(tailStart, archive.size - tailStart);
  const endInTail = findEndOfCentralDirectory(tail);
  const endOffset = tailStart + endInTail;
  const c = new Cursor(tail, endInTail);
  c.skip(4, 'the end record signature');
  const disk = c.u16();
  const directoryDisk = c.u16();
  c.skip(2, 'the entry count on this disk');
  const entries = c.u16();
  const size = c.u32();
  const offset = c.u32();
  if (entries === SATURATED_16 || size === SATURATED_32 || offset === SATURATED_32) {
    if (hasZip64Locator(tail, endInTail)) return readZip64End(archive, tail.subarray(endInTail - ZIP64_LOCATOR_LEN, endInTail), endOffset);
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
function hasZip64Locator(tail: Buffer, endInTail: number): boolean {
  return endInTail >= ZIP64_LOCATOR_LEN && tail.readUInt32LE(endInTail - ZIP64_LOCATOR_LEN) === ZIP64_LOCATOR_SIGNATURE;
}

/** The ZIP64 locator sits right before the end record and points at the ZIP64 end record. */
function readZip64End(archive: ArchiveSource, locatorBytes: Buffer, endOffset: number): Directory {
  const locator = new Cursor(locatorBytes, 0);
  locator.skip(4, 'the locator signature');
  locator.skip(4, 'the disk with the ZIP64 end record');
  const recordOffset = locator.u64();
  const recordEnd = endOffset - ZIP64_LOCATOR_LEN;
  if (recordOffset + ZIP64_END_LEN > recordEnd) throw new ZipError('format', 'truncated archive: the ZIP64 end record runs past the end of its record');
  const record = new Cursor(archive.read(recordOffset, ZIP64_END_LEN), 0);
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

export function readCentralDirectory(archive: ArchiveSource, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS): CentralDirectory {
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
  const bytes = archive.read(directory.offset, directory.size);
  const c = new Cursor(bytes, 0, bytes.length, directory.offset);
  const entries: ZipEntry[] = [];
  for (let i = 0; i < directory.entries; i++) entries.push(readCentralHeader(c, directory.offset));
  return { offset: directory.offset, entries };
}

function readCentralHeader(c: Cursor, directoryOffset: number): ZipEntry {
  c.need(CENTRAL_HEADER_LEN, 'a central directory header');
  if (c.u32() !== CENTRAL_SIGNATURE) throw new ZipError('format', `no central directory header at offset ${c.base + c.pos - 4}`);
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

  return { rawName, path: '', kind, mode, method, crc32: crc, compressedSize, size, localHeaderOffset };
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

/** Where an entry's data starts: after its local header, whose name and extra lengths are its own. */
function dataOffset(archive: ArchiveSource, entry: ZipEntry, directoryOffset: number): number {
  const c = new Cursor(archive.read(entry.localHeaderOffset, LOCAL_HEADER_LEN), 0);
  c.need(LOCAL_HEADER_LEN, `the local header of '${entry.rawName}'`);
  if (c.u32() !== LOCAL_SIGNATURE) throw new ZipError('format', `entry '${entry.rawName}' has no local header at offset ${entry.localHeaderOffset}`);
  c.skip(22, 'the versions, flags, method, time, CRC and sizes (the central directory has them)');
  const nameLen = c.u16();
  const extraLen = c.u16();
  const start = entry.localHeaderOffset + LOCAL_HEADER_LEN + nameLen + extraLen;
  if (start + entry.compressedSize > directoryOffset) {
    throw new ZipError('format', `truncated archive: the data of '${entry.rawName}' (${entry.compressedSize} bytes at offset ${start}) runs into the central directory`);
  }
  return start;
}

function checkStoredSize(entry: ZipEntry): void {
  if (entry.method === METHOD_STORED && entry.compressedSize !== entry.size) {
    throw new ZipError('format', `entry '${entry.rawName}' is stored with ${entry.compressedSize} bytes but declares ${entry.size}`);
  }
}

function inflate(data: Buffer, entry: ZipEntry): Buffer {
  checkStoredSize(entry);
  if (entry.method === METHOD_STORED) return data;
  try {
    // maxOutputLength stops a bomb at the declared size instead of after filling memory.
    // One output chunk of the declared size: no growing and joining of 16 KiB chunks.
    return inflateRawSync(data, { maxOutputLength: Math.max(entry.size, 1), chunkSize: Math.max(entry.size, 64) });
  } catch (error) {
    throw inflateError(error, entry);
  }
}

function inflateError(error: unknown, entry: ZipEntry): ZipError {
  if ((error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') return tooLong(entry);
  return new ZipError('format', `entry '${entry.rawName}' does not inflate: ${(error as Error).message}`);
}

function tooLong(entry: ZipEntry): ZipError {
  return new ZipError('format', `entry '${entry.rawName}' inflates past its declared ${entry.size} bytes`);
}

/** Checks what an entry came to: its length and CRC-32 against what the central directory declares. */
function checkContents(length: number, crc: number, entry: ZipEntry): void {
  if (length !== entry.size) {
    throw new ZipError('format', `entry '${entry.rawName}' has ${length} bytes but declares ${entry.size}`);
  }
  if (crc >>> 0 !== entry.crc32) {
    throw new ZipError('checksum', `entry '${entry.rawName}' has CRC-32 ${hex(crc >>> 0)} but declares ${hex(entry.crc32)}`);
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

/** Reads, inflates and checks a small entry whole: a file's bytes, or a link's target. */
function readEntry(archive: ArchiveSource, entry: ZipEntry, directoryOffset: number): Buffer {
  const contents = inflate(archive.read(dataOffset(archive, entry, directoryOffset), entry.compressedSize), entry);
  checkContents(contents.length, crc32(contents), entry);
  return contents;
}

/** Streams a large entry's data to `fd` in pieces, inflating as it goes, and checks it. */
async function streamEntry(archive: ArchiveSource, entry: ZipEntry, directoryOffset: number, fd: number, extraction: Extraction): Promise<void> {
  checkStoredSize(entry);
  const start = dataOffset(archive, entry, directoryOffset);
  let length = 0;
  let crc = 0;
  const write = (piece: Buffer): void => {
    length += piece.length;
    if (length > entry.size) throw tooLong(entry);
    crc = crc32(piece, crc);
    writeAll(fd, piece);
  };
  if (entry.method === METHOD_STORED) {
    // One buffer for every piece: copying leaves no garbage the size of the entry behind.
    const piece = Buffer.allocUnsafe(Math.min(PIECE, entry.compressedSize));
    for (let at = 0; at < entry.compressedSize; at += PIECE) {
      write(archive.read(start + at, Math.min(PIECE, entry.compressedSize - at), piece));
      await extraction.wrote(PIECE);
    }
  } else {
    const inflater = createInflateRaw({ chunkSize: PIECE });
    const done = new Promise<void>((resolve, reject) => {
      inflater.on('data', (piece: Buffer) => {
        try {
          write(piece);
        } catch (error) {
          inflater.destroy();
          reject(error);
        }
      });
      inflater.on('end', resolve);
      inflater.on('error', (error) => reject(inflateError(error, entry)));
    });
    for (let at = 0; at < entry.compressedSize && !inflater.destroyed; at += PIECE) {
      const piece = archive.read(start + at, Math.min(PIECE, entry.compressedSize - at));
      // Wait for the inflater to take each piece: a bomb never queues more than one.
      if (!inflater.write(piece)) await new Promise((resolve) => inflater.once('drain', resolve));
      await extraction.wrote(PIECE);
    }
    inflater.end();
    await done;
  }
  checkContents(length, crc, entry);
}

/**
 * Extracts the archive into `dir` (an empty folder): every entry is planned (archive.ts: names, limits,
 * the tree) before anything is written, then folders, files and links. On error, stops at the first one
 * and throws it; the caller owns `dir` and removes it.
 *
 * Small entries are read, inflated and written synchronously, as `unzip` does it: for thousands of small
 * files the thread pool's round trips cost more than the work (measured: 150 ms async against 88 ms sync
 * for 2000 files, 46 MB, on tmpfs). Large ones are streamed in pieces, never whole in memory.
 */
export async function extract(archive: ArchiveSource | Buffer, dir: string, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS): Promise<void> {
  const source = Buffer.isBuffer(archive) ? bufferSource(archive) : archive;
  const { offset: directoryOffset, entries } = readCentralDirectory(source, limits);
  const extraction = new Extraction(dir, limits, 'zip');
  for (const entry of entries) entry.path = extraction.plan(entry.rawName, entry.kind, entry.size);
  for (const entry of entries) if (entry.kind === 'directory') extraction.folder(entry.path, entry.mode);
  for (const entry of entries) {
    if (entry.kind !== 'file') continue;
    if (entry.compressedSize <= PIECE && entry.size <= 16 * PIECE) {
      await extraction.file(entry.path, entry.mode, readEntry(source, entry, directoryOffset));
      continue;
    }
    const fd = extraction.openFile(entry.path, entry.mode);
    try {
      await streamEntry(source, entry, directoryOffset, fd, extraction);
    } finally {
      closeSync(fd);
    }
  }
  for (const entry of entries) {
    if (entry.kind === 'symlink') extraction.symlink(entry.path, entry.rawName, readEntry(source, entry, directoryOffset));
  }
  extraction.finish();
}
