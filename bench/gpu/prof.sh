#!/bin/bash
# ncu per-kernel profiles of single passes (mimic_cuda_check prof <phase>), two phases at a time on
# two GPUs; logs packed into $OUT/prof.tgz. METRICS (default: duration, DRAM and SM throughput,
# issue activity, achieved occupancy) go to every phase listed in PHASES_G0 / PHASES_G1; STALL=1 adds
# ncu's warp-state, memory and occupancy sections for the decode step's first gemv nodes.
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/prof.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
METRICS=${METRICS:-gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active}
gpu_round prof 560
gpu_build
gpu_checkpoint
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
run_phases() {  # gpu phases...
  local g=$1; shift
  for ph in "$@"; do
    CUDA_VISIBLE_DEVICES=$g timeout $(left 200) $NCU --clock-control none --profile-from-start off --metrics "$METRICS" \
      --print-summary per-kernel ./build/mimic_cuda_check prof $CK $ph > "$L/prof-$ph.txt" 2>&1
    echo "prof $ph rc $? $(grep -m1 '^PROF' "$L/prof-$ph.txt")"
  done
}
run_phases 0 ${PHASES_G0:-decodegraph} &
run_phases $G1 ${PHASES_G1:-train2}
wait
if [ -n "$STALL" ]; then  # why the decode gemv warps wait: the first 4 gemv nodes of one decode step
  CUDA_VISIBLE_DEVICES=0 timeout $(left 150) $NCU --clock-control none --profile-from-start off -k regex:gemv_kernel -c 4 \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
    ./build/mimic_cuda_check prof $CK decodegraph > "$L/stall-gemv.txt" 2>&1
  echo "stall rc $?"
fi
pack
