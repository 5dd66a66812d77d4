// Archives by content (spec/delivery.md): a binary init's decoded bytes decide what it is. ZIP (zip.test.ts
// has its own suite), gzip'd or plain tar read with ZIP's rules, and anything else as `exec` itself; one
// top-level folder holding `exec` is the root. Black-box against the real proxy, archives made by the
// real `tar` and `zip` where they can be, crafted where no tool would write them.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { assertInitRefused, peakRss, rss, tree, withProxy, withTempDir, type RunningProxy, type Response } from './helpers.ts';
import { craftTar, paxHeader, type TarEntry } from './tarcraft.ts';

const EXEC = '#!/bin/bash\necho "{\\"data\\":\\"$(cat lib/data.txt)\\"}"\n';

function initBinary(proxy: RunningProxy, bytes: Buffer): Promise<Response> {
  return proxy.post('/init', { value: { binary: true, code: bytes.toString('base64') } });
}

/** A folder with an action in it: exec, lib/data.txt, a link to it, a private folder. */
function action(dir: string): string {
  const root = join(dir, 'action');
  mkdirSync(join(root, 'lib'), { recursive: true });
  mkdirSync(join(root, 'private'), { mode: 0o700 });
  writeFileSync(join(root, 'exec'), EXEC, { mode: 0o755 });
  writeFileSync(join(root, 'lib', 'data.txt'), 'from the archive', { mode: 0o640 });
  symlinkSync('lib/data.txt', join(root, 'data-link'));
  execFileSync('chmod', ['0700', join(root, 'private')]);
  return root;
}

const ACTION_TREE = { 'data-link': 'l->lib/data.txt', exec: 'f755', lib: 'd755', 'lib/data.txt': 'f640', private: 'd700' };

function tar(cwd: string, args: string[]): Buffer {
  return execFileSync('tar', ['-c', ...args], { cwd, maxBuffer: 1 << 30 });
}

