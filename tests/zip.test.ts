// Binary inits (spec/zip.md), black-box against the real proxy: archives made by real tools extract to
// exactly the expected tree, and hostile ones are refused with the action directory left as it was.

import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { describe, test } from 'node:test';
import { createDeflateRaw } from 'node:zlib';
import { ROOT, STUB, assertInitRefused, tree, withProxy, type RunningProxy, type Response } from './helpers.ts';
import { EXEC_ENTRY, craftZip } from './zipcraft.ts';

const FIXTURES = join(ROOT, 'tests', 'fixtures');
const STUB_RESULT = { error: 'This is a stub action. Replace it with custom logic.' };

function initZip(proxy: RunningProxy, archive: Buffer | string): Promise<Response> {
  const code = typeof archive === 'string' ? archive : archive.toString('base64');
  return proxy.post('/init', { value: { binary: true, code } });
}

const FIXTURE_TREES: Array<[file: string, fixture: string, expected: Record<string, string>]> = [
  ['info-zip-plain.zip', 'plain', { 'data.txt': 'f644', exec: 'f755' }],
  [
    'info-zip-recursive.zip',
    'tree',
    {
      exec: 'f755',
      lib: 'd755',
      'lib/deep': 'd755',
      'lib/deep/data.txt': 'f600',
      'lib/helper.sh': 'f750',
      private: 'd700',
      'private/key': 'f400',
    },
  ],
  ['info-zip-zip64.zip', 'zip64', { 'data.txt': 'f644', exec: 'f755' }],
  ['info-zip-pipe.zip', 'pipe', { exec: 'f755', 'numbers.txt': 'f644' }],
  ['info-zip-fz-pipe.zip', 'fz-pipe', { exec: 'f755' }],
  ['info-zip-comment.zip', 'comment', { exec: 'f755' }],
  ['symlink-venv.zip', 'venv', { bin: 'd755', 'bin/python': 'l->/usr/bin/python3', exec: 'f755' }],
  ['python-stored.zip', 'python', { 'data.txt': 'f640', exec: 'f755' }],
  ['python-deflated.zip', 'python', { 'data.txt': 'f640', exec: 'f755' }],
  [
    'java.jar',
    'jar',
    {
      'META-INF': 'd755',
      'META-INF/MANIFEST.MF': 'f644',
      com: 'd755',
      'com/example': 'd755',
      'com/example/Main.class': 'f644',
      exec: 'f755',
    },
  ],
  ['no-unix-attributes.zip', 'dos', { docs: 'd755', 'docs/readme.txt': 'f644', exec: 'f755' }],
];

describe('archives made by real tools', { concurrency: true }, () => {
  for (const [file, fixture, expected] of FIXTURE_TREES) {
    test(`${file} extracts to the expected tree and modes, and exec runs`, () =>
      withProxy({ stub: false }, async (proxy) => {
        const res = await initZip(proxy, readFileSync(join(FIXTURES, file)));
        assert.equal(res.status, 200, proxy.stderr.text);
        assert.deepEqual(tree(proxy.dir), expected);
        const run = await proxy.post('/run', { value: { n: 1 } });
        const result = run.json() as Record<string, unknown>;
        assert.equal(result.fixture, fixture);
        assert.deepEqual(result.args, { n: 1 });
        if (fixture === 'venv') assert.equal(result.python, '/usr/bin/python3');
      }));
  }

  test('file contents come out byte for byte (stored, deflated with data descriptors)', () =>
    withProxy({ stub: false, env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      assert.equal((await initZip(proxy, readFileSync(join(FIXTURES, 'info-zip-plain.zip')))).status, 200);
      assert.equal(readFileSync(join(proxy.dir, 'data.txt'), 'utf8'), 'some data\n');
      assert.equal((await initZip(proxy, readFileSync(join(FIXTURES, 'info-zip-pipe.zip')))).status, 200);
      const numbers = Array.from({ length: 2000 }, (_, i) => `${i + 1}\n`).join('');
      assert.equal(readFileSync(join(proxy.dir, 'numbers.txt'), 'utf8'), numbers);
    }));

  test('base64 wrapped in lines, as `base64` writes it, is accepted', () =>
    withProxy({}, async (proxy) => {
      const wrapped = readFileSync(join(FIXTURES, 'info-zip-plain.zip')).toString('base64').replace(/.{76}/g, '$&\n');
      assert.equal((await initZip(proxy, wrapped)).status, 200);
    }));
});

