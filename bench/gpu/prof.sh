#!/bin/bash
# ncu per-kernel profiles of single passes (mimic_cuda_check prof <phase>), two phases at a time on
# two GPUs; logs packed into $OUT/prof.tgz. METRICS (default: duration, DRAM and SM throughput,
# issue activity, achieved occupancy) go to every phase listed in PHASES_G0 / PHASES_G1 (run under the
# env assignments ENV_G0 / ENV_G1, "-" for none); STALL=1 adds
# ncu's warp-state, memory and occupancy sections for the decode step's first gemv nodes (STALL_K: the
# kernel name regex; STALL_SECTIONS: more "--section X" flags, e.g. ComputeWorkloadAnalysis).
# Each phase's per-kernel totals are summed by bench/gpu/ncu_sum.py. A training step (train, train2)
# needs METRICS=gpu__time_duration.sum (one replay pass a kernel; round 16: with the five default
# metrics the 8×512 step did not finish in 200 s, with the one it took ~50 s).
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/prof.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
METRICS=${METRICS:-gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active}
gpu_round prof 560
gpu_build
gpu_checkpoint
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
run_phases() {  # gpu env phases...
  local g=$1 e=$2; shift 2
  [ "$e" = - ] && e=
  for ph in "$@"; do
    CUDA_VISIBLE_DEVICES=$g env $e timeout $(left 200) $NCU --clock-control none --profile-from-start off --metrics "$METRICS" \
      --print-summary per-kernel ./build/mimic_cuda_check prof $CK $ph > "$L/prof-$g-$ph.txt" 2>&1
    echo "prof GPU $g [$e] $ph rc $? $(grep -m1 '^PROF' "$L/prof-$g-$ph.txt")"
    python3 bench/gpu/ncu_sum.py "$L/prof-$g-$ph.txt" 16 | sed "s/^/[$g $ph] /"
  done
}
run_phases 0 "${ENV_G0:--}" ${PHASES_G0:-decodegraph} &
run_phases $G1 "${ENV_G1:--}" ${PHASES_G1:-train2}
wait
if [ -n "$STALL" ]; then  # why the decode gemv warps wait: the first 4 gemv nodes of one decode step
  CUDA_VISIBLE_DEVICES=0 timeout $(left 150) $NCU --clock-control none --profile-from-start off -k regex:${STALL_K:-gemv_kernel} -c 4 \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy ${STALL_SECTIONS} \
    ./build/mimic_cuda_check prof $CK decodegraph > "$L/stall-gemv.txt" 2>&1
  echo "stall rc $?"
fi
if [ -n "$NSYS" ]; then  # the decode graph's kernels as they run in the graph (no serialization, caches as they are)
  NS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
  [ -x "$NS" ] || { echo "NSYS: no nsys on this machine (round 13's device had none)"; NSYS_ENVS=; }
  for e in ${NSYS_ENVS-"-"}; do
    ee=$e; [ "$ee" = - ] && ee=
    tag=$(echo "${ee:-default}" | tr -c 'A-Za-z0-9_\n' _)
    CUDA_VISIBLE_DEVICES=0 env $ee timeout $(left 120) $NS profile --cuda-graph-trace=node --capture-range=cudaProfilerApi \
      -o /tmp/nsys-$tag ./build/mimic_cuda_check prof $CK decodegraph > "$L/nsys-$tag.txt" 2>&1
    $NS stats --report cuda_gpu_trace --format csv -o /tmp/nsys-$tag /tmp/nsys-$tag.nsys-rep >> "$L/nsys-$tag.txt" 2>&1
    cp /tmp/nsys-$tag*_cuda_gpu_trace.csv "$L/nsys-trace-$tag.csv" 2>/dev/null
    python3 bench/gpu/nsys_sum.py "$L/nsys-trace-$tag.csv" 2>&1 | sed "s/^/[$tag] /"
  done
fi
pack
