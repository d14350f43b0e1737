#!/bin/bash
# Round 8 (issues 6, 7, 8) — ONE command on a 2-GPU machine, logs packed into $OUT/round8.tgz
# (a device call returns at most 8 files):
#   build (CUDA + NCCL; the 3B checkpoint written meanwhile) · op table (GPU 0) ‖ model table (GPU 1)
#   · data-parallel 1 vs 2 GPUs (bench/gpu/dp-round.mjs) · then side by side: GPU 0 the batched
#   step sweep + serve at 1 and 32 clients; GPU 1 ncu per-kernel profiles of one eager pass of
#   decode, batch32, prefill512 and a training step (mimic_cuda_check prof); or (phase batch0) the
#   batched sweep with MIMIC_NF4_GEMM_SMALL=0 on GPU 1 as the A/B of the fused NF4 GEMM.
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/round8.sh", carry=[".device-node", "dist", ".gpu-carry"])
# Every step runs under a deadline (DEADLINE_S, default 560 s); PHASES picks steps (default all).
source bench/gpu/lib.sh
PHASES=${PHASES:-tables dp batch serve prof}
on() { [[ " $PHASES " == *" $1 "* ]]; }
gpu_round round8 560
export MIMIC_DIST_TIMEOUT_MS=${MIMIC_DIST_TIMEOUT_MS:-240000}
gpu_build
on tables && can 40 tables && gpu_tables
gpu_checkpoint
if on dp && [ "$NGPU" -ge 2 ] && can 150 dp; then
  DP_LEGS=${DP_LEGS:-1gpu,2gpu,kill} timeout $(left 260) node bench/gpu/dp-round.mjs $CK "${DP_STEPS:-16}" 8 /tmp/dp > "$L/dp.log" 2>&1
  echo "dp rc $?"; cp /tmp/dp/dp-round.json "$L/" 2>/dev/null; grep -h '^RUN\|^RESULT\|^KILL' "$L/dp.log"; tail -3 "$L/dp.log"
fi
# side by side: GPU 0 the batched steps and serve, GPU 1 the profiles
(
  if on batch && can 60 batch; then
    CUDA_VISIBLE_DEVICES=0 timeout $(left 100) ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1
  fi
  if on serve; then
    for C in 1 32; do gpu_serve $C; done
  fi
) &
SIDE=$!
if on batch0 && can 60 batch0; then  # the same sweep with the round-7 GEMM route (dequantize + cuBLAS), for the A/B
  CUDA_VISIBLE_DEVICES=$G1 MIMIC_NF4_GEMM_SMALL=0 timeout $(left 100) ./build/mimic_cuda_check batch $CK > "$L/batch0.log" 2>&1
fi
if on prof; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for ph in decode batch32 prefill512 train; do
    can 30 "prof $ph" && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 150) $NCU --clock-control none --profile-from-start off \
      --metrics gpu__time_duration.sum --print-summary per-kernel ./build/mimic_cuda_check prof $CK $ph > "$L/prof-$ph.txt" 2>&1
    echo "prof $ph rc $? $(grep -m1 '^PROF' "$L/prof-$ph.txt")"
  done
fi
wait $SIDE
echo "==================== summary ($(head -1 "$L/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$L/skipped.txt" 2>/dev/null
grep -h '^BENCH batch\|^ROW.*FAIL' "$L/batch.log" 2>/dev/null
[ -f "$L/batch0.log" ] && { echo "-- MIMIC_NF4_GEMM_SMALL=0:"; grep -h '^BENCH batch\|^ROW.*FAIL' "$L/batch0.log"; }
for C in 1 32; do serve_line $C; done
pack; ls -la "$OUT"
