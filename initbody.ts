// An init request body without a second copy of its code.
//
// An init's `value.code` is most of its body: OpenWhisk's largest action is 48 MB of code, 64 MB of
// base64, and its smallest memory limit 128 MB. Held whole, then made text, then decoded, the code would
// be in memory three times. So the body's structure is followed as its chunks arrive (strings, nesting
// and keys only, nothing parsed) to find where the code string's content is; the chunks are kept as they
// came, the code's part of them is handed on in those pieces, and only the rest of the body (with `""` in
// the code's place) is joined and scanned as JSON (json.ts checks everything there).

import { isAscii } from 'node:buffer';
import { BACKSLASH, CLOSE_BRACE, CLOSE_BRACKET, COLON, COMMA, OPEN_BRACE, OPEN_BRACKET, QUOTE } from './json.ts';

/** Deeper than json.ts accepts: past it the finder stops following, and the body is read as a whole. */
const MAX_FOLLOWED_DEPTH = 1001;

/** Keys longer than this can't be `value` or `code`, however escaped: not collected. */
const MAX_KEY_BYTES = 64;

export interface InitBody {
  /** The body with the content of `value.code` taken out (`"code": ""`), or the whole body. */
  rest: Buffer;
  /**
   * The content of the last `value.code` string, between its quotes, in the pieces it arrived in; only
   * when it is plain (ASCII without escapes or spaces: base64 is), else it stays in `rest`.
   */
  code?: Buffer[];
}



/** Follows an init body's JSON structure chunk by chunk, and says where `value.code`'s string content is. */
export class CodeFinder {
  private readonly chunks: Buffer[] = [];
  private received = 0;
  /** Whether each open container is an object, outermost first. */
  private readonly containers: boolean[] = [];
  private expectKey = false;
  private inString = false;
  private escaped = false;
  private stringIsKey = false;
  private stringStart = 0;
  private key: number[] | undefined;
  /** The last key read at depth 1 (the top-level object) and depth 2. */
  private readonly keys: string[] = ['', '', ''];
  /** Whether depth 2 is the object of the top level's `value`. */
  private inValue = false;
  private lost = false;
  private span: [number, number] | undefined;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    const base = this.received;
    this.received += chunk.length;
    if (this.lost) return;
    for (let i = 0; i < chunk.length; ) {
      if (this.inString) {
        i = this.inStringAt(chunk, i, base);
        continue;
      }
      const byte = chunk[i]!;
      if (byte === QUOTE) {
        this.inString = true;
        this.stringIsKey = this.expectKey;
        this.stringStart = base + i + 1;
        this.key = this.stringIsKey && this.containers.length <= 2 ? [] : undefined;
      } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        const depth = this.containers.push(byte === OPEN_BRACE);
        if (depth > MAX_FOLLOWED_DEPTH) return void (this.lost = true);
        this.expectKey = byte === OPEN_BRACE;
        if (depth === 2 && byte === OPEN_BRACE && this.keys[1] === 'value') this.inValue = true;
        if (depth <= 2) this.keys[depth] = '';
      } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
        if (this.containers.pop() === undefined) return void (this.lost = true);
        if (this.containers.length < 2) this.inValue = false;
        this.expectKey = false;
      } else if (byte === COLON) this.expectKey = false;
      else if (byte === COMMA) this.expectKey = this.containers[this.containers.length - 1] === true;
      i++;
    }
  }

  /** Reads on inside a string from `i`; returns where to go on. */
  private inStringAt(chunk: Buffer, i: number, base: number): number {
    if (this.escaped) {
      this.escaped = false;
      this.key?.push(chunk[i]!);
      return i + 1;
    }
    const quote = chunk.indexOf(QUOTE, i);
    const backslash = chunk.indexOf(BACKSLASH, i);
    const stop = quote === -1 ? backslash : backslash === -1 ? quote : Math.min(quote, backslash);
    const end = stop === -1 ? chunk.length : stop;
    if (this.key) {
      if (this.key.length + end - i > MAX_KEY_BYTES) this.key = undefined;
      else for (let k = i; k < end; k++) this.key.push(chunk[k]!);
    }
    if (stop === -1) return chunk.length;
    if (stop === backslash) {
      this.escaped = true;
      this.key?.push(BACKSLASH);
      return stop + 1;
    }
    this.inString = false;
    this.stringEnded(base + stop);
    return stop + 1;
  }

  private stringEnded(end: number): void {
    const depth = this.containers.length;
    if (this.stringIsKey) {
      // Only plain keys are recognized: an escaped spelling of "code" takes the whole-body path.
      if (depth <= 2) this.keys[depth] = this.key ? String.fromCharCode(...this.key) : '';
      this.key = undefined;
    } else if (depth === 2 && this.inValue && this.keys[2] === 'code') this.span = [this.stringStart, end];
  }

  /** The body, with the code's content taken out when it was found. */
  finish(): InitBody {
    const span = this.lost ? undefined : this.span;
    if (!span) return { rest: this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.received) };
    const [start, end] = span;
    const before: Buffer[] = [];
    const code: Buffer[] = [];
    const after: Buffer[] = [];
    let at = 0;
    for (const chunk of this.chunks) {
      const from = at;
      at += chunk.length;
      if (from < start) before.push(chunk.subarray(0, Math.min(chunk.length, start - from)));
      if (at > start && from < end) code.push(chunk.subarray(Math.max(0, start - from), Math.min(chunk.length, end - from)));
      if (at > end) after.push(chunk.subarray(Math.max(0, end - from)));
    }
    this.chunks.length = 0;
    // Escapes, spaces (wrapped base64 in a JSON string) or anything not ASCII: the whole body is read as JSON.
    // Control characters (invalid JSON) are left to the code's reader: base64's decoding refuses them.
    if (code.some((piece) => !isAscii(piece) || piece.includes(BACKSLASH) || piece.includes(0x20))) return { rest: Buffer.concat([...before, ...code, ...after]) };
    return { rest: Buffer.concat([...before, ...after]), code };
  }
}
