// Fuzzing the ZIP and tar readers: random truncations, bit flips and header field rewrites of valid archives.
// Every case either extracts what the archive holds or fails with the reader's own ArchiveError; never
// another exception, a hang, or a write outside the target folder.
//
// In CI a bounded run (FUZZ_CASES, default 5000); `npm run fuzz` runs longer. A failure prints the seed
// and case number: FUZZ_SEED=<seed> reproduces the run.

import assert from 'node:assert/strict';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ArchiveError, type ArchiveLimits } from '../archive.ts';
import { extract } from '../zip.ts';
import { extractTar } from '../tar.ts';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { craftTar, paxHeader } from './tarcraft.ts';
import { ROOT } from './helpers.ts';
import { EXEC_ENTRY, craftZip } from './zipcraft.ts';

const CASES = Number(process.env.FUZZ_CASES ?? 5000);
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);
const LIMITS: ArchiveLimits = { maxEntries: 1000, maxBytes: 4 * 1024 * 1024 };
const CASE_TIMEOUT_MS = 10_000;

/** mulberry32: small, fast, and reproducible from one number. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const fixtures = readdirSync(join(ROOT, 'tests', 'fixtures'))
  .filter((name) => /\.(zip|jar)$/.test(name))
  .map((name) => readFileSync(join(ROOT, 'tests', 'fixtures', name)));
const seeds = [
  ...fixtures,
  craftZip([EXEC_ENTRY, { name: 'lib/', mode: 0o40755 }, { name: 'lib/a.txt', data: 'a'.repeat(5000), method: 8 }, { name: 'link', data: 'lib', mode: 0o120777 }]),
];

// Offsets of the records whose fields are worth rewriting: local, central, end, ZIP64 end and locator.
const SIGNATURES = [0x04034b50, 0x02014b50, 0x06054b50, 0x06064b50, 0x07064b50];
function recordOffsets(archive: Buffer): number[] {
  const offsets: number[] = [];
  for (let i = 0; i + 4 <= archive.length; i++) if (SIGNATURES.includes(archive.readUInt32LE(i))) offsets.push(i);
  return offsets;
}

const INTERESTING = [0, 1, 0x7f, 0xff, 0x100, 0x7fff, 0xffff, 0x10000, 0x7fffffff, 0xffffffff];

function mutate(archive: Buffer, next: () => number): { data: Buffer; how: string } {
  const pick = (n: number): number => Math.floor(next() * n);
  const kind = pick(3);
  if (kind === 0) {
    const length = pick(archive.length);
    return { data: Buffer.from(archive.subarray(0, length)), how: `truncate to ${length}` };
  }
  const data = Buffer.from(archive);
  if (kind === 1) {
    const flips = 1 + pick(8);
    const at: number[] = [];
    for (let i = 0; i < flips; i++) {
      const offset = pick(data.length);
      data[offset]! ^= 1 << pick(8);
      at.push(offset);
    }
    return { data, how: `flip bits at ${at.join(',')}` };
  }
  const records = recordOffsets(data);
  const record = records[pick(records.length)] ?? 0;
  const offset = Math.min(record + 4 + pick(42), data.length - 4);
  const value = next() < 0.7 ? INTERESTING[pick(INTERESTING.length)]! : pick(2 ** 32);
  if (next() < 0.5) data.writeUInt16LE(value & 0xffff, offset);
  else data.writeUInt32LE(value >>> 0, offset);
  return { data, how: `write ${value} at ${offset}` };
}

/** Every file and link under `dir` with its contents (a link's: its target). Folders are made writable
 * on the way, so that a mutated 0500 folder can be removed by a test that does not run as root. */
