/**
 * Crash-safe file writes. Every checkpoint, tokenizer and token cache file is written with
 * `writeFileAtomic`: the bytes go to a temporary file in the same directory, which is fsynced and then
 * renamed over the destination, and finally the directory itself is fsynced so the rename is durable.
 * A reader therefore sees either the old file or the complete new one, never a torn write.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

/** Creates `dir` (and parents) if needed. */
export function ensureDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
}

function fsyncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch (err) {
    // Some platforms and file systems cannot open or fsync a directory; the rename has still happened.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EACCES' && code !== 'ENOTSUP') {
      throw err;
    }
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Writes `data` to `filePath` atomically (temp file in the same directory, fsync, rename, fsync of the
 * directory). Parent directories are created. On failure the temporary file is removed and the
 * destination is left untouched.
 */
export function writeFileAtomic(filePath: string, data: Uint8Array | string): void {
  const dir = path.dirname(path.resolve(filePath));
  ensureDir(dir);
  const tmp = path.join(dir, `.${path.basename(filePath)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', 0o644);
    let off = 0;
    while (off < bytes.byteLength) {
      off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, filePath);
  } catch (err) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* may not exist */
    }
    throw err;
  }
  fsyncDirectory(dir);
}
