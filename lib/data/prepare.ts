/**
 * `prepare()`: sources → messages → rules → pairs (+ facts) → split → train.jsonl / val.jsonl.
 *
 * Files are written atomically (a temporary file in the same directory, then a rename), and
 * never empty: when nothing comes out the report says why (`reason`) and nothing is written.
 * The stop marker of the training format (`DONE`, end-of-turn) is not written: it belongs to
 * the tokenizer's chat template.
 */
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { loadFacts } from './facts.ts'
import { importFile } from './importers/detect.ts'
import type { WhatsAppOptions } from './importers/whatsapp.ts'
import { resolveOptions, type Resolved } from './options.ts'
import { makePairs } from './pairs.ts'
import { applyRules, noDrops, scrubContacts } from './rules.ts'
import { split } from './split.ts'
import type { DropCounts, Example, Message, PrepareOptions, PrepareReport } from './types.ts'

/** Read every message of one source (CSV, chat.db or WhatsApp export), oldest first per chat. */
export async function readMessages(path: string, whatsapp: WhatsAppOptions = {}): Promise<Message[]> {
  const r = await importFile(path, whatsapp)
  if (r.kind === 'jsonl') throw new Error(`${path}: a JSONL of prepared pairs, not a message history`)
  return r.messages
}

/** The validation file that goes with `out`. */
export function defaultValPath(out: string): string {
  const b = basename(out)
  if (b === 'train.jsonl') return join(dirname(out), 'val.jsonl')
  const stem = b.endsWith('.jsonl') ? b.slice(0, -6) : b
  return join(dirname(out), `${stem}.val.jsonl`)
}

/** One JSONL line: `{"input", "output"}`, plus `"context"` when asked for. */
export function toLine(e: Example, withContext: boolean): string {
  return withContext && e.context
    ? JSON.stringify({ input: e.input, output: e.output, context: e.context })
    : JSON.stringify({ input: e.input, output: e.output })
}

