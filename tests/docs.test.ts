// The documentation as a product: the README's walk-through runs top to bottom as written, against a real
// proxy started as its first block says, each command's output compared with the `# → ` line under it;
// the action-loop page's example runs too; every link in the README and docs/ leads somewhere.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { PROXY, ROOT, startProxy, withTempDir, type RunningProxy } from './helpers.ts';

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

/** The ```sh blocks of a section (from its `## ` heading to the next). */
function shellBlocks(page: string, heading: string): string[] {
  const start = page.indexOf(`## ${heading}`);
  assert.ok(start !== -1, `no section '${heading}'`);
  const end = page.indexOf('\n## ', start + 1);
  const section = page.slice(start, end === -1 ? undefined : end);
  return [...section.matchAll(/```sh\n([^]*?)```/g)].map((match) => match[1]!);
}

interface Step {
  command: string;
  expected?: string;
}

/** A block's commands (continued lines joined), each with the `# → ` line that follows it, if any. */
function steps(block: string): Step[] {
  const found: Step[] = [];
  let pending = '';
  for (const line of block.split('\n')) {
    if (pending) {
      pending += `\n${line}`;
      if (!line.endsWith('\\')) found.push({ command: pending }), (pending = '');
    } else if (line.startsWith('# → ')) found[found.length - 1]!.expected = line.slice(4);
    else if (line.startsWith('#') || line.trim() === '') continue;
    else if (line.endsWith('\\')) pending = line;
    else found.push({ command: line });
  }
  return found;
}

/** Runs each step in `cwd` with bash, the proxy's port for 8080, and checks what it prints. */
function runSteps(proxy: RunningProxy | undefined, list: Step[], cwd: string): void {
  for (const { command, expected } of list) {
    // The page's own addresses and paths, here: the proxy's port, this checkout's bundle.
    const here = command.replaceAll('localhost:8080', `127.0.0.1:${proxy?.port ?? 8080}`).replaceAll(' dist/proxy.cjs', ` ${PROXY}`);
    const output = execFileSync('bash', ['-c', here], { cwd, env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } }).toString();
    if (expected !== undefined) assert.equal(output.trim(), expected, `the README's output for: ${command}`);
  }
}

/**
 * Runs a section's example as a user would: its first block starts the proxy (`VAR=value ... npm start`,
 * whose environment is taken), the second runs against it top to bottom in a fresh folder.
 */
async function runExample(page: string, heading: string, expectedEnv: string[], after?: (proxy: RunningProxy) => Promise<void>): Promise<void> {
  const [start, commands] = shellBlocks(page, heading);
  // The start block's environment, as the shell reads it (quotes, several lines): what it sets before `npm start`.
  assert.match(start!, /npm start\n$/);
  const environment = (script: string): Map<string, string> =>
    new Map(
      execFileSync('bash', ['-c', script], { env: {} })
        .toString()
        .split('\0')
        .filter(Boolean)
        .map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]),
    );
  const shells = environment('env -0');
  const env = Object.fromEntries([...environment(start!.replace(/npm start\n$/, 'env -0'))].filter(([name, value]) => shells.get(name) !== value && name !== '_'));
  assert.deepEqual(Object.keys(env).sort(), [...expectedEnv].sort());
  await withTempDir(async (cwd) => {
    const proxy = await startProxy({ env });
    try {
      const list = steps(commands!);
      assert.ok(list.length >= 2 && list.every((step) => step.command.length > 0), JSON.stringify(list));
      runSteps(proxy, list, cwd);
      await after?.(proxy);
    } finally {
      await proxy.stop();
    }
  });
}

describe('the README', { concurrency: true }, () => {
  test('is what a user reads in five minutes: under 200 lines', () => {
    assert.ok(README.split('\n').length < 200, `${README.split('\n').length} lines`);
  });

  test('its walk-through runs top to bottom as written, against the proxy its first block starts', () =>
    runExample(README, 'A walk-through with curl', ['PROXY_ALLOW_REINIT'], async (proxy) => {
      // What the page says about the logs.
      await proxy.sentinels(4);
      assert.match(proxy.stderr.text, /hello from \/ns\/hello\n/);
    }));
});

describe('docs/', { concurrency: true }, () => {
  test('the action-loop page\'s example runs as the page says', () =>
    runExample(readFileSync(join(ROOT, 'docs', 'action-loop.md'), 'utf8'), 'Try it', ['PROXY_ACTION_LOOP', 'OW_WAIT_FOR_ACK']));

  test('the Knative page\'s local example runs as the page says', () =>
    runExample(readFileSync(join(ROOT, 'docs', 'knative.md'), 'utf8'), 'Try it locally', ['__OW_RUNTIME_PLATFORM', '__OW_HTTP_METHODS', '__OW_ACTION_CODE']));

  test('the protocol page\'s -compile example runs as the page says', () =>
    withTempDir(async (cwd) => {
      const [block] = shellBlocks(readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8'), 'Offline builds: `-compile`').slice(1);
      const list = steps(block!);
      assert.equal(list.filter((step) => step.expected !== undefined).length, 2);
      runSteps(undefined, list, cwd);
    }));

  test('the runtimes page shows each example\'s Dockerfile word for word', () => {
    const page = readFileSync(join(ROOT, 'docs', 'images-and-runtimes.md'), 'utf8');
    for (const example of ['python', 'nodejs']) {
      assert.ok(page.includes(`\`\`\`dockerfile\n${readFileSync(join(ROOT, 'examples', example, 'Dockerfile'), 'utf8')}\`\`\``), example);
    }
  });

  test('every relative link in the README and docs/ leads to a file or folder that is there', () => {
    const pages = ['README.md', ...readdirSync(join(ROOT, 'docs')).map((name) => join('docs', name))];
    const broken: string[] = [];
    for (const page of pages) {
      const text = readFileSync(join(ROOT, page), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue;
        if (!existsSync(join(ROOT, dirname(page), target!))) broken.push(`${page}: ${target}`);
      }
    }
    assert.deepEqual(broken, []);
  });
});
