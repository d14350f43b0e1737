/**
 * Importer for already prepared data: JSONL, one `{"input": "...", "output": "..."}` a line
 * (an optional `"context": [{role, content}, ...]` is kept). The pairs pass through the
 * cleaning rules untouched.
 */
import type { Example, ImportResult, Turn } from '../types.ts'
import { readUtf8 } from './text.ts'

/** Parse JSONL text into examples; `path` names the file in errors. */
export function parseJsonl(text: string, path: string): Example[] {
  const out: Example[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (!line) continue
    let v: unknown
    try {
      v = JSON.parse(line)
    } catch (e) {
      throw new Error(`${path}: line ${i + 1} is not JSON: ${(e as Error).message}`)
    }
    out.push(toExample(v, `${path}: line ${i + 1}`))
  }
  return out
}

/** Check one parsed value is an example. */
export function toExample(v: unknown, where: string): Example {
  const o = v as Record<string, unknown>
  if (!o || typeof o !== 'object' || typeof o.input !== 'string' || typeof o.output !== 'string') {
    throw new Error(`${where}: expected an object with string "input" and "output", got ${JSON.stringify(v)?.slice(0, 80)}`)
  }
  const ex: Example = { input: o.input, output: o.output }
  if (o.context !== undefined) {
    if (!Array.isArray(o.context)) throw new Error(`${where}: "context" must be an array of {role, content}`)
    ex.context = o.context.map((t: unknown, k: number): Turn => {
      const tt = t as Record<string, unknown>
      if (!tt || (tt.role !== 'user' && tt.role !== 'assistant') || typeof tt.content !== 'string') {
        throw new Error(`${where}: context[${k}] must be {"role": "user"|"assistant", "content": string}`)
      }
      return { role: tt.role, content: tt.content }
    })
  }
  return ex
}

/** Read a JSONL file of pairs. */
export async function readJsonl(path: string): Promise<ImportResult> {
  return { kind: 'jsonl', messages: [], pairs: parseJsonl(await readUtf8(path), path), skipped: {} }
}
