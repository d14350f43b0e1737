#!/bin/bash
# One device call = one whole round: build with CUDA, CUDA-vs-CPU op table, model-level checks on
# the reference fixtures, the 3B random checkpoint (logits vs transformers, NF4 load on the GPU,
# training, decode) from C++ and through JS (bench/gpu/train-3b.mjs: the addon and dist/ on
# device 'cuda'), and the PyTorch peer — then a short table last. Logs go to $OUT.
#   device run (carry .device-node, dist, .gpu-carry):
#     source .device-node/activate.sh && bash bench/gpu/check.sh [cpp-steps] [js-steps]
# .gpu-carry/ (git-ignored) holds node_modules/{node-addon-api,@huggingface,apache-arrow,flatbuffers,
# tslib,json-with-bigint} and tok/ (the Llama-3 tokenizer.json + tokenizer_config.json).
# Last: bench/gpu/round3.mjs prints the round table and writes $OUT/<card>-round3.json.
# ROUND=checks: only the build, the op/model tables and the JS parity phase (no 3B, no peer).
# Every step runs under a deadline (DEADLINE_S, default 570 s from the start) so that the summary
# always prints inside a 10-minute device command; steps that no longer fit are skipped.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${1:-20}
JS_STEPS=${2:-150}
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-570}))
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$OUT/skipped.txt"; return 1; }; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
[ -d .gpu-carry/node_modules ] && mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j16 >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
NODE_ADDON=$PWD/$(find build -name mimic.node | head -1)
export MIMIC_ADDON=$NODE_ADDON
node -e "const a = require(process.env.MIMIC_ADDON); console.log('addon: cudaAvailable()', a.cudaAvailable())" 2>&1 | tee "$OUT/addon.txt"
can 30 ops && timeout $(left 90) ./build/mimic_cuda_check ops 2>&1 | tee "$OUT/ops.log" | grep -v '^ROW' | tail -5
can 30 model && timeout $(left 120) ./build/mimic_cuda_check model test/fixtures/ref 2>&1 | tee "$OUT/model.log" | grep -v '^ROW' | tail -5
if [ "${ROUND:-full}" = checks ]; then
  timeout $(left 120) node bench/gpu/train-3b.mjs --phases parity --out /tmp/js 2>&1 | tee "$OUT/js.log" | grep -v '^  '
  cp /tmp/js/js-round.json "$OUT/" 2>/dev/null
  echo "==================== summary ($(cat "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
  grep -h '^ROW' "$OUT"/ops.log "$OUT"/model.log | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op '
  grep -h '^CHECK FAIL\|^PHASE .* FAILED\|^JS ROUND\|^INFO' "$OUT/js.log"
  exit 0
fi
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || { can 60 make_3b && timeout $(left 200) python3 bench/make_3b.py write $CK 2>&1 | grep -v Warning | tail -3; }
[ -d .gpu-carry/tok ] && cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
can 60 js-round && timeout $(left 330) node bench/gpu/train-3b.mjs --ckpt $CK --out /tmp/js --tok .gpu-carry/tok --steps "$JS_STEPS" 2>&1 | tee "$OUT/js.log" | grep -v '^  '
cp /tmp/js/js-round.json "$OUT/" 2>/dev/null
can 60 peer && timeout $(left 180) python3 bench/peers/peer_torch.py --train 8x512,2x512 --decode 64 --steps 6 2>&1 | grep '^{' | tee "$OUT/peer.log"
can 45 cpp-bench && timeout $(left 150) ./build/mimic_cuda_check bench $CK "$STEPS" /tmp 2>&1 | tee "$OUT/bench.log" | grep -v '^ROW' | tail -30
can 60 logits3b && timeout $(left 90) ./build/mimic_cuda_check logits3b $CK /tmp 2>&1 | tee /tmp/logits3b.log | tail -2 &&
  can 30 compare3b && timeout $(left 150) python3 bench/make_3b.py compare $CK /tmp/logits_3b_bf16.bin 2>&1 | grep -v -i warn | tee "$OUT/compare3b.log" | tail -3
echo "==================== summary ($(cat "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$OUT/addon.txt" "$OUT/skipped.txt" 2>/dev/null
grep -h '^ROW' "$OUT"/ops.log "$OUT"/model.log "$OUT"/compare3b.log "$OUT"/bench.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
grep -h '^ROW' "$OUT"/*.log 2>/dev/null | grep -c ' PASS$' | sed 's/^/C++ rows passing: /'
grep -h '^BENCH' "$OUT"/*.log /tmp/logits3b.log 2>/dev/null
grep -h '^CHECK FAIL\|^PHASE .* FAILED\|^RESULT\|^JS ROUND' "$OUT/js.log" 2>/dev/null
cat "$OUT/peer.log" 2>/dev/null
# round 3+: the table mimic vs peer (ratios, ceilings, card) and <card>-round3.json in $OUT
command -v node > /dev/null && node bench/gpu/round3.mjs "$OUT" 2>&1 | tail -20
