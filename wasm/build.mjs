// Compiles the AssemblyScript kernels in wasm/assembly/ to wasm/build/kernels.wasm.
//
// The module is built with SIMD128, -O3, the stub runtime (no GC: every buffer is managed from the
// JS side) and an imported SHARED memory (env.memory, maximum 65536 pages = 4 GiB), so that
//  - array views into the memory stay valid when it grows (a shared memory's buffer never detaches),
//  - arrays returned by the backend's alloc() are SharedArrayBuffer-backed and can be posted to workers,
//  - every worker thread can instantiate the module on its own memory.
// The kernels use no static data, so the module has no data segments: instantiating it never writes
// to the memory. The build checks that.
//
// Usage: node wasm/build.mjs [--wat]   (--wat also writes wasm/build/kernels.wat for inspection)
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, 'build');
const entry = join(here, 'assembly', 'index.ts');
const wantWat = process.argv.includes('--wat');

let asc;
try {
  asc = (await import('assemblyscript/asc')).default;
} catch (e) {
  // Not fatal: without kernels.wasm the wasm backend reports itself unavailable and the others remain.
  console.warn(`wasm: skipped, the AssemblyScript compiler is not installed (npm install): ${e instanceof Error ? e.message : e}`);
  process.exit(0);
}

const outputs = new Map();
const stderr = [];
const args = [
  entry,
  '--outFile', 'kernels.wasm',
  '--textFile', 'kernels.wat',
  '--optimizeLevel', '3',
  '--shrinkLevel', '0',
  '--noAssert',
  '--runtime', 'stub',
  '--enable', 'simd',
  '--enable', 'threads',
  '--importMemory',
  '--sharedMemory',
  '--initialMemory', '32',
  '--maximumMemory', '65536',
  '--use', 'abort=',
];
const { error } = await asc.main(args, {
  writeFile(name, contents) {
    outputs.set(name, contents);
  },
  stdout: { write: (s) => process.stdout.write(s) },
  stderr: { write: (s) => { stderr.push(String(s)); return true; } },
});
if (error) {
  console.error(stderr.join(''));
  console.error(`wasm: compilation failed: ${error.message}`);
  process.exit(1);
}
const wasm = outputs.get('kernels.wasm');
const wat = String(outputs.get('kernels.wat') ?? '');
if (!wasm) {
  console.error('wasm: the compiler produced no binary');
  process.exit(1);
}
// The backend owns all of the memory; a data segment would be written on every instantiation.
if (/\(data\b/.test(wat)) {
  console.error('wasm: the module has data segments (static data in the kernels); remove them');
  process.exit(1);
}
const imports = [...wat.matchAll(/\(import "([^"]+)" "([^"]+)"/g)].map((m) => `${m[1]}.${m[2]}`);
if (imports.join(',') !== 'env.memory') {
  console.error(`wasm: unexpected imports ${imports.join(', ')} (only env.memory is provided)`);
  process.exit(1);
}
mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, 'kernels.wasm'), wasm);
if (wantWat) writeFileSync(join(outDir, 'kernels.wat'), wat);
console.log(`wasm: wrote wasm/build/kernels.wasm (${wasm.length} bytes)`);
