// The CUDA backend through the addon: every CUDA twin against its CPU twin (native/cuda/opcheck_cuda.cu),
// as rows of the shared op-check harness. Runs only where the addon was built with CUDA and a GPU is
// present (the GPU machine: bench/gpu/check.sh); elsewhere it is skipped, so CI stays CPU-only.
import t from 'tap';
import { native } from '../../lib/native.ts';

const addon = native();
if (!addon.cudaAvailable()) {
  t.plan(0, 'no CUDA device (or a CPU-only build): CUDA checks skipped');
} else {
  const rows = addon._opCheck().filter((r) => r.op.startsWith('cuda.'));
  const ops = new Set(rows.map((r) => r.op));
  for (const op of ['matmul', 'nf4', 'embedding', 'rmsnorm', 'rope', 'attention', 'swiglu', 'cross_entropy', 'adamw', 'sampling'])
    t.ok(ops.has(`cuda.${op}`), `cuda.${op} is checked`);
  t.ok(rows.some((r) => r.op === 'cuda.attention' && /Tq=1 /.test(r.check)), 'decode (T=1) attention is checked');
  t.ok(rows.some((r) => r.op === 'cuda.attention' && /bwd dk/.test(r.check)), 'attention backward is checked');
  for (const r of rows)
    t.ok(r.pass && Number.isFinite(r.maxRelErr) && r.maxRelErr <= r.tol,
      `${r.op}: ${r.check}: ${r.maxRelErr.toExponential(2)} <= ${r.tol}`);
}
