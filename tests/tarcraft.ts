// Builds tar archives block by block (ustar headers), for tests that need entries no well-behaved tool
// would write: hostile names and links, devices, lying sizes and checksums.

export interface TarEntry {
  name: string;
  data?: Buffer | string;
  /** The type flag: '0' file (default), '1' hard link, '2' symlink, '3' char device, '5' folder, '6' FIFO, 'x' PAX, 'L' GNU long name. */
  type?: string;
  mode?: number;
  linkName?: string;
  /** Overrides of what the header declares. */
  size?: number;
  checksum?: number;
}

function field(header: Buffer, at: number, length: number, text: string): void {
  header.write(text, at, length, 'utf8');
}

function octal(header: Buffer, at: number, length: number, value: number): void {
  field(header, at, length, `${value.toString(8).padStart(length - 1, '0')}\0`);
}

/** One header block and its data, padded to whole blocks. */
export function tarEntry(entry: TarEntry): Buffer {
  const data = Buffer.from(entry.data ?? '');
  const header = Buffer.alloc(512);
  field(header, 0, 100, entry.name);
  octal(header, 100, 8, entry.mode ?? (entry.type === '5' ? 0o755 : 0o644));
  octal(header, 108, 8, 0);
  octal(header, 116, 8, 0);
  octal(header, 124, 12, entry.size ?? data.length);
  octal(header, 136, 12, 0);
  field(header, 156, 1, entry.type ?? '0');
  field(header, 157, 100, entry.linkName ?? '');
  field(header, 257, 8, 'ustar\x0000');
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  octal(header, 148, 7, entry.checksum ?? sum);
  return Buffer.concat([header, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

/** A whole archive: the entries, then the two zero blocks that end it. */
export function craftTar(entries: TarEntry[]): Buffer {
  return Buffer.concat([...entries.map(tarEntry), Buffer.alloc(1024)]);
}

/** A PAX extended header entry whose records apply to the entry after it. */
export function paxHeader(records: Record<string, string>): TarEntry {
  let data = '';
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`;
    let length = body.length + 1;
    while (`${length}${body}`.length !== length) length++;
    data += `${length}${body}`;
  }
  return { name: 'PaxHeader', type: 'x', data };
}
