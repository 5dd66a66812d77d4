// Builds ZIP archives byte by byte, for tests that need archives no well-behaved tool would write:
// hostile names, lying sizes and checksums, unknown methods. Plain stored or deflated entries with
// Unix modes; every field can be overridden.

import { crc32, deflateRawSync } from 'node:zlib';

export interface CraftEntry {
  name: string;
  data?: Buffer | string;
  /** 0 stored (default), 8 deflated, or anything else to test rejection. */
  method?: number;
  /** Unix mode including the file type, e.g. 0o100755 or 0o120777 for a link. */
  mode?: number;
  flags?: number;
  /** Overrides of what the entry declares. */
  crc?: number;
  size?: number;
  compressedData?: Buffer;
}

const S_IFREG = 0o100000;

/** A complete archive: local headers and data, central directory, end record. */
export function craftZip(entries: CraftEntry[], comment = ''): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const entry of entries) {
    const name = Buffer.from(entry.name, 'utf8');
    const data = Buffer.from(entry.data ?? '');
    const method = entry.method ?? 0;
    const stored = entry.compressedData ?? (method === 8 ? deflateRawSync(data) : data);
    const crc = entry.crc ?? crc32(data);
    const size = entry.size ?? data.length;
    const flags = (entry.flags ?? 0) | 0x800; // names are UTF-8

    // The fields both headers share, from "version needed" to the name length; the central header
    // has "version made by" before them.
    const shared = Buffer.alloc(24);
    shared.writeUInt16LE(20, 0);
    shared.writeUInt16LE(flags, 2);
    shared.writeUInt16LE(method, 4);
    shared.writeUInt32LE(crc >>> 0, 10);
    shared.writeUInt32LE(stored.length, 14);
    shared.writeUInt32LE(size, 18);
    shared.writeUInt16LE(name.length, 22);

    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    shared.copy(local, 4);
    locals.push(local, name, stored);

    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by Unix: the external attributes hold a mode
    shared.copy(central, 6);
    central.writeUInt32LE(((entry.mode ?? S_IFREG | 0o644) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);
    offset += local.length + name.length + stored.length;
  }
  const directory = Buffer.concat(centrals);
  const commentBytes = Buffer.from(comment, 'latin1');
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  end.writeUInt16LE(commentBytes.length, 20);
  return Buffer.concat([...locals, directory, end, commentBytes]);
}

export const EXEC_ENTRY: CraftEntry = { name: 'exec', data: '#!/bin/sh\necho \'{"crafted":true}\'\n', mode: S_IFREG | 0o755 };
