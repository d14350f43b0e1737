#!/bin/bash
# Round 9 — the table round, ONE command on a 2-GPU machine (logs packed into $OUT/round9.tgz):
#   build (CUDA + NCCL; the 3B checkpoint written meanwhile) · op table (GPU 0) ‖ model table (GPU 1)
#   · GPU 0: the JS round (bench/gpu/train-3b.mjs: the addon + dist/ on device 'cuda': parity,
#     load, decode, prefill, TTFT, training 8×512 and 2×512 through finetune's native trainer), then
#     the C++ bench (mimic_cuda_check bench), then serve at 1 and 32 clients
#   ‖ GPU 1: the PyTorch peer (bench/peers/peer_torch.py, its ceilings too), the C++ bench again with
#     $AB_ENV (an A/B leg; round 9 ran MIMIC_GEMV_PERSIST=0, since removed), the 3B logits vs transformers
#   · the table (bench/gpu/round3.mjs: mimic vs peer, ratios, ceilings).
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   device: run(kind="nvidia-h200-x2", command="bash bench/gpu/round9.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
gpu_round round9 570
gpu_build
gpu_tables
gpu_checkpoint
(
  can 120 js-round && CUDA_VISIBLE_DEVICES=0 timeout $(left 240) node bench/gpu/train-3b.mjs --ckpt $CK --out /tmp/js --tok .gpu-carry/tok --steps "${JS_STEPS:-60}" > "$L/js.log" 2>&1
  cp /tmp/js/js-round.json "$L/" 2>/dev/null
  can 60 cpp-bench && CUDA_VISIBLE_DEVICES=0 timeout $(left 150) ./build/mimic_cuda_check bench $CK "${STEPS:-12}" /tmp > "$L/bench.log" 2>&1
  for C in 1 32; do gpu_serve $C; done
  [ -n "$SERVE_AB" ] && ( export $SERVE_AB; gpu_serve 32 -ab )  # SERVE_AB="X=0": 32 clients again under X=0
) &
SIDE=$!
can 60 peer && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 200) python3 bench/peers/peer_torch.py --train 8x512,2x512 --decode 64 --steps 6 2>&1 | grep '^{' > "$L/peer.log"
can 60 bench-ab && CUDA_VISIBLE_DEVICES=$G1 env ${AB_ENV:-MIMIC_NF4_GEMM_SMALL=0} timeout $(left 150) ./build/mimic_cuda_check bench $CK 4 /tmp/np > "$L/bench-ab.log" 2>&1
mkdir -p /tmp/l3 /tmp/np
can 60 logits3b && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 90) ./build/mimic_cuda_check logits3b $CK /tmp/l3 > /tmp/logits3b.log 2>&1 &&
  can 30 compare3b && CUDA_VISIBLE_DEVICES=$G1 timeout $(left 120) python3 bench/make_3b.py compare $CK /tmp/l3/logits_3b_bf16.bin 2>&1 | grep -v -i warn > "$L/compare3b.log"
wait $SIDE
echo "==================== summary ($(cat "$L/gpu.txt"), $(( $(date +%s) - T_START )) s)"
cat "$L/skipped.txt" 2>/dev/null
grep -h '^ROW' "$L"/compare3b.log "$L"/bench.log 2>/dev/null | sed 's/^ROW //' | grep -v ' PASS$' | grep -v '^op ' || true
echo "-- bench (default):"; grep -h '^BENCH' "$L/bench.log" 2>/dev/null
echo "-- bench ${AB_ENV:-MIMIC_NF4_GEMM_SMALL=0}:"; grep -h '^BENCH' "$L/bench-ab.log" 2>/dev/null
grep -h '^CHECK FAIL\|^PHASE .* FAILED\|^RESULT\|^JS ROUND' "$L/js.log" 2>/dev/null
for C in 1 32; do serve_line $C; done
[ -n "$SERVE_AB" ] && echo "[$SERVE_AB]" && serve_line 32-ab
node bench/gpu/round3.mjs "$L" 2>&1 | tail -24
pack; ls -la "$OUT"
