// json.ts against JSON.parse: the scanner must accept exactly what JSON.parse accepts (up to the depth
// limit), find the same members, and compact() must not change a value. Random documents and random
// mutations of them, from a fixed seed so a failure can be replayed.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_DEPTH, compact, isTooDeep, membersOf, scan, stringValue } from '../json.ts';

/** A small deterministic generator (mulberry32). */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SPACE = ['', '', ' ', '\n', '\t', '\r\n '];
const NUMBERS = ['0', '-0', '1.10', '12345678901234567890', '1e400', '-2.5E-3', '1E+2', '0.0'];
const STRINGS = ['""', '"a b"', '"\\u00e9\\n\\/"', '"\\"quoted\\""', '"é€😀"', '"\\\\"', '"__proto__"'];

function document(next: () => number, depth: number): string {
  const pick = <T>(items: T[]): T => items[Math.floor(next() * items.length)]!;
  const ws = (): string => pick(SPACE);
  const roll = next();
  if (depth > 4 || roll < 0.4) return pick([...NUMBERS, ...STRINGS, 'true', 'false', 'null']);
  const count = Math.floor(next() * 4);
  const items = Array.from({ length: count }, () => document(next, depth + 1));
  if (roll < 0.7) return `[${ws()}${items.map((item) => `${item}${ws()}`).join(`,${ws()}`)}]`;
  return `{${ws()}${items.map((item) => `${pick([...STRINGS, '"a"', '"a"', '"1"'])}${ws()}:${ws()}${item}`).join(`,${ws()}`)}${ws()}}`;
}

const MUTATIONS = ['', ',', ':', '"', '\\', '{', '}', '[', ']', '\u0001', 'x', '-', '.', 'e', '0', ' '];

test('scan() accepts exactly what JSON.parse accepts; members and compact() agree with it', () => {
  const next = random(20261129);
  let accepted = 0;
  for (let i = 0; i < 20_000; i++) {
    let text = document(next, 0);
    if (i % 2 === 1) {
      // A random edit: delete, insert or replace one character.
      const at = Math.floor(next() * (text.length + 1));
      const insert = MUTATIONS[Math.floor(next() * MUTATIONS.length)]!;
      text = text.slice(0, at) + insert + text.slice(at + Math.floor(next() * 2));
    }
    let expected: unknown;
    let valid = true;
    try {
      expected = JSON.parse(text);
    } catch {
      valid = false;
    }
    let scanned: ReturnType<typeof scan> | undefined;
    try {
      scanned = scan(text);
    } catch (error) {
      assert.ok(error instanceof SyntaxError, String(error));
    }
    assert.equal(scanned !== undefined, valid, `scan and JSON.parse disagree on ${JSON.stringify(text)}`);
    if (!scanned) continue;
    accepted++;
    assert.equal(scanned.text, text.replace(/^[ \t\n\r]+|[ \t\n\r]+$/g, ''), 'the text without the whitespace around it');
    assert.deepEqual(JSON.parse(compact(text)), expected, `compact changed ${JSON.stringify(text)}`);
    assert.doesNotMatch(compact(scanned.text).replace(/"(?:[^"\\]|\\.)*"/g, '""'), /\s/, 'no whitespace outside strings');
    if (scanned.members) {
      // The fast walk over checked texts finds what the scanner found, at every level.
      assert.deepEqual(membersOf(scanned.text), scanned.members);
      for (const entry of scanned.members.values()) {
        if (entry.value.startsWith('{')) assert.deepEqual(membersOf(entry.value), scan(entry.value).members, entry.value);
        assert.equal(scanned.text.slice(entry.at, entry.at + entry.value.length), entry.value, 'a member knows where it is');
      }
      const members = [...scanned.members].map(([name, entry]) => [name, stringValue(entry.key), JSON.parse(entry.value)]);
      assert.deepEqual(
        members.map(([name, key, value]) => [name, key, value]),
        members.map(([name, , value]) => [name, name, value]),
        'a member key decodes to its name',
      );
      // Same names, same values; the order is of first appearance, which for integer-like keys differs from JS objects.
      assert.deepEqual(new Map(members.map(([name, , value]) => [name, value])), new Map(Object.entries(expected as object)));
    }
  }
  assert.ok(accepted > 10_000, `only ${accepted} valid documents were tried`);
});

test('nesting: MAX_DEPTH levels pass, one more is refused by depth, ten million cost no stack', () => {
  const nest = (levels: number): string => `${'['.repeat(levels)}${']'.repeat(levels)}`;
  assert.equal(scan(nest(MAX_DEPTH)).kind, 'array');
  assert.equal(scan(`{"a":${nest(MAX_DEPTH - 1)}}`).kind, 'object');
  for (const text of [nest(MAX_DEPTH + 1), `{"a":${nest(MAX_DEPTH)}}`, '['.repeat(10_000_000)]) {
    assert.throws(() => scan(text), (error: unknown) => isTooDeep(error));
  }
  assert.throws(() => scan('[1,]'), (error: unknown) => error instanceof SyntaxError && !isTooDeep(error));
});

test('a repeated name keeps its last value in the place of its first, as JSON.parse does', () => {
  const { members } = scan('{"a":1,"b":2,"a":3}');
  assert.deepEqual([...members!].map(([name, entry]) => [name, entry.value]), [['a', '3'], ['b', '2']]);
});
