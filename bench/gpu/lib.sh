# lib.sh — what every device round script starts with (source it from the repository root on the
# device machine). After `gpu_round NAME [deadline_s]`:
#   $OUT, $L (logs folder, packed by `pack` into $OUT/NAME.tgz: a call returns at most 8 files),
#   $NGPU, $G1 (the second card, or 0 on one card), $CK (the 3B checkpoint folder),
#   left N / can N WHAT (time left under the deadline), NCCL/NVSHMEM multicast off, node_modules
#   from .gpu-carry, the 3B checkpoint being written in the background on $G1 ($MK).
# `gpu_build [cmake flags...]` builds with CUDA (sm_90) into build/ and exports MIMIC_ADDON;
# `gpu_checkpoint` waits for the checkpoint and adds the tokenizer files.
set -o pipefail
source .device-node/activate.sh

gpu_round() {
  ROUND_NAME=$1
  OUT=${OUT:-/tmp/out}; L=$OUT/logs-$ROUND_NAME; mkdir -p "$L"  # (one folder a round: a nested round — gpu_trace_legs — packs its own)
  T_START=$(date +%s)
  DEADLINE=$((T_START + ${DEADLINE_S:-${2:-560}}))
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | head -1 | tee "$L/gpu.txt"
  NGPU=$(nvidia-smi -L | wc -l)
  G1=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0)
  mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/ 2>/dev/null
  CK=/tmp/ckpt3b
  [ -f $CK/config.json ] || ( CUDA_VISIBLE_DEVICES=$G1 timeout 240 python3 bench/make_3b.py write $CK > /tmp/make3b.log 2>&1 ) &
  MK=$!
}
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -gt "$1" ] && echo "$1" || echo "$l"; }
can() { [ $((DEADLINE - $(date +%s))) -gt "${1:-20}" ] || { echo "SKIPPED $2 (deadline)" | tee -a "$L/skipped.txt"; return 1; }; }
pack() { tar czf "$OUT/$ROUND_NAME.tgz" -C "$L" . && rm -rf "$L"; }

gpu_build() {
  local t0; t0=$(date +%s)
  cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 "$@" \
    -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$L/build.log" 2>&1 &&
    cmake --build build -j32 >> "$L/build.log" 2>&1 || { grep -B2 -A8 'error' "$L/build.log" | head -60; pack; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s; $(grep -o 'mimic: NCCL [A-Z]*' "$L/build.log")"
  export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
}

# op table on GPU 0 beside the model table on $G1 (env for both: the caller's), then their tally
gpu_tables() {
  CUDA_VISIBLE_DEVICES=0 timeout $(left 150) ./build/mimic_cuda_check ops > "$L/ops.log" 2>&1 &
  local ops=$!
  CUDA_VISIBLE_DEVICES=$G1 timeout $(left 150) ./build/mimic_cuda_check model test/fixtures/ref > "$L/model.log" 2>&1
  wait $ops
  for f in ops model; do echo "$f: $(grep -c '^ROW.* PASS$' "$L/$f.log") pass, $(grep -c '^ROW.* FAIL$' "$L/$f.log") fail; $(tail -1 "$L/$f.log")"; done
  grep -h '^ROW.* FAIL$\|^ERROR' "$L"/ops.log "$L"/model.log | head -20
}

# the LoRA's effect on a 3B-width 2-layer model's loss: numpy (bench/gpu/lora_effect.py) vs mimic CPU,
# CUDA bf16 / NF4 / NF4 + MIMIC_FWD_GROUPED=1 (bench/gpu/lora_effect.mjs); needs gpu_build's addon
gpu_lora_effect() {
  can 120 lora-effect || return 1
  timeout $(left 60) python3 bench/gpu/lora_effect.py /tmp/lora-effect 2>&1 | tee "$L/lora-effect.log" | tail -1
  timeout $(left 150) node bench/gpu/lora_effect.mjs /tmp/lora-effect 2>&1 | tee -a "$L/lora-effect.log" | grep '^LORA\|Error'
}

# AB0 set (trace.sh's legs, e.g. AB0="X=1"): the batch-1 decode step's same-process A/B timelines
# (bench/gpu/trace.sh) on the build and checkpoint already there, within what is left of the deadline
# (its logs packed apart: trace.tgz)
gpu_trace_legs() {
  [ -n "$AB0" ] && can 90 trace || return 0
  echo "==================== trace legs: $AB0"
  TABLES= BATCH= BRIEF=${BRIEF:-1} DEADLINE_S=$(left 280) bash bench/gpu/trace.sh 2>&1 | grep -v '^v[0-9]\|^NVIDIA\|^build:'
}

# the batch rows of the 3B (mimic_cuda_check batch: batched decode == alone, the decode-graph and
# prompt rows, the step-rate sweep) on card ${1:-0}, then their tally and what failed
gpu_batch() {
  CUDA_VISIBLE_DEVICES=${1:-0} timeout $(left 150) ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1
  echo "-- batch: $(grep -c '^ROW.* PASS$' "$L/batch.log") pass, $(grep -c '^ROW.* FAIL$' "$L/batch.log") fail"; grep -h '^ROW.* FAIL$\|^BENCH batch\|^ERROR' "$L/batch.log"
}

# A/B legs of eager prof passes (mimic_cuda_check prof: the PROF line, best and mean of 5): for each
# phase in $1 (e.g. "prefill512 train2"), each leg in $2 ("-" = defaults; a leg's assignments joined
# by commas), one process a leg, in turn on card 0
gpu_prof_legs() {
  local ph e ee
  for ph in $1; do
    for e in $2; do
      ee=$(echo "$e" | tr ',' ' '); [ "$ee" = - ] && ee=
      can 20 "prof $ph" && CUDA_VISIBLE_DEVICES=0 env $ee timeout $(left 60) ./build/mimic_cuda_check prof $CK $ph 2>&1 | grep -m1 '^PROF\|ERROR' | sed "s/^/[${ee:-default}] /"
    done
  done
}

gpu_checkpoint() {
  wait $MK 2>/dev/null
  [ -f $CK/config.json ] || { echo "no 3B checkpoint"; tail -3 /tmp/make3b.log; pack; exit 1; }
  cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
}

# serve-load against the 3B at C clients on GPU 0 (serve-C[TAG].json / .err in $L), one summary line;
# TAG (optional) names a leg run under other env assignments: ( export X=0; gpu_serve 32 -x0 )
gpu_serve() {
  local C=$1 R; R=$([ "$1" = 1 ] && echo 6 || echo 128)
  can 25 "serve $C$2" || return 1
  CUDA_VISIBLE_DEVICES=0 timeout $(left 60) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
    --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 50 --json > "$L/serve-$C$2.json" 2> "$L/serve-$C$2.err"
}
serve_line() {
  echo "serve $1: $(node -e "const r=JSON.parse(require('fs').readFileSync('$L/serve-$1.json','utf8'));console.log(r.tokensPerSecond,'tok/s p50',r.p50Ms,'p99',r.p99Ms,'errors',r.errors)" 2>&1 | tail -1)"
}
