// OpenWhisk's largest action (48 MB of code, 64 MB of base64 in the init body) under its smallest memory
// limit (128 MB): the init holds its body once, decodes the code in pieces into a file and reads the
// archive back with positional reads (spec/zip.md, "Memory"). Peak RSS is read from /proc (VmHWM).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { MiB, peakRss, rss, withProxy } from './helpers.ts';
import { craftTar } from './tarcraft.ts';
import { craftZip } from './zipcraft.ts';

// Random bytes: nothing compresses, so the archive is as large as its contents.
const BLOB = randomBytes(47 * MiB - 4096);
const EXEC = '#!/bin/bash\necho "{\\"size\\":$(stat -c %s blob),\\"sum\\":\\"$(md5sum < blob | cut -c1-32)\\"}"\n';

async function md5(data: Buffer): Promise<string> {
  const { createHash } = await import('node:crypto');
  return createHash('md5').update(data).digest('hex');
}

describe('the largest action', { concurrency: true }, () => {
  const archives: Array<[string, () => Buffer]> = [
    ['a 47 MiB stored ZIP', () => craftZip([{ name: 'exec', data: EXEC, mode: 0o100755 }, { name: 'blob', data: BLOB }])],
    ['a 47 MiB .tar.gz', () => gzipSync(craftTar([{ name: 'exec', data: EXEC, mode: 0o755 }, { name: 'blob', data: BLOB }]), { level: 1 })],
  ];
  for (const [name, make] of archives) {
    test(`${name} (a 63 MiB init body): peak RSS grows by at most 1.2 × the body + 20 MiB, and it runs`, () =>
      withProxy({}, async (proxy) => {
        const body = Buffer.from(JSON.stringify({ value: { binary: true, code: make().toString('base64') } }));
        assert.ok(body.length > 62 * MiB, `${body.length} bytes`);
        assert.equal((await proxy.post('/run', { value: {} })).status, 200); // warm: what an idle proxy holds
        const idle = rss(proxy.child.pid!);
        const res = await proxy.post('/init', body);
        assert.equal(res.status, 200, proxy.stderr.text);
        const growth = peakRss(proxy.child.pid!) - idle;
        const bound = 1.2 * body.length + 20 * MiB;
        assert.ok(growth <= bound, `peak RSS grew by ${(growth / MiB).toFixed(1)} MiB, over ${(bound / MiB).toFixed(1)} MiB`);
        assert.deepEqual((await proxy.post('/run', { value: {} })).json(), { size: BLOB.length, sum: await md5(BLOB) });
      }));
  }
});
