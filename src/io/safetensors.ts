/**
 * The safetensors format (https://github.com/huggingface/safetensors), read strictly and written
 * deterministically.
 *
 * Layout: an 8-byte little-endian unsigned header length N; N bytes of UTF-8 JSON (an object mapping each
 * tensor name to {dtype, shape, data_offsets}, plus an optional "__metadata__" object of string values;
 * trailing spaces are allowed as padding); then the data section, where each tensor occupies
 * [begin, end) relative to the start of the data section, row-major, little-endian.
 *
 * Parsing checks everything and throws a `SafetensorsError` whose message starts with the file name and
 * then names the problem: header length bounded (at most 100 MB) and within the file, valid UTF-8 JSON
 * object, only known dtypes, shapes of non-negative integers, each tensor's byte length equal to
 * product(shape) * dtype size, offsets inside the data section, tensors contiguous and non-overlapping
 * and covering the data section exactly, no unknown fields, metadata values strings.
 *
 * Tensor data is always copied into a fresh, correctly aligned typed array, so results never alias the
 * input buffer. The host must be little-endian (every platform Node.js supports in practice is).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileAtomic } from './atomic.js';

export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'SafetensorsError';
  }
}

export type Dtype = 'F64' | 'F32' | 'I64' | 'I32' | 'I16' | 'U16' | 'I8' | 'U8' | 'BOOL';

export type TensorData =
  | Float64Array
  | Float32Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

export interface SafeTensor {
  dtype: Dtype;
  shape: number[];
  data: TensorData;
}

/** A tensor to serialise; `dtype` defaults to the one implied by the typed array. */
export interface TensorInput {
  dtype?: Dtype;
  shape: readonly number[];
  data: TensorData;
}

export interface SafetensorsFile {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

/** Largest header accepted (the same bound the reference implementation uses). */
export const MAX_HEADER_BYTES = 100_000_000;

interface DtypeInfo {
  size: number;
  make: (buf: ArrayBuffer) => TensorData;
}

const DTYPES: Record<Dtype, DtypeInfo> = {
  F64: { size: 8, make: (b) => new Float64Array(b) },
  F32: { size: 4, make: (b) => new Float32Array(b) },
  I64: { size: 8, make: (b) => new BigInt64Array(b) },
  I32: { size: 4, make: (b) => new Int32Array(b) },
  I16: { size: 2, make: (b) => new Int16Array(b) },
  U16: { size: 2, make: (b) => new Uint16Array(b) },
  I8: { size: 1, make: (b) => new Int8Array(b) },
  U8: { size: 1, make: (b) => new Uint8Array(b) },
  BOOL: { size: 1, make: (b) => new Uint8Array(b) },
};

/** Byte size of one element of `dtype`. */
export function dtypeSize(dtype: Dtype): number {
  return DTYPES[dtype].size;
}

function isDtype(x: unknown): x is Dtype {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPES, x);
}

/** The dtype a typed array is stored as when no dtype is given. */
export function dtypeOf(data: TensorData): Dtype {
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof BigInt64Array) return 'I64';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof Int16Array) return 'I16';
  if (data instanceof Uint16Array) return 'U16';
  if (data instanceof Int8Array) return 'I8';
  if (data instanceof Uint8Array) return 'U8';
  throw new TypeError('unsupported typed array');
}

function checkLittleEndian(): void {
  if (os.endianness() !== 'LE') throw new Error('safetensors: big-endian hosts are not supported');
}

function fmtShape(shape: readonly unknown[]): string {
  return `[${shape.map((d) => String(d)).join(', ')}]`;
}

/**
 * Parses a complete safetensors file held in memory. `name` (usually the file name) prefixes every
 * error message.
 */
