#!/bin/bash
# Four-leg A/B of decode switches on a 2-GPU machine (logs packed into $OUT/ab4.tgz): build, the op
# table ‖ model table with $TABLE_ENV set (so switch-only check rows run), the batched rows with
# $TABLE_ENV, then the 3B C++ bench in two pairs of legs: GPU 0 $LEG0 ‖ GPU 1 $LEG1, then GPU 0 $LEG2 ‖
# GPU 1 $LEG3 (each an env assignment list; "-" for the defaults).
#   device: run(kind="nvidia-h200-x2", command="LEG1=MIMIC_DECODE_PDL=1 bash bench/gpu/ab4.sh", carry=[".device-node", "dist", ".gpu-carry"])
source bench/gpu/lib.sh
LEG0=${LEG0:--}; LEG1=${LEG1:--}; LEG2=${LEG2:--}; LEG3=${LEG3:--}
gpu_round ab4 400
gpu_build
[ -n "$TABLE_ENV" ] && export $TABLE_ENV
gpu_tables
gpu_checkpoint
CUDA_VISIBLE_DEVICES=$G1 timeout $(left 150) ./build/mimic_cuda_check batch $CK > "$L/batch.log" 2>&1
echo "-- batch ($TABLE_ENV): $(grep -c '^ROW.* PASS$' "$L/batch.log") pass, $(grep -c '^ROW.* FAIL$' "$L/batch.log") fail"; grep -h '^ROW.* FAIL$\|^BENCH batch\|^ERROR' "$L/batch.log"
[ -n "$TABLE_ENV" ] && for v in $TABLE_ENV; do unset "${v%%=*}"; done
leg() {  # leg GPU ENV NAME
  local e=$2; [ "$e" = - ] && e=
  mkdir -p /tmp/$3
  CUDA_VISIBLE_DEVICES=$1 env $e timeout $(left 150) ./build/mimic_cuda_check bench $CK 6 /tmp/$3 > "$L/$3.log" 2>&1
}
for pair in "0 1" "2 3"; do
  set -- $pair
  can 60 "legs $pair" || break
  eval "E0=\$LEG$1; E1=\$LEG$2"
  leg 0 "$E0" leg$1 & P=$!
  leg $G1 "$E1" leg$2
  wait $P
  for i in $1 $2; do eval "E=\$LEG$i"; echo "-- leg$i [$E]: $(grep -h '^BENCH decode\|^BENCH ttft\|^BENCH prefill' "$L/leg$i.log" | tr '\n' ' ')"; done
done
pack
