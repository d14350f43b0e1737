// Shared test helpers: a file system that runs out of space.
import { nodeFs, type WriteFs } from '../../../lib/train/atomic.ts';

/** A file system whose writes fail with ENOSPC once more than `okBytes` bytes were written. */
export function fullDisk(okBytes = 0): WriteFs {
  let left = okBytes;
  return {
    ...nodeFs,
    async open(file, flags) {
      const h = await nodeFs.open(file, flags);
      return {
        async writeFile(data) {
          const n = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
          if (n > left) {
            const part = Math.max(0, left);
            left = 0;
            await h.writeFile(typeof data === 'string' ? Buffer.from(data).subarray(0, part) : data.subarray(0, part));
            const e = new Error('ENOSPC: no space left on device, write') as NodeJS.ErrnoException;
            e.code = 'ENOSPC';
            throw e;
          }
          left -= n;
          await h.writeFile(data);
        },
        sync: () => h.sync(), close: () => h.close(),
      };
    },
  };
}