function files(dir: string, prefix = ''): Map<string, Buffer> {
  const found = new Map<string, Buffer>();
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const stats = lstatSync(path);
    if (stats.isDirectory()) {
      chmodSync(path, 0o700);
      for (const [inner, contents] of files(path, `${prefix}${name}/`)) found.set(inner, contents);
    } else if (stats.isFile()) {
      chmodSync(path, 0o600);
      found.set(prefix + name, readFileSync(path));
    } else if (stats.isSymbolicLink()) {
      // A link's target is its entry's data: a mutated mode may turn it into a file holding it.
      found.set(prefix + name, Buffer.from(readlinkSync(path)));
    }
  }
  return found;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} hung for ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Runs `CASES` mutations of `seeds` through `extract`: each extracts or fails with an ArchiveError, never
 * writes outside its target, and (with `sameContents`) extracts nothing a seed didn't hold.
 */
async function fuzz(seeds: Buffer[], extractInto: (data: Buffer, target: string) => Promise<void>, sameContents: boolean): Promise<void> {
  const next = random(SEED);
  // The sandbox holds only `target`: anything else in it afterwards was written outside the target.
  const sandbox = mkdtempSync(join(tmpdir(), 'proxy-fuzz-'));
  const target = join(sandbox, 'target');
  const counts = { extracted: 0, refused: 0 };
  try {
    // What each unmutated archive extracts to: a mutated one that extracts must hold the same contents.
    const expected: Array<Set<string>> = [];
    for (const archive of seeds) {
      mkdirSync(target);
      await extractInto(archive, target);
      // '' too: a folder entry whose trailing slash is flipped away becomes an empty file.
      expected.push(new Set(['', ...[...files(target).values()].map((contents) => contents.toString('latin1'))]));
      rmSync(target, { recursive: true });
    }
    for (let n = 0; n < CASES; n++) {
      const which = Math.floor(next() * seeds.length);
      const { data, how } = mutate(seeds[which]!, next);
      const context = `case ${n} (${how} of seed archive ${which}), FUZZ_SEED=${SEED}`;
      mkdirSync(target);
      let extracted = false;
      try {
        await withTimeout(extractInto(data, target), CASE_TIMEOUT_MS, context);
        extracted = true;
      } catch (error) {
        if (!(error instanceof ArchiveError)) {
          throw new Error(`${context}: not an ArchiveError: ${(error as Error)?.stack ?? String(error)}`);
        }
      }
      counts[extracted ? 'extracted' : 'refused']++;
      const written = files(target);
      // A name or mode may have changed; the bytes of a ZIP's file can't have, or its CRC-32 would not match.
      if (extracted && sameContents) {
        for (const [path, contents] of written) {
          assert.ok(expected[which]!.has(contents.toString('latin1')), `${context}: ${path} came out with contents the archive never held`);
        }
      }
      assert.deepEqual(readdirSync(sandbox).filter((name) => name !== 'target'), [], `${context}: wrote outside the target`);
      rmSync(target, { recursive: true, force: true });
    }
  } finally {
    rmSync(sandbox, { recursive: true, force: true });
  }
  // Both outcomes must occur, or the mutations are not reaching the reader.
  assert.ok(counts.extracted > 0 && counts.refused > 0, JSON.stringify(counts));
}

test(`ZIP fuzz: ${CASES} mutated archives (FUZZ_SEED=${SEED})`, () => fuzz(seeds, (data, target) => extract(data, target, LIMITS), true));

// Tar has no checksum over data, only over headers: a flipped data byte extracts as it is.
const tarSeeds = [
  craftTar([
    { name: 'exec', data: '#!/bin/sh\necho {}\n', mode: 0o755 },
    { name: 'lib/', type: '5' },
    { name: 'lib/a.txt', data: 'a'.repeat(3000) },
    paxHeader({ path: `lib/${'p'.repeat(120)}` }),
    { name: 'x', data: 'pax' },
    { name: 'link', type: '2', linkName: 'lib/a.txt' },
    { name: 'hard', type: '1', linkName: 'exec' },
  ]),
];
tarSeeds.push(gzipSync(tarSeeds[0]!));

test(`tar fuzz: ${CASES} mutated tar and tar.gz archives (FUZZ_SEED=${SEED})`, () =>
  fuzz(tarSeeds, (data, target) => extractTar(Readable.from([data]), data[0] === 0x1f && data[1] === 0x8b, target, LIMITS), false));
