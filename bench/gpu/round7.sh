#!/bin/bash
# Round 7 (issues 6, 7): verify and time the two switches prepared in rounds 6/6b —
# MIMIC_ATTN_TC (tensor-core flash attention) and MIMIC_NF4_DEQUANT_FAST (bandwidth-shaped dequant) —
# in ONE device command on a 2-GPU machine, the A/B legs side by side (one card each, same call):
#   build (CUDA + NCCL, so that dp-round.sh finds it warm) · SASS counts · op table (forced TC and
#   fast-dequant rows) · model table with the switches off (GPU 0) and on (GPU 1) · 3B C++ bench
#   off/off | TC only, then both | dequant only · batched decode off | on · serve at 1 and 32 clients.
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/round7.sh", carry=[".device-node", "dist", ".gpu-carry"])
# SWITCHES="1 1" (default) is the pair the serve leg uses. Every step runs under a deadline.
set -o pipefail
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-560}))
STEPS=${STEPS:-12}
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$OUT/skipped.txt"; return 1; }; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
NGPU=$(nvidia-smi -L | wc -l)
G1=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0)  # one card: the legs run one after the other
mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/
CK=/tmp/ckpt3b
( CUDA_VISIBLE_DEVICES=$G1 timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1
  cp .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null; echo done >> /tmp/make3b.log ) &
MK=$!
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j32 >> "$OUT/build.log" 2>&1 || { grep -B2 -A8 'error' "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s; $(grep -o 'mimic: NCCL [A-Z]*' "$OUT/build.log")"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
{ for f in attention_tc nf4_dequant_fast; do o=$(find build -name "$f.cu.o" | head -1)
    echo "$f: HMMA $(cuobjdump -sass "$o" 2>/dev/null | grep -c HMMA) LDL/STL $(cuobjdump -sass "$o" 2>/dev/null | grep -c 'LDL\|STL') LDG.128 $(cuobjdump -sass "$o" 2>/dev/null | grep -c 'LDG.E.128') STG.128 $(cuobjdump -sass "$o" 2>/dev/null | grep -c 'STG.E.128')"; done; } | tee "$OUT/sass.txt"
# op table on GPU 0 while the model table runs with both switches on GPU 1
can 40 ops && { CUDA_VISIBLE_DEVICES=0 timeout $(left 120) ./build/mimic_cuda_check ops > "$OUT/ops.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=$G1 MIMIC_ATTN_TC=1 MIMIC_NF4_DEQUANT_FAST=1 timeout $(left 120) ./build/mimic_cuda_check model test/fixtures/ref > "$OUT/model-on.log" 2>&1; wait; }
can 30 model-off && CUDA_VISIBLE_DEVICES=0 timeout $(left 90) ./build/mimic_cuda_check model test/fixtures/ref > "$OUT/model-off.log" 2>&1
for f in ops model-on model-off; do echo "$f: $(grep -c '^ROW.* PASS$' "$OUT/$f.log") pass, $(grep -c '^ROW.* FAIL$' "$OUT/$f.log") fail; $(tail -1 "$OUT/$f.log")"; done
grep -h '^ROW.* FAIL$' "$OUT"/ops.log "$OUT"/model-on.log "$OUT"/model-off.log | head -40
TC_OK=$(grep '^ROW' "$OUT/ops.log" | grep -i 'attention_tc' | grep -vc ' PASS$')
DQ_OK=$(grep '^ROW' "$OUT/ops.log" | grep -i 'dequant fast' | grep -vc ' PASS$')
echo "attention_tc rows not passing: $TC_OK; dequant fast rows not passing: $DQ_OK"
wait $MK; tail -2 /tmp/make3b.log
[ -f $CK/config.json ] || { echo "no 3B checkpoint"; exit 1; }
bench() {  # bench <gpu> <tc> <dq> <tag>
  CUDA_VISIBLE_DEVICES=$1 MIMIC_ATTN_TC=$2 MIMIC_NF4_DEQUANT_FAST=$3 timeout $(left 170) ./build/mimic_cuda_check bench $CK "$STEPS" /tmp/b$4 > "$OUT/bench-$4.log" 2>&1
}
mkdir -p /tmp/b00 /tmp/b10 /tmp/b11 /tmp/b01
can 90 bench-1 && { bench 0 0 0 00 & bench $G1 1 0 10; wait; }
can 90 bench-2 && { bench 0 1 1 11 & bench $G1 0 1 01; wait; }
for t in 00 10 01 11; do echo "== bench tc=${t:0:1} dq=${t:1:1}"; grep '^BENCH\|^ERROR\|error' "$OUT/bench-$t.log" 2>/dev/null | grep -v 'batch S'; done
can 60 batch && { CUDA_VISIBLE_DEVICES=0 MIMIC_NF4_DEQUANT_FAST=0 timeout $(left 100) ./build/mimic_cuda_check batch $CK > "$OUT/batch-0.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=$G1 MIMIC_NF4_DEQUANT_FAST=1 MIMIC_ATTN_TC=1 timeout $(left 100) ./build/mimic_cuda_check batch $CK > "$OUT/batch-1.log" 2>&1; wait; }
for t in 0 1; do echo "== batch dq=$t"; grep '^BENCH\|^ROW' "$OUT/batch-$t.log" | sed 's/^ROW //'; done
read TC DQ <<< "${SWITCHES:-1 1}"
for C in 1 32; do
  R=$([ $C = 1 ] && echo 6 || echo 128)
  can 25 "serve $C" && CUDA_VISIBLE_DEVICES=0 MIMIC_ATTN_TC=$TC MIMIC_NF4_DEQUANT_FAST=$DQ timeout $(left 60) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
    --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$OUT/serve-$C.json" 2> "$OUT/serve-$C.err"
  echo "serve $C clients (tc=$TC dq=$DQ): rc $?"; tail -2 "$OUT/serve-$C.err"
done
echo "==================== summary ($(head -1 "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$OUT/skipped.txt" 2>/dev/null
cp "$OUT/batch-1.log" "$OUT/batch.log" 2>/dev/null; cp "$OUT/model-on.log" "$OUT/model.log" 2>/dev/null
node bench/gpu/round5.mjs "$OUT" 2>&1 | tail -12
