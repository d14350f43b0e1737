#!/bin/bash
# The batch-1 decode step's in-graph timeline (mimic_cuda_check trace: pdl.h's marker after every
# kernel) on the 3B shape, logs packed into $OUT/trace.tgz. Each GPU runs one process; with AB0 / AB1
# set (env assignments, e.g. AB0="MIMIC_DECODE_FUSE=0"), that process alternates leg A (defaults) and
# leg B (the assignments) 4 times on its one GPU — the A/B free of card-to-card differences — then
# prints each leg's exposed µs by kernel kind and for layer 10 in launch order. STALL=1 then profiles
# the first four gemv_tc launches with ncu (warp states: what the product warps wait on). BRIEF=1:
# only the A/B lines.
#   device: run(kind="nvidia-h200-x2", command="AB0=... AB1=... bash bench/gpu/trace.sh", carry=[".device-node", "dist", ".gpu-carry"])
# On one card the two processes run one after the other (AB1 may then be empty). A leg "LORA=16" is
# not an env variable: leg B runs with a rank-16 adapter on all seven projections, leg A without
# (LORA_AB=16: both legs with it).
source bench/gpu/lib.sh
gpu_round trace 300
gpu_build
[ -n "$TABLES" ] && gpu_tables  # TABLES=1: the op ‖ model tables first (correctness of what is traced)
gpu_checkpoint
# AB0 / AB1 may each list several B legs separated by ';' (one process per leg pair, in turn):
# AB0="X=0;Y=0" AB1="Z=0;W=0" runs X=0 ‖ Z=0, then Y=0 ‖ W=0
IFS=';' read -ra LEGS0 <<< "$AB0"; IFS=';' read -ra LEGS1 <<< "$AB1"
NP=$(( ${#LEGS0[@]} > ${#LEGS1[@]} ? ${#LEGS0[@]} : ${#LEGS1[@]} )); [ "$NP" -gt 0 ] || NP=1
for ((p = 0; p < NP; p++)); do
  B0=${LEGS0[$p]:-}; B1=${LEGS1[$p]:-}
  if [ "$NGPU" -ge 2 ]; then  # one process a card, side by side
    CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $B0 > "$L/trace$p-0.log" 2>&1 &
    P=$!
    CUDA_VISIBLE_DEVICES=$G1 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $B1 > "$L/trace$p-1.log" 2>&1
    wait $P
  else  # one card: the two processes one after the other (never two timed processes on one card)
    CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $B0 > "$L/trace$p-0.log" 2>&1
    [ -n "$B1" ] && CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check trace $CK 16 $B1 > "$L/trace$p-1.log" 2>&1
  fi
  for i in 0 1; do [ -f "$L/trace$p-$i.log" ] && { echo "-- process $i"; grep -h '^TRACE ab\|^ERROR' "$L/trace$p-$i.log"; }; done
  [ -n "$BRIEF" ] || for i in 0 1; do [ -f "$L/trace$p-$i.log" ] && { echo "-- process $i:"; grep -h '^TRACE [AB] ' "$L/trace$p-$i.log" | grep -v 'rmsnorm_rows_kernel   '; }; done
done
[ -n "$BATCH" ] && gpu_batch $G1  # BATCH=1: the batched-decode rows and sweep (GPU 1)
if [ -n "$STALL" ]; then  # STALL=1: ncu's warp states of the step's first 4 gemv_tc launches (layer 0: q/k/v, o, gate/up, down)
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  CUDA_VISIBLE_DEVICES=0 timeout $(left 150) $NCU --clock-control none --profile-from-start off -k regex:${STALL_K:-gemv_tc_kernel} -c 4 \
    --section WarpStateStats --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats ${STALL_SECTIONS} \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    ./build/mimic_cuda_check prof $CK decodegraph > "$L/stall.txt" 2>&1
  echo "stall rc $?"
  grep -iE '^  gemv_tc_kernel|Duration|Issued Warp|Achieved Active|Executed Ipc A|Warp Cycles Per Issued|stalled_[a-z_]+_per_issue_active.ratio +[0-9.]+' "$L/stall.txt" | grep -vE 'ratio +0(\.0[0-9]*)?$' | head -120
fi
pack
