#!/bin/bash
# Round 5 (issue 7): wide batched steps as dequantize-once + cuBLAS GEMM — ONE lean device command:
# build with CUDA (sm_90), the model table (incl. the batch rows: GEMV route bit for bit, default
# route by margin), the 3B random checkpoint, `mimic serve` under load through Node at 1 and 32
# clients (--max-sessions 32; bench/serve-load.ts compiled to .gpu-carry/serve-load.mjs), then the
# 3B batch rows and the C++ step sweep (mimic_cuda_check batch). No op table (round 4: 81/81).
#   here:   npm run build:ts && bash bench/gpu/round4.sh --prepare
#   device: run(command="bash bench/gpu/round5.sh", carry=[".device-node", "dist", ".gpu-carry"])
# Every step runs under a deadline (DEADLINE_S, default 200 s) so the table always prints.
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-200}))
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$OUT/skipped.txt"; return 1; }; }
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/
# the 3B checkpoint in the background while the build runs (GPU-side init, ~6.4 GB written)
CK=/tmp/ckpt3b
( timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1; cp .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null; echo done >> /tmp/make3b.log ) &
MK=$!
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j16 >> "$OUT/build.log" 2>&1 || { grep -B2 -A8 'error' "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
can 30 model && timeout $(left 60) ./build/mimic_cuda_check model test/fixtures/ref > "$OUT/model.log" 2>&1; tail -1 "$OUT/model.log"
wait $MK; tail -2 /tmp/make3b.log
if [ -f $CK/config.json ]; then
  for C in 1 32; do
    R=$([ $C = 1 ] && echo 6 || echo 128)
    can 25 "serve $C" && timeout $(left 60) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
      --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$OUT/serve-$C.json" 2> "$OUT/serve-$C.err"
    echo "serve $C clients: rc $?"; tail -3 "$OUT/serve-$C.err"
  done
  can 15 batch3b && timeout $(left 90) ./build/mimic_cuda_check batch $CK > "$OUT/batch.log" 2>&1; grep -c PASS "$OUT/batch.log"
fi
echo "==================== summary ($(cat "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$OUT/skipped.txt" 2>/dev/null
grep -h '^ROW' "$OUT"/model.log "$OUT"/batch.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
grep -h '^ROW' "$OUT"/model.log "$OUT"/batch.log 2>/dev/null | grep -i 'batch' | sed 's/^ROW //'
grep -h '^BENCH\|^ERROR\|^BATCHCHECK' "$OUT"/model.log "$OUT"/batch.log 2>/dev/null
node bench/gpu/round5.mjs "$OUT" 2>&1 | tail -20
