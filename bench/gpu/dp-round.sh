#!/bin/bash
# Data-parallel round (issue 8) on its own: build with CUDA + NCCL (the 3B checkpoint written in the
# background meanwhile), then bench/gpu/dp-round.mjs — the same 3B-shaped finetune on 1 GPU and on
# 2 GPUs (two worker processes, NCCL all-reduce): loss / grad-norm curves side by side and the
# 2-GPU / 1-GPU tokens/s ratio (target >= 1.85). bench/gpu/round8.sh runs the same step in a full round.
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   device: run(kind="nvidia-h200-x2", carry=[".device-node", "dist", ".gpu-carry"],
#               command="bash bench/gpu/dp-round.sh [steps] [gradAccum]")
# NCCL: nccl.h / libnccl.so.2 from the PyTorch wheel nvidia-nccl-cu13 (site-packages/nvidia/nccl),
# which CMakeLists.txt finds by itself; MIMIC_NCCL=ON makes a miss a build error.
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${1:-16}
ACCUM=${2:-8}
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-560}))
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export MIMIC_DIST_TIMEOUT_MS=${MIMIC_DIST_TIMEOUT_MS:-300000}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "dp-round needs 2 GPUs (kind nvidia-h200-x2)"; exit 1; }
mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/ 2>/dev/null
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || ( timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1 ) &
MK=$!
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DMIMIC_NCCL=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j32 >> "$OUT/build.log" 2>&1 || { grep -B2 -A8 'error' "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s; $(grep -o 'mimic: NCCL [A-Z]*' "$OUT/build.log")"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
wait $MK 2>/dev/null; [ -f $CK/config.json ] || { echo "no 3B checkpoint"; tail -3 /tmp/make3b.log; exit 1; }
cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
timeout $(left 600) node bench/gpu/dp-round.mjs $CK "$STEPS" "$ACCUM" /tmp/dp 2>&1 | tee "$OUT/dp.log"
cp /tmp/dp/dp-round.json "$OUT/" 2>/dev/null
echo "==================== summary ($(head -1 "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
grep -h '^RUN\|^RESULT' "$OUT/dp.log"
