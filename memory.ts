// Giving memory back. V8 keeps the heap it grew under load (Node 24 keeps it for good); a full garbage
// collection run when nothing is happening returns it. Node has no API for one without --expose-gc, so
// the flag is set when one is first wanted and the collector taken from a new context.

/** V8's gc extension: `last-resort` collects as for low memory, shrinking the heap (V8 12 and later). */
type Collector = (options?: { type: 'major'; execution: 'sync'; flavor: 'regular' | 'last-resort' }) => void;

let gc: Collector | undefined;

/** Makes the collector ready (node:v8 and node:vm are loaded only now: at start-up they cost about 2 ms). */
async function prepareCollector(): Promise<void> {
  if (gc) return;
  const [{ setFlagsFromString }, { runInNewContext }] = await Promise.all([import('node:v8'), import('node:vm')]);
  setFlagsFromString('--expose-gc');
  gc = runInNewContext('gc') as Collector;
}

/**
 * Runs a full garbage collection (blocking: 15-20 ms after a load). `shrink`: as V8 does for low memory,
 * giving back the heap's unused capacity too (a regular one leaves it, or only some of it, by V8's own
 * judgement of the moment).
 */
export async function collectGarbage(shrink = false): Promise<void> {
  await prepareCollector();
  gc!({ type: 'major', execution: 'sync', flavor: shrink ? 'last-resort' : 'regular' });
}
