#!/bin/bash
# Where a 512-token prefill goes (mimic_cuda_check prof prefill512: one eager pass), logs packed into
# $OUT/prefill.tgz: ncu's per-kernel durations (serialized, summed by bench/gpu/ncu_sum.py) and, where
# nsys exists, the pass as it runs (kernels overlapping, gaps between them: bench/gpu/nsys_sum.py).
# PREFILL_ENVS: space-separated legs ("-" = defaults; a leg's assignments joined by commas), each timed
# by the C++ prof phase (PROF line: best and mean of 5 eager passes) of each of PHASES (default
# prefill512; train2 = one 2×512 training step), the legs alternated twice;
# NSYS_ENV: the nsys pass's assignments (commas); PROFILE_PHASE: the phase nsys and ncu profile
# (default prefill512; train = one 8×512 training step); TABLES=1 / BATCH=1: the op ‖ model tables and the
# batch rows first; CPPBENCH=1: then the C++ bench; PEER=1: the PyTorch peer after the legs;
# AB0: trace.sh's decode A/B legs after the peer; NO_PROFILE=1: no nsys / ncu; LORA_EFFECT=1: after the tables, bench/gpu/lora_effect.py / .mjs (the LoRA's
# effect on a 3B-width 2-layer model's loss: numpy, mimic CPU, CUDA bf16 and NF4).
#   device: run(command="TABLES=1 bash bench/gpu/prefill.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
gpu_round prefill 540  # (DEADLINE_S overrides)
gpu_build
[ -n "$TABLES" ] && gpu_tables
[ -n "$LORA_EFFECT" ] && gpu_lora_effect  # LORA_EFFECT=1: the 3B-width 2-layer model's LoRA effect, numpy vs mimic CPU / CUDA
gpu_checkpoint
[ -n "$BATCH" ] && gpu_batch 0
if [ -n "$CPPBENCH" ] && can 120 cpp-bench; then  # CPPBENCH=1: the C++ bench's figures (decode, prefill, TTFT, training), printed as they come
  timeout $(left 200) stdbuf -oL ./build/mimic_cuda_check bench $CK "${STEPS:-8}" /tmp 2>&1 | tee "$L/bench.log" | grep --line-buffered '^BENCH\|^ERROR\|FAIL$'
fi
for rep in 1 2; do gpu_prof_legs "${PHASES:-prefill512}" "${PREFILL_ENVS:--}"; done
if [ -n "$PEER" ] && can 100 peer; then  # PEER=1: the PyTorch peer in the same call (its ceilings, training, decode)
  timeout $(left 200) python3 bench/peers/peer_torch.py --train 8x512,2x512 --decode 64 --steps 6 2>&1 | grep '^{' | tee "$L/peer.log" | cut -c1-400
fi
gpu_trace_legs  # AB0 set: trace.sh's decode A/B legs (lib.sh; logs in trace.tgz)
[ -n "$NO_PROFILE" ] && { pack; exit 0; }  # NO_PROFILE=1: no nsys / ncu pass
NS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
if [ -x "$NS" ] && can 60 nsys; then
  CUDA_VISIBLE_DEVICES=0 env $(echo "$NSYS_ENV" | tr ',' ' ') timeout $(left 120) $NS profile --capture-range=cudaProfilerApi -o /tmp/nsys-prefill \
    ./build/mimic_cuda_check prof $CK ${PROFILE_PHASE:-prefill512} > "$L/nsys.txt" 2>&1
  $NS stats --report cuda_gpu_trace --format csv -o /tmp/nsys-prefill /tmp/nsys-prefill.nsys-rep >> "$L/nsys.txt" 2>&1
  cp /tmp/nsys-prefill*_cuda_gpu_trace.csv "$L/nsys-trace.csv" 2>/dev/null
  echo "nsys ${PROFILE_PHASE:-prefill512} [${NSYS_ENV:-default}]"; python3 bench/gpu/nsys_sum.py "$L/nsys-trace.csv" 2>&1 | head -24
  python3 bench/gpu/nsys_grids.py "$L/nsys-trace.csv" 24 2>&1
else
  echo "no nsys"
fi
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -x "$NCU" ] && can 60 ncu; then
  CUDA_VISIBLE_DEVICES=0 timeout $(left 150) $NCU --clock-control none --profile-from-start off --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    --print-summary per-kernel ./build/mimic_cuda_check prof $CK ${PROFILE_PHASE:-prefill512} > "$L/ncu.txt" 2>&1
  echo "ncu rc $?"; python3 bench/gpu/ncu_sum.py "$L/ncu.txt" 24
fi
pack
