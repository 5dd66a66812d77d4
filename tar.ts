// A tar archive reader and extractor, for binary action inits (`.tar.gz`, `npm pack`'s `.tgz`, plain tar).
//
// A tar archive is a sequence of 512-byte headers, each followed by its entry's data padded to a whole
// block, ended by zero blocks (POSIX.1-2001 "pax", whose ustar header this is). Names longer than the
// header's 100 bytes come from the ustar prefix field, a PAX extended header (`x`, records
// "<length> <key>=<value>\n") or a GNU long name entry (`L` for the name, `K` for a link's target), each
// applying to the entry after it. There is no directory at the end: entries are planned and written as
// they stream past (archive.ts keeps the tree safe whatever the order), gunzip'd by node:zlib on the way.

import { closeSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ArchiveError, Extraction, PATH_MAX, writeAll, type ArchiveLimits, type EntryKind } from './archive.ts';

const BLOCK = 512;
/** How much is read, and inflated, at a time. */
export const PIECE = 256 * 1024;

// Header fields: [offset, length].
const NAME = [0, 100] as const;
const MODE = [100, 8] as const;
const SIZE = [124, 12] as const;
const CHECKSUM = [148, 8] as const;
const TYPE = 156;
const LINK_NAME = [157, 100] as const;
const MAGIC = [257, 6] as const;
const PREFIX = [345, 155] as const;

/** The longest PAX or GNU long-name data read into memory: far beyond any real name or record set. */
const MAX_META_BYTES = 1024 * 1024;

/** What each type flag is. Anything not here (devices, FIFOs, sparse files, volume labels) is refused. */
const KINDS: Record<string, EntryKind> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '5': 'directory' };
const REFUSED: Record<string, string> = { '3': 'a character device', '4': 'a block device', '6': 'a FIFO' };

function tarError(code: ArchiveError['code'], message: string): ArchiveError {
  return new ArchiveError('tar', code, message);
}

/** Pulls exact byte counts out of a stream of chunks. */
class Blocks {
  private readonly chunks: AsyncIterator<Buffer>;
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes taken so far: where the next one is in the (uncompressed) archive. */
  offset = 0;

  constructor(stream: Readable) {
    this.chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  /** Whether `n` bytes are there (false at the end of the stream). */
  private async fill(n: number): Promise<boolean> {
    while (this.pending.length < n) {
      const next = await this.chunks.next();
      if (next.done) return false;
      this.pending = this.pending.length === 0 ? next.value : Buffer.concat([this.pending, next.value]);
    }
    return true;
  }

  /** Exactly `n` bytes, or undefined when the stream ends first. */
  async take(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) return undefined;
    const taken = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.offset += n;
    return taken;
  }

  /** Up to `n` bytes, as many as have arrived (at least one), or undefined at the end of the stream. */
  async some(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(1))) return undefined;
    const taken = this.pending.subarray(0, Math.min(n, this.pending.length));
    this.pending = this.pending.subarray(taken.length);
    this.offset += taken.length;
    return taken;
  }

  async close(): Promise<void> {
    await this.chunks.return?.();
  }
}

function text(header: Buffer, [at, length]: readonly [number, number]): string {
  const field = header.subarray(at, at + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? length : end).toString('utf8');
}

/** A numeric field: octal text, or (GNU, for large values) base-256 with the top bit set. */
function number(header: Buffer, [at, length]: readonly [number, number], what: string): number {
  const field = header.subarray(at, at + length);
  if (field[0]! & 0x80) {
    let value = field[0]! & 0x7f;
    for (let i = 1; i < length; i++) value = value * 256 + field[i]!;
    if (!Number.isSafeInteger(value)) throw tarError('format', `a header's ${what} is past any real archive`);
    return value;
  }
  const digits = field.toString('latin1').replace(/[\0 ]+$/, '').trim();
  if (digits === '') return 0;
  if (!/^[0-7]+$/.test(digits)) throw tarError('format', `a header's ${what} is not a number (${JSON.stringify(digits)}) at offset ${at}`);
  return parseInt(digits, 8);
}

