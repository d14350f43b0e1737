#!/bin/bash
# A short verify-and-time round on a 2-GPU machine (logs packed into $OUT/quick.tgz): build, op table
# (GPU 0) ‖ model table (GPU 1), then the 3B C++ bench with the defaults (GPU 0) ‖ with $AB_ENV set
# (GPU 1, the A/B leg, default MIMIC_NF4_GEMM_SMALL=0), then serve at 1 and 32 clients (GPU 0) ‖ the
# batched-decode rows and sweep (mimic_cuda_check batch, GPU 1).
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/quick.sh", carry=[".device-node", "dist", ".gpu-carry"])
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; L=$OUT/logs; mkdir -p "$L"
AB_ENV=${AB_ENV:-MIMIC_NF4_GEMM_SMALL=0}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | head -1 | tee "$L/gpu.txt"
mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/ 2>/dev/null
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || ( CUDA_VISIBLE_DEVICES=1 timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1 ) &
MK=$!
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$L/build.log" 2>&1 &&
  cmake --build build -j32 >> "$L/build.log" 2>&1 || { grep -B2 -A8 'error' "$L/build.log" | head -60; exit 1; }
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
CUDA_VISIBLE_DEVICES=0 timeout 150 ./build/mimic_cuda_check ops > "$L/ops.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 150 ./build/mimic_cuda_check model test/fixtures/ref > "$L/model.log" 2>&1
wait
for f in ops model; do echo "$f: $(grep -c '^ROW.* PASS$' "$L/$f.log") pass, $(grep -c '^ROW.* FAIL$' "$L/$f.log") fail; $(tail -1 "$L/$f.log")"; done
grep -h '^ROW.* FAIL$\|^ERROR' "$L"/ops.log "$L"/model.log | head -20
wait $MK; cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
mkdir -p /tmp/q0 /tmp/q1
CUDA_VISIBLE_DEVICES=0 timeout 150 ./build/mimic_cuda_check bench $CK 6 /tmp/q0 > "$L/bench.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 env $AB_ENV timeout 150 ./build/mimic_cuda_check bench $CK 6 /tmp/q1 > "$L/bench-ab.log" 2>&1
wait
CUDA_VISIBLE_DEVICES=1 timeout 150 ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1 &
for C in 1 32; do
  R=$([ $C = 1 ] && echo 6 || echo 128)
  CUDA_VISIBLE_DEVICES=0 timeout 60 node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
    --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$L/serve-$C.json" 2> "$L/serve-$C.err"
  echo "serve $C: $(node -e "const r=JSON.parse(require('fs').readFileSync('$L/serve-$C.json','utf8'));console.log(r.tokensPerSecond,'tok/s p50',r.p50Ms,'p99',r.p99Ms,'errors',r.errors)" 2>&1 | tail -1)"
done
wait
echo "-- batch: $(grep -c '^ROW.* PASS$' "$L/batch.log") pass, $(grep -c '^ROW.* FAIL$' "$L/batch.log") fail"; grep -h '^ROW.* FAIL$\|^BENCH batch\|^ERROR' "$L/batch.log"
echo "-- bench (default):"; grep -h '^BENCH' "$L/bench.log"
echo "-- bench $AB_ENV:"; grep -h '^BENCH' "$L/bench-ab.log"
tar czf "$OUT/quick.tgz" -C "$L" . && rm -rf "$L"
