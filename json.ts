// JSON as it was sent.
//
// The proxy passes JSON texts on: a request's arguments to the action, the action's result to the
// client. A parse-and-stringify round trip in JavaScript would change them (12345678901234567890 becomes
// 12345678901234567000, 1e400 becomes null, a "2" key moves first, escapes are rewritten), and JSON.parse
// builds the whole value before anything can look at it: ten million levels of `[` cost a gigabyte and
// seconds of a blocked event loop. So the proxy does not parse what it passes on. scan() checks a text
// in one linear pass without building any value, refuses nesting deeper than MAX_DEPTH, and notes where
// the top-level object's members are; the proxy reassembles texts from those spans and parses only the
// small pieces it must read itself (a status code, a header map, an environment value).

/** The deepest nesting accepted, in requests and results alike. */
export const MAX_DEPTH = 1000;

export type Kind = 'object' | 'array' | 'string' | 'number' | 'boolean' | 'null';

/** One member of an object: its name as sent (quoted, escapes kept) and its value's text. */
export interface Member {
  key: string;
  value: string;
  /** Where the value starts in the scanned text (-1 for a member made by member()). */
  at: number;
  /**
   * A string value kept as the bytes that arrived, between its quotes, in the pieces they came in
   * (`value` is then `""`): an init's plain ASCII code (initbody.ts), never made a second copy as text.
   */
  source?: Buffer[];
}

export interface Scanned {
  /** The value's text as sent, without the whitespace around it. */
  text: string;
  kind: Kind;
  /**
   * An object's members by name, in the order names first appear; a repeated name keeps its last value,
   * as JSON.parse does. Undefined for anything but an object.
   */
  members: Map<string, Member> | undefined;
}

// JSON's structural characters, as char codes (initbody.ts follows structure with them too).
export const QUOTE = 0x22;
export const BACKSLASH = 0x5c;
export const COMMA = 0x2c;
export const COLON = 0x3a;
export const OPEN_BRACE = 0x7b;
export const CLOSE_BRACE = 0x7d;
export const OPEN_BRACKET = 0x5b;
export const CLOSE_BRACKET = 0x5d;

// RFC 8259's grammar, as sticky expressions run at the cursor. A string's plain run is one greedy
// character class, which V8 matches without a backtracking stack, however long the string.
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const ESCAPE = /\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

/** Where scanning is in a text. */
interface Cursor {
  text: string;
  at: number;
}

/**
 * Checks that `text` is one JSON value (RFC 8259, as JSON.parse reads it) nested at most MAX_DEPTH
 * deep, and returns it with its kind and, for an object, its members. Throws a SyntaxError naming the
 * position otherwise. Linear in the text; allocates only the member table.
 */
export function scan(text: string, maxMembers = Infinity): Scanned {
  const cursor: Cursor = { text, at: 0 };
  skipSpace(cursor);
  const start = cursor.at;
  const members = text.charCodeAt(start) === OPEN_BRACE ? new Map<string, Member>() : undefined;
  value(cursor, 0, members, maxMembers);
  const end = cursor.at;
  skipSpace(cursor);
  if (cursor.at < text.length) throw unexpected(cursor);
  return { text: start === 0 && end === text.length ? text : text.slice(start, end), kind: kindOf(text, start), members };
}

/**
 * The members of an object's text that scan() has checked already (a member of a scanned body, say).
 * It is not checked again: the walk only skips strings (with indexOf, at memchr speed: an init's 48 MB
 * of base64 code is not read twice) and counts brackets. Any other text ends in a SyntaxError, never
 * a loop.
 */
export function membersOf(text: string, maxMembers = Infinity): Map<string, Member> {
  if (text.charCodeAt(0) !== OPEN_BRACE) throw new SyntaxError('expected a JSON object');
  const members = new Map<string, Member>();
  let at = skipSpaceFrom(text, 1);
  if (text.charCodeAt(at) === CLOSE_BRACE) return members;
  for (;;) {
    const keyStart = at;
    at = endOfString(text, at);
    const key = text.slice(keyStart, at);
    at = skipSpaceFrom(text, skipSpaceFrom(text, at) + 1); // the colon
    const valueStart = at;
    at = endOfValue(text, at);
    members.set(stringValue(key), { key, value: text.slice(valueStart, at), at: valueStart });
    if (members.size > maxMembers) throw new TooManyMembers(maxMembers);
    at = skipSpaceFrom(text, at);
    const code = text.charCodeAt(at);
    if (code === CLOSE_BRACE) return members;
    if (code !== COMMA) throw new SyntaxError(`expected a scanned JSON object (at position ${at})`);
    at = skipSpaceFrom(text, at + 1);
  }
}