export function parseSafetensors(buf: Uint8Array, name: string): SafetensorsFile {
  checkLittleEndian();
  const fail: (problem: string) => never = (problem) => {
    throw new SafetensorsError(name, problem);
  };
  if (buf.byteLength < 8) fail(`file is ${buf.byteLength} bytes, too short for the 8-byte header length`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen64 = dv.getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLen64} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  const headerLen = Number(headerLen64);
  if (8 + headerLen > buf.byteLength) {
    fail(`header length ${headerLen} is longer than the rest of the file (${buf.byteLength - 8} bytes): file truncated?`);
  }
  if (headerLen < 2) fail(`header length ${headerLen} is too small for a JSON object`);
  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen));
  } catch {
    return fail('header is not valid UTF-8');
  }
  if (headerText[0] !== '{') fail('header does not start with a JSON object');
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (err) {
    return fail(`header is not valid JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) fail('header is not a JSON object');

  const dataStart = 8 + headerLen;
  const dataLen = buf.byteLength - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: Dtype; shape: number[]; begin: number; end: number }[] = [];

  for (const [key, value] of Object.entries(header as Record<string, unknown>)) {
    if (key === '__metadata__') {
      if (value === null) continue;
      if (typeof value !== 'object' || Array.isArray(value)) fail('__metadata__ is not an object of strings');
      for (const [mk, mv] of Object.entries(value as Record<string, unknown>)) {
        if (typeof mv !== 'string') fail(`__metadata__ value for "${mk}" is not a string`);
        metadata[mk] = mv as string;
      }
      continue;
    }
    const where = `tensor ${key}`;
    if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(`${where}: entry is not an object`);
    const info = value as Record<string, unknown>;
    for (const field of Object.keys(info)) {
      if (field !== 'dtype' && field !== 'shape' && field !== 'data_offsets') fail(`${where}: unknown field "${field}"`);
    }
    const { dtype, shape, data_offsets: offsets } = info;
    if (dtype === undefined) fail(`${where}: missing dtype`);
    if (!isDtype(dtype)) fail(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape)) fail(`${where}: shape is not an array`);
    const shapeArr = shape as unknown[];
    for (const d of shapeArr) {
      if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
        fail(`${where}: shape ${JSON.stringify(shape)} must contain non-negative integers`);
      }
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(`${where}: data_offsets ${JSON.stringify(offsets)} must be two non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
    const dims = shapeArr as number[];
    const size = DTYPES[dtype as Dtype].size;
    let bytes = size;
    for (const d of dims) {
      bytes *= d;
      if (!Number.isSafeInteger(bytes)) fail(`${where}: shape ${fmtShape(dims)} is too large`);
    }
    if (end - begin !== bytes) {
      fail(`${where}: data_offsets [${begin}, ${end}] do not match shape ${fmtShape(dims)} of ${dtype} (${bytes} bytes)`);
    }
    if (end > dataLen) {
      fail(`${where}: data_offsets [${begin}, ${end}] lie outside the data section (${dataLen} bytes): file truncated?`);
    }
    entries.push({ name: key, dtype: dtype as Dtype, shape: dims, begin, end });
  }

  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (let i = 0; i < sorted.length; i++) {
    const e = sorted[i]!;
    if (e.begin < cursor) {
      const prev = sorted[i - 1]!;
      fail(`tensor ${e.name}: data_offsets [${e.begin}, ${e.end}] overlap tensor ${prev.name} [${prev.begin}, ${prev.end}]`);
    }
    if (e.begin > cursor) {
      fail(`tensor ${e.name}: data_offsets [${e.begin}, ${e.end}] leave a gap after byte ${cursor} (tensors must be contiguous)`);
    }
    cursor = e.end;
  }
  if (cursor !== dataLen) {
    fail(`data section is ${dataLen} bytes but the tensors cover ${cursor} bytes`);
  }

  const tensors = new Map<string, SafeTensor>();
  for (const e of entries) {
    const copy = new ArrayBuffer(e.end - e.begin);
    new Uint8Array(copy).set(buf.subarray(dataStart + e.begin, dataStart + e.end));
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: DTYPES[e.dtype].make(copy) });
  }
  return { tensors, metadata };
}

/** Reads and parses a safetensors file; errors name the file by its base name. */
export function readSafetensors(filePath: string): SafetensorsFile {
  const name = path.basename(filePath);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(filePath);
  } catch (err) {
    throw new SafetensorsError(name, `cannot read ${filePath} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseSafetensors(buf, name);
}

/**
 * Serialises tensors (in the iteration order given) and string metadata. The header is padded with
 * spaces to a multiple of 8 bytes so that every tensor whose offset is a multiple of its size is aligned
 * in the file. Throws `SafetensorsError` (file name "<serialize>") for inconsistent input.
 */
export function serializeSafetensors(
  tensors: Map<string, TensorInput> | Record<string, TensorInput>,
  metadata: Record<string, string> = {},
): Uint8Array {
  checkLittleEndian();
  const name = '<serialize>';
  const list: [string, TensorInput][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  const metaKeys = Object.keys(metadata);
  if (metaKeys.length > 0) {
    const meta: Record<string, string> = {};
    for (const k of metaKeys) {
      const v = metadata[k];
      if (typeof v !== 'string') throw new SafetensorsError(name, `__metadata__ value for "${k}" is not a string`);
      meta[k] = v;
    }
    header['__metadata__'] = meta;
  }
  let offset = 0;
  const chunks: { bytes: Uint8Array; begin: number }[] = [];
  for (const [tname, t] of list) {
    if (tname === '__metadata__') throw new SafetensorsError(name, 'a tensor cannot be named __metadata__');
    const dtype = t.dtype ?? dtypeOf(t.data);
    if (!isDtype(dtype)) throw new SafetensorsError(name, `tensor ${tname}: unknown dtype ${String(dtype)}`);
    const size = DTYPES[dtype].size;
    if (t.data.BYTES_PER_ELEMENT !== size) {
      throw new SafetensorsError(name, `tensor ${tname}: data element size ${t.data.BYTES_PER_ELEMENT} does not match ${dtype}`);
    }
    let n = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) throw new SafetensorsError(name, `tensor ${tname}: bad shape ${fmtShape(t.shape)}`);
      n *= d;
    }
    if (n !== t.data.length) {
      throw new SafetensorsError(name, `tensor ${tname}: shape ${fmtShape(t.shape)} has ${n} elements but data has ${t.data.length}`);
    }
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[tname] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push({ bytes, begin: offset });
    offset += bytes.byteLength;
  }
  let headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(headerBytes.byteLength / 8) * 8;
  if (padded !== headerBytes.byteLength) {
    headerBytes = Buffer.concat([headerBytes, Buffer.alloc(padded - headerBytes.byteLength, 0x20)]);
  }
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  const dataStart = 8 + headerBytes.byteLength;
  for (const c of chunks) out.set(c.bytes, dataStart + c.begin);
  return out;
}

/** Serialises and writes atomically (see `writeFileAtomic`). */
export function writeSafetensors(
  filePath: string,
  tensors: Map<string, TensorInput> | Record<string, TensorInput>,
  metadata: Record<string, string> = {},
): void {
  writeFileAtomic(filePath, serializeSafetensors(tensors, metadata));
}
