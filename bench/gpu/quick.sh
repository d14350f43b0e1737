#!/bin/bash
# A short verify-and-time round on a 2-GPU machine (logs packed into $OUT/quick.tgz): build, op table
# (GPU 0) ‖ model table (GPU 1), then the 3B C++ bench with the defaults (GPU 0) ‖ with $AB_ENV set
# (GPU 1, the A/B leg, default MIMIC_NF4_GEMM_SMALL=0), then serve at 1 and 32 clients (GPU 0) ‖ the
# batched-decode rows and sweep (mimic_cuda_check batch, GPU 1).
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/quick.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
AB_ENV=${AB_ENV:-MIMIC_NF4_GEMM_SMALL=0}
gpu_round quick 400
gpu_build
gpu_tables
gpu_checkpoint
mkdir -p /tmp/q0 /tmp/q1
CUDA_VISIBLE_DEVICES=0 timeout 150 ./build/mimic_cuda_check bench $CK 6 /tmp/q0 > "$L/bench.log" 2>&1 &
BENCH0=$!
CUDA_VISIBLE_DEVICES=$G1 env $AB_ENV timeout 150 ./build/mimic_cuda_check bench $CK 6 /tmp/q1 > "$L/bench-ab.log" 2>&1
wait $BENCH0
CUDA_VISIBLE_DEVICES=$G1 timeout 150 ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1 &
BATCH=$!
for C in 1 32; do gpu_serve $C; serve_line $C; done
wait $BATCH
echo "-- batch: $(grep -c '^ROW.* PASS$' "$L/batch.log") pass, $(grep -c '^ROW.* FAIL$' "$L/batch.log") fail"; grep -h '^ROW.* FAIL$\|^BENCH batch\|^ERROR' "$L/batch.log"
echo "-- bench (default):"; grep -h '^BENCH' "$L/bench.log"
echo "-- bench $AB_ENV:"; grep -h '^BENCH' "$L/bench-ab.log"
pack
