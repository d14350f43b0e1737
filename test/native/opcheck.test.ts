// Every row of the op-check harness (native/core/opcheck*.cpp): CPU ops against double
// references and finite differences (and, in CUDA builds, the registered CUDA-vs-CPU rows).
import t from 'tap';
import { native } from '../../lib/native.ts';

const rows = native()._opCheck();
const ops = new Set(rows.map((r) => r.op));
for (const op of ['matmul', 'embedding', 'rmsnorm', 'rope', 'swiglu', 'attention', 'linear'])
  t.ok(ops.has(`cpu.${op}`), `cpu.${op} is checked`);
t.ok(rows.some((r) => r.op === 'cpu.attention' && /decode T=1/.test(r.check)), 'decode (T=1) attention is checked');
t.ok(rows.filter((r) => /vs FD/.test(r.check)).length >= 15, 'backwards are checked by finite differences');
for (const r of rows) {
  t.ok(r.pass && r.maxRelErr <= r.tol && Number.isFinite(r.maxRelErr),
    `${r.op}: ${r.check}: ${r.maxRelErr.toExponential(2)} <= ${r.tol}`);
}
