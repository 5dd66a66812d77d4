// A ZIP archive writer, the counterpart of zip.ts's reader, for `-compile`'s output.
//
// It writes a folder as the format lays an archive out (APPNOTE.TXT): each entry's local header and
// data, then the central directory, then the end record, with the ZIP64 records and extra fields only
// when a size, an offset or the entry count needs them. The same folder always gives the same bytes:
// entries sorted by name, one fixed timestamp, no owner or time extra fields, Unix modes and symbolic
// links kept (a link is an entry whose data is its target).

import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, deflateRawSync } from 'node:zlib';
import {
  CENTRAL_SIGNATURE,
  CREATOR_UNIX,
  END_SIGNATURE,
  FLAG_UTF8,
  LOCAL_SIGNATURE,
  METHOD_DEFLATED,
  METHOD_STORED,
  S_IFDIR,
  S_IFLNK,
  SATURATED_16,
  SATURATED_32,
  ZIP64_END_SIGNATURE,
  ZIP64_EXTRA_ID,
  ZIP64_LOCATOR_SIGNATURE,
} from './zip.ts';

// 1980-01-01 00:00:00, the earliest MS-DOS date: every entry's time, so the output depends on contents only.
const DOS_TIME = 0;
const DOS_DATE = (0 << 9) | (1 << 5) | 1;
const VERSION_DEFAULT = 20; // 2.0: folders, deflate
const VERSION_ZIP64 = 45; // 4.5: ZIP64
const S_IFREG = 0o100000;

// Files up to this size are deflated in memory; larger ones are stored, streamed from their files.
const DEFLATE_LIMIT = 64 * 1024 * 1024;
const COPY_PIECE = 1024 * 1024;

interface Written {
  name: Buffer;
  mode: number;
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  offset: number;
}

/** The folder's entries, every path relative and `/` separated, sorted by name (folders end in `/`). */
function entriesOf(root: string, prefix = ''): Array<{ name: string; path: string }> {
  const found: Array<{ name: string; path: string }> = [];
  for (const name of readdirSync(join(root, prefix)).sort()) {
    const relative = prefix ? `${prefix}/${name}` : name;
    const stats = lstatSync(join(root, relative));
    if (stats.isDirectory()) {
      found.push({ name: `${relative}/`, path: relative });
      found.push(...entriesOf(root, relative));
    } else found.push({ name: relative, path: relative });
  }
  return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The ZIP64 extra field for the values that don't fit their 32-bit fields (in APPNOTE's order). */
function zip64Extra(values: number[]): Buffer {
  if (values.length === 0) return Buffer.alloc(0);
  const extra = Buffer.alloc(4 + 8 * values.length);
  extra.writeUInt16LE(ZIP64_EXTRA_ID, 0);
  extra.writeUInt16LE(8 * values.length, 2);
  values.forEach((value, i) => extra.writeBigUInt64LE(BigInt(value), 4 + 8 * i));
  return extra;
}

const fits = (value: number): boolean => value < SATURATED_32;

/**
 * Writes a ZIP archive of the folder `root` through `write` (called with each piece in order, which it
 * must have written when it returns: a large file's pieces share one buffer). Returns the number of bytes
 * written.
 */