/** Write a file atomically: temp file next to it, then rename over. */
export async function writeAtomic(path: string, data: string): Promise<void> {
  await mkdir(dirname(path) || '.', { recursive: true })
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now().toString(36)}.tmp`)
  try {
    await writeFile(tmp, data)
    await rename(tmp, path)
  } catch (e) {
    await rm(tmp, { force: true })
    throw e
  }
}

const exists = async (p: string) => stat(p).then(
  () => true,
  () => false,
)

function whyNothing(r: PrepareReport, o: Resolved, fromMe: number): string {
  if (r.messagesRead === 0 && r.pairs === 0) return 'the sources hold no messages'
  if (r.messagesKept === 0) {
    const d = Object.entries(r.dropped)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ')
    const hint =
      r.dropped.since === r.messagesRead
        ? ` (every message is older than since ${o.since.toISOString().slice(0, 10)}; pass an earlier since)`
        : r.dropped.group > 0 && r.dropped.group + r.dropped.since === r.messagesRead
          ? ' (only group chats in the window; pass includeGroups to keep them)'
          : ''
    return `every message was dropped by the rules: ${d}${hint}`
  }
  if (fromMe === 0) return `none of the ${r.messagesKept} kept messages was sent by you, so nothing can be learned`
  if (r.messagesKept === fromMe) return `all ${r.messagesKept} kept messages were sent by you; there is nothing they answer`
  return (
    `no message of a contact was answered by you within ${o.replyWindowMs / 60000} minutes ` +
    `(${r.messagesKept} messages kept, ${fromMe} from you, ${r.unanswered} contact turns unanswered); ` +
    `try a longer replyWindowMinutes`
  )
}

/**
 * Turn message histories into training pairs and write them as JSONL.
 *
 * Resolves with a report of what was read, kept and dropped (by rule) and written. When no
 * pair comes out it writes nothing and the report's `reason` says why. Throws on bad options
 * and on unreadable sources (missing file, unknown format, invalid UTF-8, damaged database),
 * naming the file.
 */
export async function prepare(opts: PrepareOptions): Promise<PrepareReport> {
  const o = resolveOptions(opts)
  const report: PrepareReport = {
    sources: [],
    messagesRead: 0,
    messagesKept: 0,
    dropped: noDrops(),
    contactsKept: 0,
    contacts: [],
    merged: 0,
    pairs: 0,
    unanswered: 0,
    factPairs: 0,
    train: 0,
    val: 0,
    written: {},
    warnings: [],
  }

  let messages: Message[] = []
  const passThrough: Example[] = []
  for (const path of o.sources) {
    const r = await importFile(path, { me: o.me, dateOrder: o.dateOrder, timeZone: o.timeZone })
    for (const [k, n] of Object.entries(r.skipped)) report.dropped[k as keyof DropCounts] += n ?? 0
    report.sources.push({ path, kind: r.kind, messages: r.messages.length, pairs: r.pairs.length })
    if (r.messages.length === 0 && r.pairs.length === 0) report.warnings.push(`${path}: no ${r.kind === 'jsonl' ? 'pairs' : 'messages'} in it`)
    if (r.skipped.malformed) report.warnings.push(`${path}: ${r.skipped.malformed} unreadable row(s) skipped`)
    if (r.warnings) for (const w of r.warnings) report.warnings.push(w)
    messages = messages.length === 0 ? r.messages : messages.concat(r.messages)
    for (const p of r.pairs) passThrough.push(p)
  }
  report.messagesRead = messages.length

  const { kept, contacts } = applyRules(messages, o, report.dropped, true)
  messages = [] // let the raw history go
  report.messagesKept = kept.length
  report.contacts = contacts
  report.contactsKept = contacts.length

  const made = makePairs(kept, { replyWindowMs: o.replyWindowMs, separator: o.mergeSeparator, contextTurns: o.contextTurns })
  report.merged = made.merged
  report.unanswered = made.unanswered
  let fromMe = 0
  for (const m of kept) if (m.fromMe) fromMe++

  const pairs = made.examples
  for (const p of passThrough) {
    const e: Example = { input: p.input, output: p.output }
    if (o.contextTurns > 0 && p.context) e.context = p.context.slice(-o.contextTurns)
    pairs.push(e)
  }
  if (o.scrub) {
    for (const e of pairs) {
      e.output = scrubContacts(e.output)
      if (e.context) for (const t of e.context) if (t.role === 'assistant') t.content = scrubContacts(t.content)
    }
  }
  report.pairs = pairs.length

  const { train, val } = split(pairs, o.valFraction)
  if (o.facts !== undefined) {
    const facts = await loadFacts(o.facts, o.keepCase)
    if (facts.length === 0) report.warnings.push('the facts gave no pairs')
    for (let r = 0; r < o.factRepeats; r++) for (const f of facts) train.push(o.contextTurns > 0 ? f : { input: f.input, output: f.output })
    report.factPairs = facts.length * o.factRepeats
  }
  report.train = train.length
  report.val = val.length

  if (pairs.length === 0) {
    report.reason = whyNothing(report, o, fromMe)
    if (train.length === 0) {
      report.train = 0
      return report
    }
    report.warnings.push(`only fact pairs were written: ${report.reason}`)
  }

  const valPath = o.valOut ?? defaultValPath(o.out ?? 'train.jsonl')
  if (o.valFraction > 0 && val.length === 0) {
    report.warnings.push(`too few pairs (${pairs.length}) for a validation split; no validation file written`)
    if (!o.dryRun && (await exists(valPath))) report.warnings.push(`${valPath} is left from an earlier run`)
  }
  if (o.dryRun) return report

  const withContext = o.contextTurns > 0
  const lines = (xs: Example[]) => {
    const parts = new Array<string>(xs.length)
    for (let i = 0; i < xs.length; i++) parts[i] = toLine(xs[i], withContext)
    return parts.join('\n') + '\n'
  }
  await writeAtomic(o.out, lines(train))
  report.written.train = o.out
  if (val.length > 0) {
    await writeAtomic(valPath, lines(val))
    report.written.val = valPath
  }
  return report
}
