#!/bin/bash
# The table round on ONE card (round9.sh needs two: it runs the peer beside mimic). Everything in
# turn, never two timed processes on the card at once, most wanted first, each under the deadline
# (logs packed into $OUT/round18.tgz):
#   build · op ‖ model tables (correctness only: these two may share the card) · the C++ bench
#   (mimic_cuda_check bench: load, decode incl. LoRA r=16, prefill, TTFT, training) · the PyTorch peer
#   (bench/peers/peer_torch.py: its ceilings and training/decode figures) · the JS round's bench phase
#   (bench/gpu/train-3b.mjs through the addon + dist/) · serve at 1 and 32 clients · the table
#   (bench/gpu/round3.mjs: mimic vs peer, ratios, ceilings).
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   device: run(kind="nvidia-h200", command="bash bench/gpu/round18.sh", carry=[".device-node", "dist", ".gpu-carry"])
# LORA_EFFECT=1: bench/gpu/lora_effect.py / .mjs after the tables; NO_JS=1 / NO_SERVE=1: no JS phase / serve;
# BATCH=1: the batch rows after the table; PREFILL_ENVS (bench/gpu/prefill.sh's legs): prof prefill512
# and train2 per leg. AB0 set (trace.sh's legs, e.g. AB0="X=0;LORA_AB=16 X=0"): after the table, in the same call, the
# same-process A/B timelines of bench/gpu/trace.sh on the build and checkpoint already there — one
# machine start instead of two (starts cost 1-3 minutes of device time, failed ones as much).
source bench/gpu/lib.sh
gpu_round round18 575
gpu_build
gpu_tables
[ -n "$LORA_EFFECT" ] && gpu_lora_effect  # LORA_EFFECT=1: the LoRA's effect, numpy vs mimic CPU / CUDA (lib.sh)
gpu_checkpoint
can 60 cpp-bench && timeout $(left 150) ./build/mimic_cuda_check bench $CK "${STEPS:-12}" /tmp > "$L/bench.log" 2>&1
can 60 peer && timeout $(left 200) python3 bench/peers/peer_torch.py --train 8x512,2x512 --decode 64 --steps 6 2>&1 | grep '^{' > "$L/peer.log"
[ -z "$NO_JS" ] && can 60 js-bench && timeout $(left 200) node bench/gpu/train-3b.mjs --ckpt $CK --out /tmp/js --tok .gpu-carry/tok --phases bench --steps "${JS_STEPS:-40}" > "$L/js.log" 2>&1
cp /tmp/js/js-round.json "$L/" 2>/dev/null
[ -z "$NO_SERVE" ] && for C in 1 32; do gpu_serve $C; done
echo "==================== summary ($(cat "$L/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$L/skipped.txt" 2>/dev/null
grep -h '^ROW' "$L"/bench.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
echo "-- bench:"; grep -h '^BENCH' "$L/bench.log" 2>/dev/null
grep -h '^CHECK FAIL\|^PHASE .* FAILED\|^RESULT\|^JS ROUND' "$L/js.log" 2>/dev/null
for C in 1 32; do serve_line $C; done
node bench/gpu/round3.mjs "$L" 2>&1 | tail -24
[ -n "$BATCH" ] && can 100 batch && gpu_batch 0  # BATCH=1: the batched-decode / prompt rows on the 3B, after the table
[ -n "$PREFILL_ENVS" ] && gpu_prof_legs "${PROF_PHASES:-prefill512 train2}" "$PREFILL_ENVS"  # PREFILL_ENVS="- X=1": prof legs (PROF_PHASES: which)
pack
gpu_trace_legs  # AB0 set: trace.sh's decode A/B legs (lib.sh)
ls -la "$OUT"