describe('archives by content', { concurrency: 4 }, () => {
  const cases: Array<[string, (dir: string) => Buffer]> = [
    ['a .tar.gz of the contents (tar -czf)', (dir) => tar(action(dir), ['-z', '-f', '-', '.'])],
    ['a plain tar (ustar)', (dir) => tar(action(dir), ['--format=ustar', '-f', '-', 'exec', 'lib', 'private', 'data-link'])],
    ['a PAX tar', (dir) => tar(action(dir), ['--format=pax', '-z', '-f', '-', '.'])],
    ['npm pack\'s .tgz: everything under package/', (dir) => tar(dirname(action(dir)), ['-z', '--transform=s,^action,package,', '-f', '-', 'action'])],
    [
      'a folder zipped instead of its contents',
      (dir) => {
        action(dir);
        // Into a file: zip can't store a link's target into a pipe.
        execFileSync('zip', ['-q', '-r', '-y', 'action.zip', 'action'], { cwd: dir });
        return readFileSync(join(dir, 'action.zip'));
      },
    ],
  ];
  for (const [name, make] of cases) {
    test(`${name}: extracted with modes and links, and it runs`, () =>
      withTempDir((dir) =>
        withProxy({}, async (proxy) => {
          const res = await initBinary(proxy, make(dir));
          assert.equal(res.status, 200, proxy.stderr.text);
          assert.deepEqual(tree(proxy.dir), ACTION_TREE);
          assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { data: 'from the archive' });
        }),
      ));
  }

  test('GNU tar with a hard link, npm pack\'s own .tgz, Python\'s tarfile with PAX headers', () =>
    withTempDir(async (dir) => {
      const root = action(dir);
      execFileSync('ln', [join(root, 'exec'), join(root, 'exec-again')]);
      await withProxy({}, async (proxy) => {
        assert.equal((await initBinary(proxy, tar(root, ['-z', '-f', '-', '.']))).status, 200, proxy.stderr.text);
        assert.equal(tree(proxy.dir)['exec-again'], 'f755');
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { data: 'from the archive' });
      });
      // npm pack: everything under package/, exec among the package's files.
      const pkg = join(dir, 'pkg');
      mkdirSync(pkg);
      writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'packed-action', version: '1.0.0', files: ['exec'] }));
      writeFileSync(join(pkg, 'exec'), '#!/bin/sh\necho \'{"packed":true}\'\n', { mode: 0o755 });
      const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: pkg }).toString().trim();
      await withProxy({}, async (proxy) => {
        assert.equal((await initBinary(proxy, readFileSync(join(dir, tgz)))).status, 200, proxy.stderr.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { packed: true });
      });
      const python = `import io, sys, tarfile
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w:gz', format=tarfile.PAX_FORMAT) as tar:
    for name, data, mode in [('exec', '#!/bin/sh\\ncat "${'ü'.repeat(60)}/${'x'.repeat(80)}"\\n'.encode(), 0o755), ('${'ü'.repeat(60)}/${'x'.repeat(80)}', b'{"python":true}', 0o644)]:
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = mode
        tar.addfile(info, io.BytesIO(data))
sys.stdout.buffer.write(buf.getvalue())
`;
      await withProxy({}, async (proxy) => {
        assert.equal((await initBinary(proxy, execFileSync('python3', ['-c', python]))).status, 200, proxy.stderr.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { python: true });
      });
    }));

  test('anything else is exec itself, mode 0755: a program delivered as it is', () =>
    withProxy({}, async (proxy) => {
      const res = await initBinary(proxy, Buffer.from('#!/bin/sh\necho \'{"single":true}\'\n'));
      assert.equal(res.status, 200, proxy.stderr.text);
      assert.deepEqual(tree(proxy.dir), { exec: 'f755' });
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { single: true });
    }));

  test('an ELF binary delivered as it is runs', () =>
    withProxy({}, async (proxy) => {
      // /bin/echo prints its arguments: the activation's JSON is its one argument, and its last line.
      const res = await initBinary(proxy, readFileSync('/bin/echo'));
      assert.equal(res.status, 200, proxy.stderr.text);
      assert.deepEqual((await proxy.post('/run', { value: { echoed: 1 } })).json(), { echoed: 1 });
    }));

  test('GNU long names past 100 bytes, for a path and a link target (tar --format=gnu)', () =>
    withTempDir((dir) =>
      withProxy({}, async (proxy) => {
        const long = `${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(40)}`;
        mkdirSync(join(dir, dirname(long)), { recursive: true });
        writeFileSync(join(dir, 'exec'), `#!/bin/bash\necho "{\\"data\\":\\"$(cat link)\\"}"\n`, { mode: 0o755 });
        writeFileSync(join(dir, long), 'long');
        symlinkSync(long, join(dir, 'link'));
        const res = await initBinary(proxy, tar(dir, ['--format=gnu', '-f', '-', '.']));
        assert.equal(res.status, 200, proxy.stderr.text);
        assert.equal(tree(proxy.dir).link, `l->${long}`);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { data: 'long' });
      }),
    ));

  test('PAX paths and link targets past 100 bytes override the header', () =>
    withProxy({}, async (proxy) => {
      const long = `${'p'.repeat(150)}/x`;
      const archive = craftTar([
        { name: 'exec', data: '#!/bin/sh\ncat "$(dirname "$0")/link"\n', mode: 0o755 },
        paxHeader({ path: long }),
        { name: 'ignored-name', data: '{"pax":true}' },
        paxHeader({ linkpath: long }),
        { name: 'link', type: '2', linkName: 'ignored-target' },
      ]);
      assert.equal((await initBinary(proxy, gzipSync(archive))).status, 200, proxy.stderr.text);
      assert.equal(tree(proxy.dir).link, `l->${long}`);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { pax: true });
    }));

  test('a hard link to an earlier file of the archive', () =>
    withProxy({}, async (proxy) => {
      const archive = craftTar([
        { name: 'real', data: '#!/bin/sh\necho \'{"hard":true}\'\n', mode: 0o755 },
        { name: 'exec', type: '1', linkName: 'real' },
      ]);
      assert.equal((await initBinary(proxy, archive)).status, 200, proxy.stderr.text);
      assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { hard: true });
    }));
});

const EXEC_ENTRY: TarEntry = { name: 'exec', data: '#!/bin/sh\necho {}\n', mode: 0o755 };