/** Where the string whose opening quote is at `at` ends (after its closing quote), in a scanned text. */
function endOfString(text: string, at: number): number {
  for (let quote = text.indexOf('"', at + 1); quote !== -1; quote = text.indexOf('"', quote + 1)) {
    let backslashes = 0;
    while (text.charCodeAt(quote - 1 - backslashes) === BACKSLASH) backslashes++;
    if (backslashes % 2 === 0) return quote + 1;
  }
  throw new SyntaxError(`expected a scanned JSON string (at position ${at})`);
}

/** Where the value that starts at `at` ends, in a scanned text. */
function endOfValue(text: string, at: number): number {
  let depth = 0;
  while (at < text.length) {
    const code = text.charCodeAt(at);
    if (code === QUOTE) {
      at = endOfString(text, at);
      if (depth === 0) return at;
      continue;
    }
    if (code === OPEN_BRACE || code === OPEN_BRACKET) depth++;
    else if (code === CLOSE_BRACE || code === CLOSE_BRACKET || code === COMMA || isSpace(code)) {
      if (depth === 0) return at; // the end of a number or literal
      if (code !== COMMA && !isSpace(code) && --depth === 0) return at + 1;
    }
    at++;
  }
  if (depth === 0) return at;
  throw new SyntaxError('expected a scanned JSON value');
}

/** The kind of the JSON value whose text starts at `at`. */
export function kindOf(text: string, at = 0): Kind {
  switch (text.charCodeAt(at)) {
    case OPEN_BRACE:
      return 'object';
    case OPEN_BRACKET:
      return 'array';
    case QUOTE:
      return 'string';
    case 0x74: // t
    case 0x66: // f
      return 'boolean';
    case 0x6e: // n
      return 'null';
    default:
      return 'number';
  }
}

/** The string a JSON string's text stands for. */
export function stringValue(text: string): string {
  return text.includes('\\') ? (JSON.parse(text) as string) : text.slice(1, -1);
}

/** An object's text from its members, in the order given. */
export function objectText(members: Iterable<Member>): string {
  const parts: string[] = [];
  for (const member of members) parts.push(`${member.key}:${member.value}`);
  return `{${parts.join(',')}}`;
}

/** A member named `name` (any string) with the value text `value`. */
export function member(name: string, value: string): Member {
  return { key: JSON.stringify(name), value, at: -1 };
}

/**
 * A scanned text with the whitespace between its tokens taken out, so that it fits on one line
 * (newlines inside strings are escapes already). Everything else stays as it was sent.
 */
export function compact(text: string): string {
  if (!/[ \t\n\r]/.test(text)) return text;
  const cursor: Cursor = { text, at: 0 };
  const parts: string[] = [];
  let from = 0;
  while (cursor.at < text.length) {
    const code = text.charCodeAt(cursor.at);
    if (code === QUOTE) {
      string(cursor);
    } else if (isSpace(code)) {
      parts.push(text.slice(from, cursor.at));
      skipSpace(cursor);
      from = cursor.at;
    } else {
      cursor.at++;
    }
  }
  parts.push(text.slice(from));
  return parts.join('');
}

function value(cursor: Cursor, depth: number, members?: Map<string, Member>, maxMembers = Infinity): void {
  switch (cursor.text.charCodeAt(cursor.at)) {
    case OPEN_BRACE:
      return object(cursor, depth + 1, members, maxMembers);
    case OPEN_BRACKET:
      return array(cursor, depth + 1);
    case QUOTE:
      return string(cursor);
    case 0x74:
      return literal(cursor, 'true');
    case 0x66:
      return literal(cursor, 'false');
    case 0x6e:
      return literal(cursor, 'null');
    default:
      return number(cursor);
  }
}