/** 1 GiB of zeros, deflated (about 1 MiB), made once. */
let gibOfZeros: Promise<Buffer> | undefined;
function deflatedGibOfZeros(): Promise<Buffer> {
  gibOfZeros ??= new Promise((resolve, reject) => {
    const deflate = createDeflateRaw({ level: 9 });
    const parts: Buffer[] = [];
    deflate.on('data', (part: Buffer) => parts.push(part));
    deflate.on('end', () => resolve(Buffer.concat(parts)));
    deflate.on('error', reject);
    const chunk = Buffer.alloc(16 * 1024 * 1024);
    let written = 0;
    const write = (): void => {
      while (written < 64) {
        written++;
        if (!deflate.write(chunk)) return void deflate.once('drain', write);
      }
      deflate.end();
    };
    write();
  });
  return gibOfZeros;
}

const valid = craftZip([EXEC_ENTRY, { name: 'lib/data.txt', data: 'x'.repeat(1000), method: 8 }]);
const OUTSIDE = `outside-${process.pid}`;
const LINK = 0o120777;

const HOSTILE: Array<{ name: string; archive: () => Promise<Buffer | string> | Buffer | string; cause: RegExp; env?: Record<string, string> }> = [
  { name: 'a ../ path', archive: () => craftZip([EXEC_ENTRY, { name: `../${OUTSIDE}`, data: 'x' }]), cause: new RegExp(`entry '\\.\\./${OUTSIDE}'.*outside|escapes`) },
  { name: 'a nested ../ path', archive: () => craftZip([EXEC_ENTRY, { name: `lib/../../${OUTSIDE}`, data: 'x' }]), cause: /entry 'lib\/\.\.\/\.\.\/outside-\d+'/ },
  { name: 'an absolute path', archive: () => craftZip([EXEC_ENTRY, { name: `/tmp/${OUTSIDE}`, data: 'x' }]), cause: /entry '\/tmp\/outside-\d+'.*absolute/ },
  { name: 'a NUL byte in a name', archive: () => craftZip([EXEC_ENTRY, { name: 'bad\0name', data: 'x' }]), cause: /entry 'bad\\0name'.*NUL/ },
  {
    name: 'a file written through a symlink entry',
    archive: () => craftZip([EXEC_ENTRY, { name: 'lib', data: dirname(STUB), mode: LINK }, { name: 'lib/pwned', data: 'x' }]),
    cause: /entry 'lib\/pwned' passes through the link 'lib'/,
  },
  { name: 'duplicate names', archive: () => craftZip([EXEC_ENTRY, { ...EXEC_ENTRY, data: 'other' }]), cause: /entry 'exec' is a duplicate/ },
  { name: 'an unsupported method', archive: () => craftZip([{ ...EXEC_ENTRY, method: 14 }]), cause: /entry 'exec' uses compression method 14/ },
  { name: 'an encrypted entry', archive: () => craftZip([{ ...EXEC_ENTRY, flags: 1 }]), cause: /entry 'exec' is encrypted/ },
  { name: 'a CRC mismatch', archive: () => craftZip([{ ...EXEC_ENTRY, crc: 1234 }]), cause: /entry 'exec' has CRC-32 .* but declares 0x000004d2/ },
  { name: 'a size mismatch (deflated)', archive: () => craftZip([{ ...EXEC_ENTRY, method: 8, size: 5 }]), cause: /entry 'exec' inflates past its declared 5 bytes/ },
  { name: 'a size mismatch (stored)', archive: () => craftZip([{ ...EXEC_ENTRY, size: 5 }]), cause: /entry 'exec' is stored with \d+ bytes but declares 5/ },
  {
    // A saturated directory offset without a ZIP64 locator is read as unzip does; a size that then
    // points at something other than a central header is still refused.
    name: 'a saturated offset, no ZIP64 locator, and a size that points at garbage',
    archive: () => saturateOffset(valid, 100),
    cause: /zip: no central directory header at offset/,
  },
  { name: 'a saturated offset, no ZIP64 locator, and a size larger than the archive', archive: () => saturateOffset(valid, 1 << 20), cause: /zip: the end record needs a ZIP64 locator, and there is none/ },
  { name: 'a truncated archive', archive: () => valid.subarray(0, valid.length - 30), cause: /zip: .*(truncated|end of central directory)/ },
  {
    name: 'garbage with a ZIP signature',
    archive: () => Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(200, 0x41), Buffer.from('PK\x05\x06'), Buffer.alloc(18, 0xff)]),
    cause: /zip: /,
  },
  { name: 'text that is not base64 at all', archive: () => 'this is *not* base64!', cause: /not valid base64/ },
  {
    name: 'more entries than PROXY_ZIP_MAX_ENTRIES',
    env: { PROXY_ZIP_MAX_ENTRIES: '3' },
    archive: () => craftZip([EXEC_ENTRY, ...Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: 'x' }))]),
    cause: /holds 6 entries, over the limit of 3/,
  },
  {
    name: 'more bytes than PROXY_ZIP_MAX_BYTES',
    env: { PROXY_ZIP_MAX_BYTES: '1500' },
    archive: () => craftZip([EXEC_ENTRY, { name: 'big', data: Buffer.alloc(2000), method: 8 }]),
    cause: /inflates to more than the limit of 1500 bytes \(at 'big'/,
  },
  {
    name: 'a 1 GiB-of-zeros bomb that declares its size',
    archive: async () => craftZip([EXEC_ENTRY, { name: 'bomb', method: 8, compressedData: await deflatedGibOfZeros(), size: 2 ** 30, crc: 0 }]),
    cause: /inflates to more than the limit of 1073741823 bytes \(at 'bomb', which declares 1073741824\)/,
  },
  {
    name: 'a 1 GiB-of-zeros bomb that lies about its size',
    archive: async () => craftZip([EXEC_ENTRY, { name: 'bomb', method: 8, compressedData: await deflatedGibOfZeros(), size: 1000, crc: 0 }]),
    cause: /entry 'bomb' inflates past its declared 1000 bytes/,
  },
  { name: 'an archive without exec', archive: () => craftZip([{ name: 'main.sh', data: 'echo' }]), cause: /the archive has no 'exec' at its root/ },
];

