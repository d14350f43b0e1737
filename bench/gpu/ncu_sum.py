"""Per-kernel totals of one profiled pass from ncu's `--print-summary per-kernel` text (bench/gpu/prof.sh):
each kernel's gpu__time_duration.sum average × its invocations, summed by kernel (cuBLAS's nvjet kernels
by their tile name), largest first, with the share of the pass. Needs METRICS to include
gpu__time_duration.sum (METRICS=gpu__time_duration.sum alone: one replay pass a kernel, which is what
lets a whole 8×512 training step finish inside a device call — five metrics took 9 passes a kernel)."""
import re, sys
from collections import defaultdict

UNIT = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def kind(header):
    m = re.search(r"(nvjet\w*|cutlass\w*|\w*gemm\w*)", header)
    if m:
        return "GEMM " + m.group(1)[:44]
    m = re.search(r"::(\w+)\s*(?:<[^(]*>)?\(", header)
    return m.group(1) if m else header[:50]


text = open(sys.argv[1]).read()
total = defaultdict(lambda: [0.0, 0])
pat = r"\n  (\S[^\n]*Invocations (\d+))\n(?:    [^\n]*\n)*?    gpu__time_duration\.sum\s+(\w+)\s+[\d.,]+\s+[\d.,]+\s+([\d.,]+)"
for m in re.finditer(pat, text):
    n = int(m.group(2))
    us = float(m.group(4).replace(",", "")) * UNIT.get(m.group(3), 1.0) * n
    t = total[kind(m.group(1))]
    t[0] += us
    t[1] += n
all_us = sum(t[0] for t in total.values())
if not all_us:
    print("no gpu__time_duration.sum in the summary"); sys.exit(0)
print(f"kernels {sum(t[1] for t in total.values())}, {all_us / 1e3:.1f} ms (serialized by ncu)")
for k, (us, n) in sorted(total.items(), key=lambda x: -x[1][0])[: int(sys.argv[2]) if len(sys.argv) > 2 else 24]:
    print(f"{us / 1e3:9.2f} ms {100 * us / all_us:5.1f} % {n:6d}  {k}")