function object(cursor: Cursor, depth: number, members: Map<string, Member> | undefined, maxMembers: number): void {
  if (depth > MAX_DEPTH) throw tooDeep(cursor);
  const { text } = cursor;
  const start = cursor.at;
  sequence(cursor, CLOSE_BRACE, () => {
    if (text.charCodeAt(cursor.at) !== QUOTE) throw unexpected(cursor);
    const keyStart = cursor.at;
    string(cursor);
    const keyEnd = cursor.at;
    skipSpace(cursor);
    expect(cursor, COLON);
    skipSpace(cursor);
    const valueStart = cursor.at;
    value(cursor, depth);
    if (members) {
      const key = text.slice(keyStart, keyEnd);
      members.set(stringValue(key), { key, value: text.slice(valueStart, cursor.at), at: valueStart - start });
      // Decided here, not after: millions of members would cost seconds and a gigabyte to collect.
      if (members.size > maxMembers) throw new TooManyMembers(maxMembers);
    }
  });
}

function array(cursor: Cursor, depth: number): void {
  if (depth > MAX_DEPTH) throw tooDeep(cursor);
  sequence(cursor, CLOSE_BRACKET, () => value(cursor, depth));
}

/** The items of an object or array: the cursor on its opening bracket, `item` read at each, up to `close`. */
function sequence(cursor: Cursor, close: number, item: () => void): void {
  cursor.at++; // { or [
  skipSpace(cursor);
  if (cursor.text.charCodeAt(cursor.at) === close) {
    cursor.at++;
    return;
  }
  for (;;) {
    item();
    skipSpace(cursor);
    if (cursor.text.charCodeAt(cursor.at) === close) {
      cursor.at++;
      return;
    }
    expect(cursor, COMMA);
    skipSpace(cursor);
  }
}

function string(cursor: Cursor): void {
  const { text } = cursor;
  let at = cursor.at + 1; // "
  for (;;) {
    PLAIN.lastIndex = at;
    PLAIN.test(text);
    at = PLAIN.lastIndex;
    const code = text.charCodeAt(at);
    if (code === QUOTE) {
      cursor.at = at + 1;
      return;
    }
    ESCAPE.lastIndex = at;
    if (code !== BACKSLASH || !ESCAPE.test(text)) {
      cursor.at = at;
      throw unexpected(cursor); // a control character, a bad escape, or the end
    }
    at = ESCAPE.lastIndex;
  }
}

function number(cursor: Cursor): void {
  NUMBER.lastIndex = cursor.at;
  if (!NUMBER.test(cursor.text)) throw unexpected(cursor);
  cursor.at = NUMBER.lastIndex;
}

function literal(cursor: Cursor, word: string): void {
  if (!cursor.text.startsWith(word, cursor.at)) throw unexpected(cursor);
  cursor.at += word.length;
}

function expect(cursor: Cursor, code: number): void {
  if (cursor.text.charCodeAt(cursor.at) !== code) throw unexpected(cursor);
  cursor.at++;
}

function isSpace(code: number): boolean {
  return code === 0x20 || code === 0x0a || code === 0x0d || code === 0x09;
}

function skipSpace(cursor: Cursor): void {
  cursor.at = skipSpaceFrom(cursor.text, cursor.at);
}

function skipSpaceFrom(text: string, at: number): number {
  while (isSpace(text.charCodeAt(at))) at++;
  return at;
}

function unexpected(cursor: Cursor): SyntaxError {
  if (cursor.at >= cursor.text.length) return new SyntaxError('unexpected end of JSON');
  return new SyntaxError(`unexpected ${JSON.stringify(cursor.text[cursor.at])} at position ${cursor.at}`);
}

const TOO_DEEP = `nested deeper than ${MAX_DEPTH} levels`;

function tooDeep(cursor: Cursor): SyntaxError {
  return new SyntaxError(`${TOO_DEEP} (at position ${cursor.at})`);
}

/** An object with more distinct members than its reader accepts (scan() and membersOf() with a limit). */
export class TooManyMembers extends RangeError {
  constructor(limit: number) {
    super(`more than ${limit} members`);
    this.name = 'TooManyMembers';
  }
}

/** Whether scan() refused a text for its nesting, not its syntax. */
export function isTooDeep(error: unknown): boolean {
  return error instanceof SyntaxError && error.message.startsWith(TOO_DEEP);
}