describe('hostile and broken archives', { concurrency: true }, () => {
  for (const { name, archive, cause, env } of HOSTILE) {
    test(`${name}: 502, the cause on stderr, the action directory as it was`, () =>
      withProxy({ env }, async (proxy) => {
        const before = tree(proxy.dir);
        await assertInitRefused(proxy, await initZip(proxy, await archive()), cause, before);
        assert.ok(!existsSync(join(dirname(proxy.dir), OUTSIDE)) && !existsSync(join('/tmp', OUTSIDE)), 'nothing outside');
        assert.ok(!existsSync(join(dirname(STUB), 'pwned')), 'nothing through the link');
        // Still the stub, and still open to a good init.
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
        assert.equal((await initZip(proxy, valid)).status, 200);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { crafted: true });
        assert.equal(readFileSync(join(proxy.dir, 'lib', 'data.txt'), 'utf8'), 'x'.repeat(1000));
      }));
  }

  test('a failed init over an earlier action leaves that action exactly as it was', () =>
    withProxy({ env: { PROXY_ALLOW_REINIT: '1' } }, async (proxy) => {
      assert.equal((await initZip(proxy, readFileSync(join(FIXTURES, 'info-zip-recursive.zip')))).status, 200);
      const before = tree(proxy.dir);
      const bad = craftZip([EXEC_ENTRY, { name: 'lib/helper.sh', data: 'new' }, { name: 'zz', data: 'x', crc: 1 }]);
      assert.equal((await initZip(proxy, bad)).status, 502);
      assert.deepEqual(tree(proxy.dir), before);
      assert.equal(readFileSync(join(proxy.dir, 'lib', 'helper.sh'), 'utf8'), 'helper\n');
      assert.equal(((await proxy.post('/run', { value: {} })).json() as { fixture: string }).fixture, 'tree');
    }));
});

/** `archive` with its end record's directory offset saturated and its directory size set to `size`. */
function saturateOffset(archive: Buffer, size: number): Buffer {
  const copy = Buffer.from(archive);
  const end = copy.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  copy.writeUInt32LE(size, end + 12);
  copy.writeUInt32LE(0xffffffff, end + 16);
  return copy;
}
