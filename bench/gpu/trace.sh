#!/bin/bash
# The batch-1 decode step's in-graph timeline (mimic_cuda_check trace: pdl.h's marker after every
# kernel) on the 3B shape: GPU 0 with the defaults ‖ GPU 1 with $AB_ENV (default MIMIC_DECODE_FUSE=0),
# logs packed into $OUT/trace.tgz. Prints each kernel kind's exposed µs a step and layer 10 in order.
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/trace.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
AB_ENV=${AB_ENV:-MIMIC_DECODE_FUSE=0}
gpu_round trace 300
gpu_build
[ -n "$TABLES" ] && gpu_tables  # TABLES=1: the op ‖ model tables first (correctness of what is traced)
gpu_checkpoint
CUDA_VISIBLE_DEVICES=0 timeout $(left 100) ./build/mimic_cuda_check trace $CK 16 > "$L/trace.log" 2>&1 &
P=$!
CUDA_VISIBLE_DEVICES=$G1 env $AB_ENV timeout $(left 100) ./build/mimic_cuda_check trace $CK 16 > "$L/trace-ab.log" 2>&1
wait $P
echo "-- trace (defaults):"; grep -h '^TRACE\|^ERROR' "$L/trace.log"
echo "-- trace $AB_ENV:"; grep -h '^TRACE step\|^TRACE kind\|^TRACE layer10\|^ERROR' "$L/trace-ab.log"
if [ -n "$AB_ENV2" ]; then  # a second pair: GPU 0 $AB_ENV2 ‖ GPU 1 $AB_ENV3
  CUDA_VISIBLE_DEVICES=0 env $AB_ENV2 timeout $(left 60) ./build/mimic_cuda_check trace $CK 16 > "$L/trace-ab2.log" 2>&1 &
  P=$!
  CUDA_VISIBLE_DEVICES=$G1 env ${AB_ENV3:-MIMIC_DECODE_FUSE=1} timeout $(left 60) ./build/mimic_cuda_check trace $CK 16 > "$L/trace-ab3.log" 2>&1
  wait $P
  for i in 2 3; do eval "E=\$AB_ENV$i"; echo "-- trace $E:"; grep -h '^TRACE step\|^TRACE kind\|^TRACE layer10\|^ERROR' "$L/trace-ab$i.log"; done
fi
pack
