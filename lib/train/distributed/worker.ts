/**
 * A data-parallel worker process (forked by launch.ts): reads its rank from MIMIC_RANK /
 * MIMIC_WORLD_SIZE / MIMIC_MASTER_ADDR / MIMIC_MASTER_PORT, takes the finetune options over
 * IPC, trains as that rank, and tells the parent how it went (rank 0: the progress and the
 * report). Exits 0 on success, 1 on failure; a lost parent aborts it.
 */
import { resolveDistributed, runRank } from './launch.ts';
import type { FinetuneOptions } from '../finetune.ts';

const ac = new AbortController();
const send = (m: unknown) => new Promise<void>((resolve) => {
  if (!process.connected) return resolve();
  process.send!(m, undefined, {}, () => resolve());
});

process.on('disconnect', () => {
  // the parent is gone: nobody will read the results; stop now (the peers see this rank leave)
  process.exit(1);
});

process.on('message', (m: { type: string; options?: FinetuneOptions }) => {
  if (m.type === 'abort') ac.abort();
  if (m.type !== 'start' || !m.options) return;
  const d = resolveDistributed({});
  const options: FinetuneOptions = {
    ...m.options, signal: ac.signal,
    onProgress: d.rank === 0 ? (p) => { void send({ type: 'progress', progress: p }); } : undefined,
  };
  runRank(options, d).then(async (report) => {
    if (d.rank === 0) await send({ type: 'report', report });
    process.exit(0);
  }, async (e: Error) => {
    const msg = e?.message ?? String(e);
    process.stderr.write(`mimic: worker rank ${d.rank}: ${msg.replace(/^mimic: /, '')}\n`);
    await send({ type: 'error', message: msg, name: e?.name ?? 'Error' });
    process.exit(1);
  });
});
