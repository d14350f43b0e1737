// Runs `mimic prepare ARGS` in-process and captures what it prints and its exit code, so the
// CLI's flags and messages can be asserted without spawning a process.
import { Command } from 'commander'
import { registerPrepare } from '../../../lib/cli/prepare.ts'

export async function runPrepare(args: string[]): Promise<{ out: string; err: string; code: number | undefined }> {
  const program = new Command().name('mimic').exitOverride()
  registerPrepare(program)
  let out = ''
  let err = ''
  const w1 = process.stdout.write
  const w2 = process.stderr.write
  const code0 = process.exitCode
  process.exitCode = undefined
  process.stdout.write = ((s: string) => ((out += s), true)) as typeof process.stdout.write
  process.stderr.write = ((s: string) => ((err += s), true)) as typeof process.stderr.write
  try {
    await program.parseAsync(['node', 'mimic', 'prepare', ...args])
  } catch (e) {
    err += (e as Error).message
  } finally {
    process.stdout.write = w1
    process.stderr.write = w2
  }
  const code = process.exitCode as number | undefined
  process.exitCode = code0
  return { out, err, code }
}
