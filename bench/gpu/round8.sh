#!/bin/bash
# Round 8 (issues 6, 7, 8) — ONE command on a 2-GPU machine, logs packed into $OUT/round8.tgz
# (a device call returns at most 8 files):
#   build (CUDA + NCCL; the 3B checkpoint written meanwhile) · op table (GPU 0) ‖ model table (GPU 1)
#   · data-parallel 1 vs 2 GPUs (bench/gpu/dp-round.mjs) · then side by side: GPU 0 the batched
#   step sweep + serve at 1 and 32 clients; GPU 1 ncu per-kernel profiles of one eager pass of
#   decode, batch32, prefill512 and a training step (mimic_cuda_check prof); or (phase batch0) the
#   batched sweep with MIMIC_NF4_GEMM_SMALL=0 on GPU 1 as the A/B of the fused NF4 GEMM.
#   here:   npm run build:ts && bash bench/gpu/round4.sh --prepare
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/round8.sh", carry=[".device-node", "dist", ".gpu-carry"])
# Every step runs under a deadline (DEADLINE_S, default 560 s); PHASES picks steps (default all).
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; L=$OUT/logs; mkdir -p "$L"
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-560}))
PHASES=${PHASES:-tables dp batch serve prof}
on() { [[ " $PHASES " == *" $1 "* ]]; }
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$L/skipped.txt"; return 1; }; }
pack() { tar czf "$OUT/round8.tgz" -C "$L" . && rm -rf "$L"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export MIMIC_DIST_TIMEOUT_MS=${MIMIC_DIST_TIMEOUT_MS:-240000}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$L/gpu.txt"
NGPU=$(nvidia-smi -L | wc -l)
G1=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0)
mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/ 2>/dev/null
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || ( CUDA_VISIBLE_DEVICES=$G1 timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1 ) &
MK=$!
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$L/build.log" 2>&1 &&
  cmake --build build -j32 >> "$L/build.log" 2>&1 || { grep -B2 -A8 'error' "$L/build.log" | head -60; pack; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s; $(grep -o 'mimic: NCCL [A-Z]*' "$L/build.log")"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
if on tables && can 40 tables; then
  CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check ops > "$L/ops.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=$G1 timeout $(left 120) ./build/mimic_cuda_check model test/fixtures/ref > "$L/model.log" 2>&1
  wait
  for f in ops model; do echo "$f: $(grep -c '^ROW.* PASS$' "$L/$f.log") pass, $(grep -c '^ROW.* FAIL$' "$L/$f.log") fail; $(tail -1 "$L/$f.log")"; done
  grep -h '^ROW.* FAIL$\|^ERROR' "$L"/ops.log "$L"/model.log | head -20
  grep -h 'sample_tokens' "$L/ops.log"
fi
wait $MK 2>/dev/null; [ -f $CK/config.json ] || { echo "no 3B checkpoint"; tail -3 /tmp/make3b.log; pack; exit 1; }
cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
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
    for C in 1 32; do
      R=$([ $C = 1 ] && echo 6 || echo 128)
      can 25 "serve $C" && CUDA_VISIBLE_DEVICES=0 timeout $(left 60) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
        --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$L/serve-$C.json" 2> "$L/serve-$C.err"
    done
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
for C in 1 32; do echo "serve $C: $(node -e "const r=JSON.parse(require('fs').readFileSync('$L/serve-$C.json','utf8'));console.log(r.tokensPerSecond,'tok/s p50',r.p50Ms,'p99',r.p99Ms,'errors',r.errors)" 2>&1 | tail -1)"; done
pack; ls -la "$OUT"