export function writeZip(root: string, write: (bytes: Buffer) => void): number {
  let offset = 0;
  const out = (bytes: Buffer): void => {
    write(bytes);
    offset += bytes.length;
  };
  const written: Written[] = [];
  for (const { name, path } of entriesOf(root)) {
    const full = join(root, path);
    const stats = lstatSync(full);
    const kind = stats.isDirectory() ? S_IFDIR : stats.isSymbolicLink() ? S_IFLNK : S_IFREG;
    const mode = kind | (stats.mode & 0o777);
    let data: Buffer | undefined = stats.isDirectory() ? Buffer.alloc(0) : stats.isSymbolicLink() ? Buffer.from(readlinkSync(full)) : undefined;
    let method = METHOD_STORED;
    let crc = 0;
    let size = data?.length ?? stats.size;
    if (data === undefined && stats.size <= DEFLATE_LIMIT) data = readWhole(full, stats.size);
    if (data !== undefined) {
      crc = crc32(data);
      size = data.length;
      const deflated = data.length > 0 ? deflateRawSync(data) : data;
      if (deflated.length < data.length) {
        method = METHOD_DEFLATED;
        data = deflated;
      }
    } else crc = crcOfFile(full);
    const compressedSize = data?.length ?? size;
    const entry: Written = { name: Buffer.from(name, 'utf8'), mode, method, crc, compressedSize, size, offset };
    // A local header's ZIP64 extra holds both sizes whenever either needs it.
    const big = !fits(size) || !fits(compressedSize);
    const extra = zip64Extra(big ? [size, compressedSize] : []);
    out(header(LOCAL_SIGNATURE, entry, extra, big));
    if (data !== undefined) out(data);
    else copyFile(full, size, out);
    written.push(entry);
  }
  const directoryOffset = offset;
  for (const entry of written) {
    const extra = zip64Extra([...(fits(entry.size) ? [] : [entry.size]), ...(fits(entry.compressedSize) ? [] : [entry.compressedSize]), ...(fits(entry.offset) ? [] : [entry.offset])]);
    out(header(CENTRAL_SIGNATURE, entry, extra, extra.length > 0));
  }
  const directorySize = offset - directoryOffset;
  const zip64 = written.length >= SATURATED_16 || !fits(directoryOffset) || !fits(directorySize);
  if (zip64) {
    const recordOffset = offset;
    const record = Buffer.alloc(56);
    record.writeUInt32LE(ZIP64_END_SIGNATURE, 0);
    record.writeBigUInt64LE(44n, 4); // the record's size after this field
    record.writeUInt16LE((CREATOR_UNIX << 8) | VERSION_ZIP64, 12);
    record.writeUInt16LE(VERSION_ZIP64, 14);
    record.writeBigUInt64LE(BigInt(written.length), 24);
    record.writeBigUInt64LE(BigInt(written.length), 32);
    record.writeBigUInt64LE(BigInt(directorySize), 40);
    record.writeBigUInt64LE(BigInt(directoryOffset), 48);
    out(record);
    const locator = Buffer.alloc(20);
    locator.writeUInt32LE(ZIP64_LOCATOR_SIGNATURE, 0);
    locator.writeBigUInt64LE(BigInt(recordOffset), 8);
    locator.writeUInt32LE(1, 16); // disks in all
    out(locator);
  }
  const end = Buffer.alloc(22);
  end.writeUInt32LE(END_SIGNATURE, 0);
  end.writeUInt16LE(Math.min(written.length, SATURATED_16), 8);
  end.writeUInt16LE(Math.min(written.length, SATURATED_16), 10);
  end.writeUInt32LE(Math.min(directorySize, SATURATED_32), 12);
  end.writeUInt32LE(Math.min(directoryOffset, SATURATED_32), 16);
  out(end);
  return offset;
}

/** A local (30 bytes + name + extra) or central (46 bytes + name + extra) header for `entry`. */
function header(signature: number, entry: Written, extra: Buffer, zip64: boolean): Buffer {
  const central = signature === CENTRAL_SIGNATURE;
  const fixed = central ? 46 : 30;
  const bytes = Buffer.alloc(fixed + entry.name.length + extra.length);
  let at = 0;
  const u16 = (value: number): void => void (at = bytes.writeUInt16LE(value, at));
  const u32 = (value: number): void => void (at = bytes.writeUInt32LE(value >>> 0, at));
  const version = zip64 ? VERSION_ZIP64 : VERSION_DEFAULT;
  u32(signature);
  if (central) u16((CREATOR_UNIX << 8) | version);
  u16(version);
  u16(/^[\x20-\x7e]*$/.test(entry.name.toString('latin1')) ? 0 : FLAG_UTF8);
  u16(entry.method);
  u16(DOS_TIME);
  u16(DOS_DATE);
  u32(entry.crc);
  u32(fits(entry.compressedSize) && !(zip64 && !central) ? entry.compressedSize : SATURATED_32);
  u32(fits(entry.size) && !(zip64 && !central) ? entry.size : SATURATED_32);
  u16(entry.name.length);
  u16(extra.length);
  if (central) {
    u16(0); // comment length
    u16(0); // disk
    u16(0); // internal attributes
    u32(entry.mode * 0x10000); // external attributes: the Unix mode in the high half
    u32(fits(entry.offset) ? entry.offset : SATURATED_32);
  }
  entry.name.copy(bytes, at);
  extra.copy(bytes, at + entry.name.length);
  return bytes;
}

function readWhole(path: string, size: number): Buffer {
  const data = Buffer.allocUnsafe(size);
  const fd = openSync(path, 'r');
  try {
    let filled = 0;
    while (filled < size) {
      const got = readSync(fd, data, filled, size - filled, filled);
      if (got === 0) throw new Error(`${path} changed while it was being archived`);
      filled += got;
    }
  } finally {
    closeSync(fd);
  }
  return data;
}

/** Reads a large file in pieces, handing each to `each`. */
function eachPiece(path: string, size: number, each: (piece: Buffer) => void): void {
  const piece = Buffer.allocUnsafe(COPY_PIECE);
  const fd = openSync(path, 'r');
  try {
    for (let at = 0; at < size; ) {
      const got = readSync(fd, piece, 0, Math.min(COPY_PIECE, size - at), at);
      if (got === 0) throw new Error(`${path} changed while it was being archived`);
      each(piece.subarray(0, got));
      at += got;
    }
  } finally {
    closeSync(fd);
  }
}

function crcOfFile(path: string): number {
  let crc = 0;
  eachPiece(path, lstatSync(path).size, (piece) => (crc = crc32(piece, crc)));
  return crc;
}

function copyFile(path: string, size: number, out: (bytes: Buffer) => void): void {
  eachPiece(path, size, out);
}
