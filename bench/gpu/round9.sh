#!/bin/bash
# Round 9 — the table round, ONE command on a 2-GPU machine (logs packed into $OUT/round9.tgz):
#   build (CUDA + NCCL; the 3B checkpoint written meanwhile) · op table (GPU 0) ‖ model table (GPU 1)
#   · GPU 0: the JS round (bench/gpu/train-3b.mjs: the addon + dist/ on device 'cuda': parity,
#     load, decode, prefill, TTFT, training 8×512 and 2×512 through finetune's native trainer), then
#     the C++ bench (mimic_cuda_check bench), then serve at 1 and 32 clients
#   ‖ GPU 1: the PyTorch peer (bench/peers/peer_torch.py, its ceilings too), the C++ bench again with
#     MIMIC_GEMV_PERSIST=0 (the A/B of the persistent GEMV), the 3B logits vs transformers
#   · the table (bench/gpu/round3.mjs: mimic vs peer, ratios, ceilings).
#   here:   npm run build:ts && bash bench/gpu/round4.sh --prepare
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/round9.sh", carry=[".device-node", "dist", ".gpu-carry"])
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; L=$OUT/logs; mkdir -p "$L"
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-570}))
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$L/skipped.txt"; return 1; }; }
pack() { tar czf "$OUT/round9.tgz" -C "$L" . && rm -rf "$L"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | head -1 | tee "$L/gpu.txt"
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
echo "build: $(( $(date +%s) - t0 )) s"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
CUDA_VISIBLE_DEVICES=0 timeout $(left 150) ./build/mimic_cuda_check ops > "$L/ops.log" 2>&1 &
CUDA_VISIBLE_DEVICES=$G1 timeout $(left 150) ./build/mimic_cuda_check model test/fixtures/ref > "$L/model.log" 2>&1
wait %1 2>/dev/null; wait
for f in ops model; do echo "$f: $(grep -c '^ROW.* PASS$' "$L/$f.log") pass, $(grep -c '^ROW.* FAIL$' "$L/$f.log") fail; $(tail -1 "$L/$f.log")"; done
grep -h '^ROW.* FAIL$\|^ERROR' "$L"/ops.log "$L"/model.log | head -20
wait $MK 2>/dev/null; [ -f $CK/config.json ] || { echo "no 3B checkpoint"; tail -3 /tmp/make3b.log; pack; exit 1; }
cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
(
  can 120 js-round && CUDA_VISIBLE_DEVICES=0 timeout $(left 240) node bench/gpu/train-3b.mjs --ckpt $CK --out /tmp/js --tok .gpu-carry/tok --steps "${JS_STEPS:-60}" > "$L/js.log" 2>&1
  cp /tmp/js/js-round.json "$L/" 2>/dev/null
  can 60 cpp-bench && CUDA_VISIBLE_DEVICES=0 timeout $(left 150) ./build/mimic_cuda_check bench $CK "${STEPS:-12}" /tmp > "$L/bench.log" 2>&1
  for C in 1 32; do
    R=$([ $C = 1 ] && echo 6 || echo 128)
    can 25 "serve $C" && CUDA_VISIBLE_DEVICES=0 timeout $(left 60) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
      --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$L/serve-$C.json" 2> "$L/serve-$C.err"
  done
) &
SIDE=$!
can 60 peer && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 200) python3 bench/peers/peer_torch.py --train 8x512,2x512 --decode 64 --steps 6 2>&1 | grep '^{' > "$L/peer.log"
can 60 bench-nopersist && CUDA_VISIBLE_DEVICES=$G1 MIMIC_GEMV_PERSIST=0 timeout $(left 150) ./build/mimic_cuda_check bench $CK 4 /tmp/np > "$L/bench-nopersist.log" 2>&1
mkdir -p /tmp/l3 /tmp/np
can 60 logits3b && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 90) ./build/mimic_cuda_check logits3b $CK /tmp/l3 > /tmp/logits3b.log 2>&1 &&
  can 30 compare3b && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 120) python3 bench/make_3b.py compare $CK /tmp/l3/logits_3b_bf16.bin 2>&1 | grep -v -i warn > "$L/compare3b.log"
wait $SIDE
echo "==================== summary ($(cat "$L/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$L/skipped.txt" 2>/dev/null
grep -h '^ROW' "$L"/compare3b.log "$L"/bench.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
echo "-- bench (default):"; grep -h '^BENCH' "$L/bench.log" 2>/dev/null
echo "-- bench MIMIC_GEMV_PERSIST=0:"; grep -h '^BENCH decode\|^BENCH ttft\|^BENCH prefill' "$L/bench-nopersist.log" 2>/dev/null
grep -h '^CHECK FAIL\|^PHASE .* FAILED\|^RESULT\|^JS ROUND' "$L/js.log" 2>/dev/null
for C in 1 32; do echo "serve $C: $(node -e "const r=JSON.parse(require('fs').readFileSync('$L/serve-$C.json','utf8'));console.log(r.tokensPerSecond,'tok/s p50',r.p50Ms,'p99',r.p99Ms,'errors',r.errors)" 2>&1 | tail -1)"; done
node bench/gpu/round3.mjs "$L" 2>&1 | tail -24
pack; ls -la "$OUT"