/** The header's checksum: the sum of its bytes with the checksum field read as spaces (signed sums too). */
function checksumHolds(header: Buffer): boolean {
  const declared = number(header, CHECKSUM, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= CHECKSUM[0] && i < CHECKSUM[0] + CHECKSUM[1] ? 0x20 : header[i]!;
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  return declared === unsigned || declared === signed;
}

/** PAX records, "<length> <key>=<value>\n" each. */
function paxRecords(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = space === -1 ? NaN : Number(data.toString('latin1', at, space));
    if (!Number.isInteger(length) || length <= 0 || at + length > data.length) throw tarError('format', `a PAX extended header has a malformed record at byte ${at}`);
    const record = data.toString('utf8', space + 1, at + length - 1);
    const equals = record.indexOf('=');
    if (equals === -1) throw tarError('format', `a PAX extended header has a record without '=' at byte ${at}`);
    records.set(record.slice(0, equals), record.slice(equals + 1));
    at += length;
  }
  return records;
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/**
 * Extracts a tar archive (gzip'd when `gzipped`) streamed from `input` into `dir` (an empty folder).
 * Throws the first thing wrong; the caller owns `dir` and removes it.
 */
export async function extractTar(input: Readable, gzipped: boolean, dir: string, limits: ArchiveLimits): Promise<void> {
  // Large pieces: zlib works in the thread pool, and each piece is a round trip to it; and room for four
  // inflated pieces, so that inflating goes on while the main thread writes files (measured on the bench's
  // archive: extraction 270-316 -> 233-278 ms).
  const options = { chunkSize: PIECE, readableHighWaterMark: 4 * PIECE };
  const stream = gzipped ? input.pipe(createGunzip(options)) : input;
  if (gzipped) input.on('error', (error) => stream.destroy(error));
  const blocks = new Blocks(stream);
  try {
    await readEntries(blocks, new Extraction(dir, limits, 'tar'));
  } catch (error) {
    if (error instanceof ArchiveError) throw error;
    // zlib's and the file's own errors.
    throw gzipped ? new ArchiveError('gzip', 'format', (error as Error).message) : error;
  } finally {
    await blocks.close();
    input.destroy();
  }
}

async function readEntries(blocks: Blocks, extraction: Extraction): Promise<void> {
  // What PAX (`x`) and GNU (`L`, `K`) entries say about the next entry.
  let pax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const at = blocks.offset;
    const header = await blocks.take(BLOCK);
    if (!header) throw tarError('format', `truncated archive: it ends at offset ${at} without its end-of-archive blocks`);
    if (header.every((byte) => byte === 0)) break; // the end (a second zero block may follow; nothing after matters)
    if (!checksumHolds(header)) throw tarError('format', `the header at offset ${at} has a wrong checksum (not a tar archive, or a corrupt one)`);
    const type = String.fromCharCode(header[TYPE]!);
    let size = number(header, SIZE, 'size');

    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') {
      if (size > MAX_META_BYTES) throw tarError('too-large', `the ${type === 'x' || type === 'g' ? 'PAX' : 'GNU long name'} header at offset ${at} holds ${size} bytes`);
      const data = await blocks.take(size + padding(size));
      if (!data) throw tarError('format', `truncated archive: the header at offset ${at} declares ${size} bytes of data`);
      const meta = data.subarray(0, size);
      if (type === 'x') pax = paxRecords(meta);
      // A global header's defaults ('g') name no path of ours: read past.
      else if (type === 'L') longName = nulTerminated(meta);
      else if (type === 'K') longLink = nulTerminated(meta);
      continue;
    }

    const prefix = text(header, MAGIC).startsWith('ustar') && header.toString('latin1', MAGIC[0], MAGIC[0] + 8) !== 'ustar  \0' ? text(header, PREFIX) : '';
    const headerName = prefix ? `${prefix}/${text(header, NAME)}` : text(header, NAME);
    const rawName = pax.get('path') ?? longName ?? headerName;
    const linkName = pax.get('linkpath') ?? longLink ?? text(header, LINK_NAME);
    if (pax.has('size')) size = Number(pax.get('size'));
    if (!Number.isSafeInteger(size) || size < 0) throw tarError('format', `entry '${rawName}' has a size that is not a number`);
    pax = new Map();
    longName = longLink = undefined;

    const refused = REFUSED[type];
    if (refused) throw tarError('unsupported', `entry '${rawName}' is ${refused}, which an action can't hold`);
    const kind = KINDS[type];
    if (!kind) throw tarError('unsupported', `entry '${rawName}' has type '${type.replace('\0', '\\0')}'; only files, folders, symbolic and hard links are supported`);
    // A folder's name ends in '/', which says nothing more.
    const mode = (number(header, MODE, 'mode') & 0o777) || (kind === 'directory' ? 0o755 : 0o644);
    const path = extraction.plan(rawName, kind, kind === 'file' ? size : 0);

    let skip = size + padding(size);
    if (kind === 'file') {
      skip = padding(size);
      const fd = extraction.openFile(path, mode);
      try {
        for (let left = size; left > 0; ) {
          const piece = await blocks.some(left);
          if (!piece) throw tarError('format', `truncated archive: the data of '${rawName}' (${size} bytes) ends early`);
          writeAll(fd, piece);
          left -= piece.length;
          await extraction.wrote(piece.length);
        }
      } finally {
        closeSync(fd);
      }
    } else if (kind === 'directory') extraction.folder(path, mode);
    else if (kind === 'symlink') {
      if (Buffer.byteLength(linkName) > PATH_MAX) throw tarError('insecure', `entry '${rawName}' is a link with a target longer than any path`);
      extraction.symlink(path, rawName, Buffer.from(linkName));
    } else extraction.hardlink(path, rawName, linkName);

    // The padding, and data that a link or folder should not have carried.
    for (let left = skip; left > 0; ) {
      const piece = await blocks.some(left);
      if (!piece) throw tarError('format', `truncated archive: entry '${rawName}' ends early`);
      left -= piece.length;
    }
  }
  extraction.finish();
}

function nulTerminated(data: Buffer): string {
  const end = data.indexOf(0);
  return data.toString('utf8', 0, end === -1 ? data.length : end);
}
