/** The defaults of `PrepareOptions`, and the options with every default filled in. */
import type { Example, PrepareOptions } from './types.ts'
import { timeReader } from './importers/whatsapp.ts'

export const DEFAULTS = {
  since: '2023-01-01',
  includeGroups: false,
  topContacts: 20,
  keepCase: false,
  keepEmoji: false,
  keepLinks: false,
  maxRepeat: 3,
  keepReactions: false,
  replyWindowMinutes: 30,
  mergeSeparator: ' | ',
  contextTurns: 0,
  valFraction: 0.05,
  factRepeats: 7,
  scrub: false,
  dryRun: false,
  dateOrder: 'dmy',
} as const

/** Options after defaults and validation. */
export interface Resolved {
  sources: string[]
  out: string
  valOut?: string
  since: Date
  includeGroups: boolean
  topContacts: number
  keepCase: boolean
  keepEmoji: boolean
  keepLinks: boolean
  maxRepeat: number
  keepReactions: boolean
  replyWindowMs: number
  mergeSeparator: string
  contextTurns: number
  valFraction: number
  facts?: string | Record<string, string> | Example[]
  factRepeats: number
  scrub: boolean
  dryRun: boolean
  /** WhatsApp: as given (the importer applies the defaults, to know when it guessed). */
  me?: string | string[]
  dateOrder?: 'dmy' | 'mdy'
  timeZone?: string
}

const int = (name: string, v: number, min = 0): number => {
  if (!Number.isFinite(v) && v !== Infinity) throw new Error(`${name} must be a number, got ${v}`)
  if (v < min || (v !== Infinity && !Number.isInteger(v))) throw new Error(`${name} must be an integer ≥ ${min}, got ${v}`)
  return v
}

/** Fill in defaults and check values; throws naming the bad option. */
export function resolveOptions(o: PrepareOptions): Resolved {
  if (!o || !Array.isArray(o.sources) || o.sources.length === 0) throw new Error('prepare: no sources given')
  if (!o.out && !o.dryRun) throw new Error('prepare: `out` (the train.jsonl to write) is required')
  const sinceIn = o.since ?? DEFAULTS.since
  const since = sinceIn instanceof Date ? sinceIn : new Date(sinceIn)
  if (Number.isNaN(since.getTime())) throw new Error(`since: not a date: ${String(sinceIn)}`)
  const valFraction = o.valFraction ?? DEFAULTS.valFraction
  if (!(valFraction >= 0 && valFraction < 1)) throw new Error(`valFraction must be in [0, 1), got ${valFraction}`)
  const reply = o.replyWindowMinutes ?? DEFAULTS.replyWindowMinutes
  if (!(reply > 0)) throw new Error(`replyWindowMinutes must be > 0, got ${reply}`)
  const top = o.topContacts ?? DEFAULTS.topContacts
  if (o.dateOrder !== undefined && o.dateOrder !== 'dmy' && o.dateOrder !== 'mdy') {
    throw new Error(`dateOrder must be 'dmy' or 'mdy', got ${JSON.stringify(o.dateOrder)}`)
  }
  if (o.me !== undefined && !(typeof o.me === 'string' || (Array.isArray(o.me) && o.me.every((x) => typeof x === 'string')))) {
    throw new Error('me must be a name or a list of names')
  }
  if (o.timeZone !== undefined) timeReader(o.timeZone) // throws naming a bad zone
  return {
    sources: o.sources,
    out: o.out,
    valOut: o.valOut,
    since,
    includeGroups: o.includeGroups ?? DEFAULTS.includeGroups,
    topContacts: top === 0 ? Infinity : int('topContacts', top),
    keepCase: o.keepCase ?? DEFAULTS.keepCase,
    keepEmoji: o.keepEmoji ?? DEFAULTS.keepEmoji,
    keepLinks: o.keepLinks ?? DEFAULTS.keepLinks,
    maxRepeat: int('maxRepeat', o.maxRepeat ?? DEFAULTS.maxRepeat),
    keepReactions: o.keepReactions ?? DEFAULTS.keepReactions,
    replyWindowMs: reply * 60_000,
    mergeSeparator: o.mergeSeparator ?? DEFAULTS.mergeSeparator,
    contextTurns: int('contextTurns', o.contextTurns ?? DEFAULTS.contextTurns),
    valFraction,
    facts: o.facts,
    factRepeats: int('factRepeats', o.factRepeats ?? DEFAULTS.factRepeats),
    scrub: o.scrub ?? DEFAULTS.scrub,
    dryRun: o.dryRun ?? DEFAULTS.dryRun,
    me: o.me,
    dateOrder: o.dateOrder,
    timeZone: o.timeZone,
  }
}