const HOSTILE: Array<{ name: string; archive: () => Buffer; cause: RegExp; env?: Record<string, string> }> = [
  { name: 'a ../ path', archive: () => craftTar([EXEC_ENTRY, { name: '../outside-tar', data: 'x' }]), cause: /tar: entry '\.\.\/outside-tar' escapes/ },
  { name: 'an absolute path', archive: () => craftTar([EXEC_ENTRY, { name: '/tmp/outside-tar', data: 'x' }]), cause: /tar: entry '\/tmp\/outside-tar' is an absolute path/ },
  {
    name: 'a file through a symlink that comes first',
    archive: () => craftTar([EXEC_ENTRY, { name: 'lib', type: '2', linkName: '/tmp' }, { name: 'lib/pwned', data: 'x' }]),
    cause: /tar: entry 'lib\/pwned' passes through the link 'lib'/,
  },
  {
    name: 'a symlink over a folder already written',
    archive: () => craftTar([EXEC_ENTRY, { name: 'lib/pwned', data: 'x' }, { name: 'lib', type: '2', linkName: '/tmp' }]),
    cause: /tar: entry 'lib\/pwned' passes through the link 'lib'/,
  },
  { name: 'a hard link to a file outside', archive: () => craftTar([EXEC_ENTRY, { name: 'passwd', type: '1', linkName: '/etc/passwd' }]), cause: /tar: entry 'passwd' is a hard link to '\/etc\/passwd', which is not an earlier file/ },
  { name: 'a hard link to a later entry', archive: () => craftTar([{ name: 'exec', type: '1', linkName: 'real' }, { name: 'real', data: 'x' }]), cause: /tar: entry 'exec' is a hard link to 'real', which is not an earlier file/ },
  { name: 'a character device', archive: () => craftTar([EXEC_ENTRY, { name: 'null', type: '3' }]), cause: /tar: entry 'null' is a character device/ },
  { name: 'a FIFO', archive: () => craftTar([EXEC_ENTRY, { name: 'pipe', type: '6' }]), cause: /tar: entry 'pipe' is a FIFO/ },
  { name: 'duplicate names', archive: () => craftTar([EXEC_ENTRY, EXEC_ENTRY]), cause: /tar: entry 'exec' is a duplicate of 'exec'/ },
  { name: 'a wrong header checksum', archive: () => craftTar([{ ...EXEC_ENTRY, checksum: 1 }]), cause: /tar: the header at offset 0 has a wrong checksum/ },
  { name: 'a truncated archive', archive: () => craftTar([EXEC_ENTRY, { name: 'big', data: 'x'.repeat(5000) }]).subarray(0, 2048), cause: /tar: truncated archive: the data of 'big'/ },
  { name: 'a truncated .tar.gz', archive: () => gzipSync(craftTar([EXEC_ENTRY, { name: 'big', data: Buffer.alloc(100_000, 1) }])).subarray(0, 200), cause: /gzip: unexpected end of file/ },
  { name: 'a corrupt gzip stream', archive: () => Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), Buffer.alloc(100, 0xff)]), cause: /gzip: / },
  {
    name: 'more entries than PROXY_ZIP_MAX_ENTRIES',
    env: { PROXY_ZIP_MAX_ENTRIES: '3' },
    archive: () => craftTar([EXEC_ENTRY, ...Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: 'x' }))]),
    cause: /tar: the archive holds more than the limit of 3 entries/,
  },
  {
    name: 'a gzip bomb: 1 GiB of zeros declared by one entry',
    archive: () => gzipSync(Buffer.concat([craftTar([EXEC_ENTRY]).subarray(0, 1024), craftTar([{ name: 'bomb', size: 2 ** 30 }]).subarray(0, 512), Buffer.alloc(4 << 20)])),
    cause: /tar: the archive inflates to more than the limit of 1073741823 bytes \(at 'bomb', which declares 1073741824\)/,
  },
  { name: 'an empty code', archive: () => Buffer.alloc(0), cause: /init code is empty/ },
];

const STUB_RESULT = { error: 'This is a stub action. Replace it with custom logic.' };

describe('hostile and broken tar archives', { concurrency: 4 }, () => {
  test('base64 with characters past ASCII (which latin1 would fold into letters): refused as not base64', () =>
    withProxy({}, async (proxy) => {
      const before = tree(proxy.dir);
      await assertInitRefused(proxy, await proxy.post('/init', { value: { binary: true, code: 'IyEvYmluL3NoCmVjaG8ge30K\u0141\u0142==' } }), /init code is not valid base64/, before);
    }));

  test('a gzip bomb under a small limit: 256 MiB of zeros in a 250 KiB .tar.gz, refused at the limit without the memory', () =>
    withProxy({ env: { PROXY_ZIP_MAX_BYTES: String(8 * 2 ** 20) } }, async (proxy) => {
      // Entries of 1 MiB each: every header declares little, together they pass the limit.
      const zeros = Buffer.alloc(2 ** 20);
      const bomb = gzipSync(craftTar([EXEC_ENTRY, ...Array.from({ length: 256 }, (_, i) => ({ name: `zero${i}`, data: zeros }))]), { level: 9 });
      assert.ok(bomb.length < 400_000, `${bomb.length} bytes`);
      await proxy.post('/run', { value: {} });
      const idle = rss(proxy.child.pid!);
      const before = tree(proxy.dir);
      await assertInitRefused(proxy, await initBinary(proxy, bomb), /tar: the archive inflates to more than the limit of 8388608 bytes \(at 'zero7', which declares 1048576\)/, before, 2);
      const growth = peakRss(proxy.child.pid!) - idle;
      assert.ok(growth < 40 * 2 ** 20, `peak RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
    }));

  for (const { name, archive, cause, env } of HOSTILE) {
    test(`${name}: 502, the cause on stderr, the action directory as it was`, () =>
      withProxy({ env }, async (proxy) => {
        const before = tree(proxy.dir);
        await assertInitRefused(proxy, await initBinary(proxy, archive()), cause, before);
        assert.ok(!existsSync(join(dirname(proxy.dir), 'outside-tar')) && !existsSync('/tmp/outside-tar') && !existsSync('/tmp/pwned'), 'nothing outside');
        // The previous action still answers, and a good init still works.
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), STUB_RESULT);
        assert.equal((await initBinary(proxy, gzipSync(craftTar([EXEC_ENTRY])))).status, 200, proxy.stderr.text);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), {});
      }));
  }
});
