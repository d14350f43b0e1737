#!/bin/bash
# The batch-1 decode step's in-graph timeline (mimic_cuda_check trace: pdl.h's marker after every
# kernel) on the 3B shape, logs packed into $OUT/trace.tgz. Each GPU runs one process; with AB0 / AB1
# set (env assignments, e.g. AB0="MIMIC_DECODE_FUSE=0"), that process alternates leg A (defaults) and
# leg B (the assignments) 4 times on its one GPU — the A/B free of card-to-card differences — then
# prints each leg's exposed µs by kernel kind and for layer 10 in launch order.
#   device: run(kind="nvidia-h200-x2", command="AB0=... AB1=... bash bench/gpu/trace.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
gpu_round trace 300
gpu_build
[ -n "$TABLES" ] && gpu_tables  # TABLES=1: the op ‖ model tables first (correctness of what is traced)
gpu_checkpoint
CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $AB0 > "$L/trace0.log" 2>&1 &
P=$!
CUDA_VISIBLE_DEVICES=$G1 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $AB1 > "$L/trace1.log" 2>&1
wait $P
for i in 0 1; do echo "-- GPU $i [${AB0}${AB1}]" | sed "s/\[.*//"; grep -h '^TRACE ab\|^ERROR' "$L/trace$i.log"; done
for i in 0 1; do echo "-- GPU $i:"; grep -h '^TRACE [AB] ' "$L/trace$i.log" | grep -v 'rmsnorm_rows_kernel   '; done
if [ -n "$BATCH" ]; then  # BATCH=1: the batched-decode rows and sweep (GPU 1)
  CUDA_VISIBLE_DEVICES=$G1 timeout $(left 150) ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1
  echo "-- batch: $(grep -c '^ROW.* PASS$' "$L/batch.log") pass, $(grep -c '^ROW.* FAIL$' "$L/batch.log") fail"; grep -h '^ROW.* FAIL$\|^BENCH batch\|^ERROR' "$L/batch.log"
fi
pack
