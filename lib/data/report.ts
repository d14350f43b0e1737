/** A short human-readable summary of a `PrepareReport` (what `mimic prepare` prints). */
import type { PrepareReport } from './types.ts'

const n = (x: number) => x.toLocaleString('en-US')

export function formatReport(r: PrepareReport): string {
  const lines: string[] = []
  for (const s of r.sources) {
    lines.push(`  ${s.path} (${s.kind}): ${s.kind === 'jsonl' ? `${n(s.pairs)} pairs` : `${n(s.messages)} messages`}`)
  }
  lines.push(`messages read    ${n(r.messagesRead)}`)
  lines.push(`messages kept    ${n(r.messagesKept)}`)
  const drops = Object.entries(r.dropped).filter(([, v]) => v > 0)
  if (drops.length) {
    lines.push('dropped')
    for (const [k, v] of drops) lines.push(`  ${k.padEnd(14)} ${n(v)}`)
  }
  lines.push(`contacts kept    ${n(r.contactsKept)}`)
  lines.push(`merged           ${n(r.merged)} consecutive messages`)
  lines.push(`pairs            ${n(r.pairs)} (${n(r.unanswered)} contact turns unanswered)`)
  if (r.factPairs) lines.push(`fact pairs       ${n(r.factPairs)}`)
  lines.push(`written          train ${n(r.written.train ? r.train : 0)}${r.written.train ? ` → ${r.written.train}` : ''}` +
    `, val ${n(r.written.val ? r.val : 0)}${r.written.val ? ` → ${r.written.val}` : ''}`)
  for (const w of r.warnings) lines.push(`warning: ${w}`)
  if (r.reason && !r.written.train) lines.push(`nothing written: ${r.reason}`)
  return lines.join('\n')
}
