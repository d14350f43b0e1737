#!/bin/bash
# Data-parallel round (issue 8): build with CUDA + NCCL, then the same 3B-shaped finetune on 1 GPU
# (plain device 'cuda') and on 2 GPUs (devices [0, 1]: two worker processes, NCCL all-reduce),
# and a table: loss curves side by side (same within bf16 tolerance), steady tokens/s and the
# 2-GPU / 1-GPU ratio (target >= 1.85). NOT RUN YET: written in a session without GPU time.
#   device run, kind nvidia-h100-x2 (or nvidia-h200-x2), carry .device-node, dist, .gpu-carry:
#     source .device-node/activate.sh && bash bench/gpu/dp-round.sh [steps] [gradAccum]
# (npm run build:ts first, here, so that dist/ holds the compiled lib; .gpu-carry as check.sh says.)
# NCCL: nccl.h / libnccl.so.2 from the PyTorch wheel nvidia-nccl-cu13 (site-packages/nvidia/nccl),
# which CMakeLists.txt finds by itself; MIMIC_NCCL=ON makes a miss a build error.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${1:-24}
ACCUM=${2:-8}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export MIMIC_DIST_TIMEOUT_MS=${MIMIC_DIST_TIMEOUT_MS:-300000}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "dp-round needs 2 GPUs (kind nvidia-h100-x2 / nvidia-h200-x2)"; exit 1; }
python3 -c "import nvidia.nccl as m; print('nccl wheel:', list(m.__path__)[0])" 2>&1 | tee -a "$OUT/gpu.txt"
[ -d .gpu-carry/node_modules ] && mkdir -p node_modules && cp -rn .gpu-carry/node_modules/. node_modules/
t0=$(date +%s)
cmake -S . -B build -G Ninja -DMIMIC_CUDA=ON -DMIMIC_NCCL=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_JS_INC="$NODE_API_INC" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" > "$OUT/build.log" 2>&1 &&
  cmake --build build -j16 >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep 'mimic: NCCL' "$OUT/build.log"
echo "build: $(( $(date +%s) - t0 )) s"
export MIMIC_ADDON=$PWD/$(find build -name mimic.node | head -1)
node -e "const a = require(process.env.MIMIC_ADDON); console.log('cudaAvailable', a.cudaAvailable(), 'ncclAvailable', a._ncclAvailable())" | tee -a "$OUT/gpu.txt"
CK=/tmp/ckpt3b
[ -f $CK/config.json ] || timeout 240 python3 bench/make_3b.py write $CK 2>&1 | grep -v Warning | tail -3
[ -d .gpu-carry/tok ] && cp -n .gpu-carry/tok/tokenizer*.json $CK/ 2>/dev/null
cat > /tmp/dp-round.mjs <<'JS'
// 1 GPU vs 2 GPUs on the same pre-tokenized synthetic set (rows of 256..512 tokens, the first
// half of each masked), the same seed, dropout 0, gradAccum micro-batches of 4096 tokens a step.
import { writeFileSync, mkdirSync, readFileSync } from 'node:fs';
const { finetune } = await import(process.cwd() + '/dist/index.js');
const [ck, steps, accum, out] = [process.argv[2], +process.argv[3], +process.argv[4], process.argv[5]];
mkdirSync(out, { recursive: true });
let s = 12345; const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
const lines = [];
for (let i = 0; i < 8 * accum * (steps + 2); i++) {
  const n = 256 + Math.floor(rnd() * 257), ids = [128000], labels = [-100];
  for (let t = 1; t < n; t++) { const id = 1000 + Math.floor(rnd() * 20000); ids.push(id); labels.push(t < n / 2 ? -100 : id); }
  lines.push(JSON.stringify({ input_ids: ids, labels }));
}
writeFileSync(`${out}/train.jsonl`, lines.join('\n') + '\n');
const base = { model: ck, data: `${out}/train.jsonl`, quant: 'nf4', epochs: 1, lr: 2e-4, lora: { r: 16, alpha: 32, dropout: 0 },
  batchTokens: 4096, maxSeqLen: 512, gradAccum: accum, seed: 7, stopAfterSteps: steps, checkpointEvery: 0, cacheDir: null, recompute: true };
const runs = {};
for (const [name, extra] of [['1gpu', { device: 'cuda' }], ['2gpu', { devices: [0, 1] }]]) {
  const t0 = Date.now();
  const r = await finetune({ ...base, ...extra, out: `${out}/${name}` });
  const recs = readFileSync(`${out}/${name}/metrics.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.type === 'train');
  const tps = recs.slice(3).map((x) => x.tokensPerSec).sort((a, b) => a - b);
  runs[name] = { loss: recs.map((x) => x.loss), steady: tps[Math.floor(tps.length / 2)], wall: (Date.now() - t0) / 1000, worldSize: r.worldSize };
  console.log(`RUN ${name}: ${recs.length} steps, wall ${runs[name].wall.toFixed(1)} s, steady ${runs[name].steady.toFixed(0)} tokens/s`);
}
const a = runs['1gpu'], b = runs['2gpu'];
console.log('\nstep   loss 1 GPU   loss 2 GPUs   rel diff');
let worst = 0;
a.loss.forEach((l, i) => { const d = Math.abs(l - b.loss[i]) / l; worst = Math.max(worst, d); console.log(`${String(i + 1).padStart(4)}   ${l.toFixed(5).padStart(10)}   ${b.loss[i].toFixed(5).padStart(11)}   ${d.toExponential(2)}`); });
const ratio = b.steady / a.steady;
// bf16 GEMMs and a reordered fp32 gradient sum: the curves agree to bf16 level, not bit for bit
const TOL = 2e-2;
console.log(`\nRESULT loss max rel diff ${worst.toExponential(2)} (tolerance ${TOL}) ${worst <= TOL ? 'PASS' : 'FAIL'}`);
console.log(`RESULT tokens/s 1 GPU ${a.steady.toFixed(0)}, 2 GPUs ${b.steady.toFixed(0)}, ratio ${ratio.toFixed(3)} (target >= 1.85) ${ratio >= 1.85 ? 'PASS' : 'FAIL'}`);
writeFileSync(`${out}/dp-round.json`, JSON.stringify({ runs, worst, ratio }, null, 1));
JS
timeout 560 node /tmp/dp-round.mjs $CK "$STEPS" "$ACCUM" /tmp/dp 2>&1 | tee "$OUT/dp.log"
cp /tmp/dp/dp-round.json "$OUT/" 2>/dev/null
echo "==================== summary ($(head -1 "$OUT/gpu.txt"))"
grep -h '^RUN\|^RESULT' "$OUT/dp.log"
