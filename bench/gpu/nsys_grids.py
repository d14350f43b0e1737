"""Kernels of an nsys cuda_gpu_trace CSV grouped by (name, grid, block, stream): count, total and mean
duration — which GEMM tiles cuBLAS picked for a prompt's shapes, and which kernels ran on the side
stream (bench/gpu/prefill.sh)."""
import csv, sys
from collections import defaultdict

by = defaultdict(lambda: [0, 0])
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f):
        name = r.get("Name", "")
        if not name or "memcpy" in name.lower() or "memset" in name.lower():
            continue
        short = name.split("(")[0].split("<")[0].split("::")[-1][:48]
        key = (short, f'{r.get("GrdX")}x{r.get("GrdY")}x{r.get("GrdZ")}', r.get("BlkX"), r.get("Strm"))
        by[key][0] += 1
        by[key][1] += int(r["Duration (ns)"])
for (n, g, b, s), (c, d) in sorted(by.items(), key=lambda x: -x[1][1])[: int(sys.argv[2]) if len(sys.argv) > 2 else 30]:
    print(f"{d / 1e3:9.1f} us {c:4d} x {d / c / 1e3:7.2f} us  grid {g:>12} block {b:>4} stream {s:>3}  {n}")
