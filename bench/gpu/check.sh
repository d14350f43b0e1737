#!/bin/bash
# One device call = one whole round: build with CUDA, CUDA-vs-CPU op table, model-level checks on
# the reference fixtures, the 3B random checkpoint (logits vs transformers, NF4 load, training,
# decode), and the PyTorch peer — then a short table last. Logs go to $OUT.
#   device run:  source .device-node/activate.sh && bash bench/gpu/check.sh [steps]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${1:-30}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j16 --target mimic_cuda_check >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
(cmake --build build -j16 >> "$OUT/build.log" 2>&1 && echo "addon build: ok" || echo "addon build: FAILED (see build.log)") | tee "$OUT/addon.txt"
timeout 120 ./build/mimic_cuda_check ops 2>&1 | tee "$OUT/ops.log" | grep -v '^ROW' | tail -5
NODE_ADDON=$(find build -name mimic.node | head -1)
[ -n "$NODE_ADDON" ] && timeout 200 node -e "
  const a = require('./$NODE_ADDON'); const rows = a._opCheck().filter(r => r.op.startsWith('cuda.'));
  console.log('addon: cudaAvailable', a.cudaAvailable(), '- _opCheck cuda rows', rows.length, 'failing', rows.filter(r => !r.pass).length);
" 2>&1 | tee -a "$OUT/addon.txt"
timeout 120 ./build/mimic_cuda_check model test/fixtures/ref 2>&1 | tee "$OUT/model.log" | grep -v '^ROW' | tail -5
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || timeout 200 python3 bench/make_3b.py write $CK 2>&1 | grep -v Warning | tail -3
timeout 200 ./build/mimic_cuda_check logits3b $CK /tmp 2>&1 | tee /tmp/logits3b.log | tail -3
timeout 200 python3 bench/make_3b.py compare $CK /tmp/logits_3b_bf16.bin 2>&1 | grep -v -i warn | tee "$OUT/compare3b.log" | tail -3
timeout 300 ./build/mimic_cuda_check bench $CK "$STEPS" /tmp 2>&1 | tee "$OUT/bench.log" | grep -v '^ROW' | tail -50
timeout 240 python3 bench/peers/peer_torch.py --train 8x512 --decode 64 --steps 6 2>&1 | grep '^{' | tee "$OUT/peer.log"
echo "==================== summary ($(cat "$OUT/gpu.txt"))"
cat "$OUT/addon.txt"
grep -h '^ROW' "$OUT/ops.log" "$OUT/model.log" "$OUT/compare3b.log" "$OUT/bench.log" | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
grep -h '^ROW' "$OUT"/*.log | grep -c ' PASS$' | sed 's/^/rows passing: /'
grep -h '^BENCH' "$OUT"/*.log /tmp/logits3b.log
cat "$OUT/peer.log"
