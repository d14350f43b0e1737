"""Per-kernel summary of one decode step from an nsys cuda_gpu_trace CSV (bench/gpu/prof.sh NSYS=1):
time of each kernel name summed, the step's span (first start to last end), and the idle time
between consecutive kernels (span minus busy)."""
import csv, sys
from collections import defaultdict

rows = []
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f):
        name = r.get("Name", "")
        if not name or "memcpy" in name.lower() or "memset" in name.lower():
            continue
        rows.append((int(r["Start (ns)"]), int(r["Duration (ns)"]), name))
rows.sort()
if not rows:
    print("no kernels"); sys.exit(0)
span = rows[-1][0] + rows[-1][1] - rows[0][0]
busy = sum(d for _, d, _ in rows)
by = defaultdict(lambda: [0, 0])
for _, d, n in rows:
    short = n.split("(")[0].split("<")[0].split("::")[-1][:40] + ("<" + n.split("<", 1)[1][:20] if "<" in n else "")
    by[short][0] += d; by[short][1] += 1
print(f"kernels {len(rows)}  span {span/1e3:.1f} us  busy {busy/1e3:.1f} us  gaps {(span-busy)/1e3:.1f} us")
for n, (d, c) in sorted(by.items(), key=lambda x: -x[1][0]):
    print(f"  {d/1e3:9.1f} us  {c:4d} x  {d/c/1e3:7.2f} us  {n}")
