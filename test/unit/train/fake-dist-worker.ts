// A stand-in for lib/train/distributed/worker.ts (no addon, no training): rank 0 sends a report
// as worker.ts does — process.send, then process.exit(0) as soon as the send callback fires — but
// a large one, so that the child's exit reaches the parent while the report is still in the IPC
// pipe. MIMIC_FAKE_REPORT_MB sets its size; MIMIC_FAKE_EXIT makes rank 1 fail after an error message.
const rank = Number(process.env.MIMIC_RANK);
process.on('message', (m: { type: string }) => {
  if (m.type !== 'start') return;
  if (rank === 1 && process.env.MIMIC_FAKE_EXIT) {
    process.send!({ type: 'error', message: 'mimic: rank 1 ran out of luck', name: 'Error' }, undefined, {}, () => process.exit(Number(process.env.MIMIC_FAKE_EXIT)));
    return;
  }
  if (rank !== 0) { process.exit(0); return; }
  const mb = Number(process.env.MIMIC_FAKE_REPORT_MB ?? 16);
  const report = { steps: 7, worldSize: Number(process.env.MIMIC_WORLD_SIZE), blob: 'x'.repeat(mb << 20) };
  process.send!({ type: 'progress', progress: { phase: 'train', step: 1 } });
  process.send!({ type: 'report', report }, undefined, {}, () => process.exit(0));
});
