#!/usr/bin/env node
// Builds the native addon at `npm install` time.
// CMake (through cmake-js) is the build of record; node-gyp builds the same CPU core where no
// CMake is installed. The CUDA backend is switched on by CMake only where nvcc and cuBLAS are
// complete (MIMIC_CUDA=AUTO); MIMIC_CUDA=ON makes a missing toolkit an error, OFF skips it.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const env = process.env;

if (env.MIMIC_SKIP_NATIVE === '1') {
  console.log('mimic: MIMIC_SKIP_NATIVE=1, not building the native addon');
  process.exit(0);
}

function run(cmd, args) {
  console.log(`mimic: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  return r.status === 0;
}

const hasCmake = spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
const jobs = String(env.MIMIC_BUILD_JOBS || Math.max(1, (await import('node:os')).cpus().length));
let ok = false;
if (hasCmake && env.MIMIC_USE_GYP !== '1') {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const addonDir = require('node-addon-api').include_dir;
  ok = run(process.execPath, [cmakeJs, 'compile', '--out', 'build', '--parallel', jobs,
    `--CDMIMIC_CUDA=${env.MIMIC_CUDA || 'AUTO'}`, `--CDNODE_ADDON_API_DIR=${addonDir}`]);
  if (!ok) console.error('mimic: the CMake build failed; trying node-gyp (CPU only)');
}
if (!ok) {
  const gyp = require.resolve('node-gyp/bin/node-gyp.js');
  // Build against the running Node's own headers when they are installed beside it, so that
  // node-gyp never needs to download them (npm passes its `nodedir` setting the same way).
  const localNode = path.resolve(path.dirname(process.execPath), '..');
  const nodedir = env.npm_config_nodedir ||
    (existsSync(path.join(localNode, 'include', 'node', 'node_api.h')) ? localNode : undefined);
  ok = run(process.execPath, [gyp, 'rebuild', `--jobs=${jobs}`, ...(nodedir ? [`--nodedir=${nodedir}`] : [])]);
}
if (!ok || !existsSync(path.join(root, 'build', 'Release', 'mimic.node'))) {
  console.error('mimic: could not build the native addon (see the compiler output above). ' +
    'You need a C++17 compiler and either CMake or Python for node-gyp.');
  process.exit(1);
}
