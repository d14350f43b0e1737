/**
 * The cleaning rules. Each is a pure function with its knob as an argument; `applyRules` runs
 * them in order over a message list and counts, per rule, what each one removed.
 *
 * Order: since → group → topContacts → reaction → attachment → links → emoji → case →
 * repeats → whitespace (→ empty). A message left empty is charged to the rule that emptied it.
 */
import type { DropCounts, Message } from './types.ts'

// ---- text rules -------------------------------------------------------------------------

const Q_OPEN = `[“"'‘]`
const Q_CLOSE = `[”"'’]`
const THING = `(?:an? )?(?:image|photo|video|movie|attachment|audio message|sticker|gif|GIF|link|location|contact|file|message)`
const REACTION = new RegExp(
  `^(?:(?:Loved|Liked|Disliked|Laughed at|Emphasized|Questioned) (?:${Q_OPEN}[^]*${Q_CLOSE}|${THING})` +
    `|Removed (?:an? )?[^]+? from (?:${Q_OPEN}[^]*${Q_CLOSE}|${THING})` +
    `|Reacted [^]+? to (?:${Q_OPEN}[^]*${Q_CLOSE}|${THING}))$`,
)

/** True for an iMessage reaction written as text: `Laughed at “…”`, `Loved “…”`, `Removed a heart from “…”`, … */
export function isReaction(text: string): boolean {
  let s = text
  if (s.charCodeAt(0) <= 32 || s.charCodeAt(s.length - 1) <= 32) s = s.trim()
  const c = s.charCodeAt(0)
  // Cheap gate: every reaction starts with one of D E L Q R.
  if (c !== 68 && c !== 69 && c !== 76 && c !== 81 && c !== 82) return false
  return REACTION.test(s)
}

/** The object replacement character iMessage puts where an attachment was. */
export const ATTACHMENT = '\uFFFC'

/** Remove attachment markers (U+FFFC). */
export function removeAttachments(text: string): string {
  return text.indexOf(ATTACHMENT) < 0 ? text : text.replaceAll(ATTACHMENT, ' ')
}

const URL_RE =
  /\b(?:(?:https?|ftp):\/\/|www\.)[^\s<>"]+|\b(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:com|org|net|io|co|edu|gov|ly|me|app|dev|gg|tv|us|uk|be|to)\b(?:\/[^\s<>"]*)?/gi
const TRAILING = /[.,!?;:)\]}'"”’]+$/

/** Replace each URL with `word` (default `link`); trailing punctuation stays. */
export function replaceLinks(text: string, word = 'link'): string {
  if (text.indexOf('.') < 0) return text // every URL this matches has a dot
  return text.replace(URL_RE, (m) => {
    const t = TRAILING.exec(m)
    return t ? word + t[0] : word
  })
}

const NON_ASCII = /[^\x00-\x7f]/
const EMOJI_RE =
  /[#*0-9]\uFE0F?\u20E3|\p{Regional_Indicator}|\p{Extended_Pictographic}(?:\p{Emoji_Modifier}|[\uFE0E\uFE0F]|[\u{E0020}-\u{E007F}])*(?:\u200D\p{Extended_Pictographic}(?:\p{Emoji_Modifier}|[\uFE0E\uFE0F])*)*|\p{Emoji_Modifier}|[\uFE0E\uFE0F\u20E3]/gu

/** Remove emoji: pictographs, skin-tone modifiers, ZWJ sequences, variation selectors, flags, keycaps. */
export function removeEmoji(text: string): string {
  return NON_ASCII.test(text) ? text.replace(EMOJI_RE, ' ') : text
}

const repeatCache = new Map<number, RegExp>()
/** Cut every run of more than `max` identical characters to `max` (`oooooh` → `oooh`); 0 = off. */
export function truncateRepeats(text: string, max = 3): string {
  if (max <= 0) return text
  // Cheap scan first: most messages have no such run, and then the regex is not needed.
  let run = 1
  let found = false
  for (let i = 1; i < text.length; i++) {
    if (text.charCodeAt(i) === text.charCodeAt(i - 1)) {
      if (++run > max) {
        found = true
        break
      }
    } else run = 1
  }
  // A run of surrogate pairs (repeated astral characters) alternates code units; the regex sees it.
  if (!found && !/[\uD800-\uDFFF]/.test(text)) return text
  let re = repeatCache.get(max)
  if (!re) repeatCache.set(max, (re = new RegExp(`(.)\\1{${max},}`, 'gsu')))
  return text.replace(re, (_m, c: string) => c.repeat(max))
}

const NEEDS_COLLAPSE = /\s\s|[^\S ]|^ | $/
/** Collapse every whitespace run to one space and trim. */
export function collapseWhitespace(text: string): string {
  return NEEDS_COLLAPSE.test(text) ? text.replace(/\s+/g, ' ').trim() : text
}

const EMAIL_RE = /[\w.+-]+@[\w-]+(?:\.[\w-]+)+/g
const PHONE_RE =
  /(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}(?!\d)|(?<![\w+])\+\d{1,3}(?:[\s.-]?\d{2,4}){2,5}(?!\d)/g

/** Replace e-mail addresses with `<email>` and phone numbers with `<phone>`. */
export function scrubContacts(text: string): string {
  let t = text
  if (t.indexOf('@') >= 0) t = t.replace(EMAIL_RE, '<email>')
  return /\d{3}/.test(t) ? t.replace(PHONE_RE, '<phone>') : t
}

/** Knobs of the text rules. */
export interface TextRuleOptions {
  keepCase: boolean
  keepEmoji: boolean
  keepLinks: boolean
  keepReactions: boolean
  maxRepeat: number
}

const HAS_TEXT = /\S/

/**
 * Run the text rules over one message. Returns the cleaned text, or the name of the rule that
 * removed the message (a reaction, or the rule that left it empty).
 */
export function cleanText(
  raw: string,
  o: TextRuleOptions,
): { text: string; dropped?: undefined } | { text?: undefined; dropped: keyof DropCounts } {
  if (!HAS_TEXT.test(raw)) return { dropped: 'empty' }
  if (!o.keepReactions && isReaction(raw)) return { dropped: 'reaction' }
  let t = removeAttachments(raw)
  if (t !== raw && !HAS_TEXT.test(t)) return { dropped: 'attachment' }
  if (!o.keepLinks) t = replaceLinks(t)
  if (!o.keepEmoji) {
    const before = t
    t = removeEmoji(t)
    if (t !== before && !HAS_TEXT.test(t)) return { dropped: 'emoji' }
  }
  if (!o.keepCase) t = t.toLowerCase()
  t = truncateRepeats(t, o.maxRepeat)
  t = collapseWhitespace(t)
  return t ? { text: t } : { dropped: 'empty' }
}

// ---- message filters --------------------------------------------------------------------

/** Zeroed drop counters. */
export const noDrops = (): DropCounts => ({
  tapback: 0,
  system: 0,
  since: 0,
  group: 0,
  topContacts: 0,
  reaction: 0,
  attachment: 0,
  emoji: 0,
  empty: 0,
  malformed: 0,
})

/** The `n` direct-chat contacts with the most messages (both directions), most first; ties by name. */
export function topContacts(messages: Message[], n: number): { contact: string; messages: number }[] {
  const counts = new Map<string, number>()
  for (const m of messages) if (!m.isGroup) counts.set(m.chat, (counts.get(m.chat) ?? 0) + 1)
  const all = [...counts].map(([contact, c]) => ({ contact, messages: c }))
  all.sort((a, b) => b.messages - a.messages || (a.contact < b.contact ? -1 : a.contact > b.contact ? 1 : 0))
  return n === Infinity ? all : all.slice(0, n)
}

/** Knobs of `applyRules`. */
export interface RuleOptions extends TextRuleOptions {
  since: Date
  includeGroups: boolean
  topContacts: number
}

/**
 * Run every rule; messages come back cleaned, in their input order: new objects, or the same
 * objects with `text` replaced when `inPlace` (saves a million allocations on big histories).
 */
export function applyRules(
  messages: Message[],
  o: RuleOptions,
  dropped: DropCounts = noDrops(),
  inPlace = false,
): { kept: Message[]; dropped: DropCounts; contacts: { contact: string; messages: number }[] } {
  const since = o.since.getTime()
  const window: Message[] = []
  for (const m of messages) {
    if (m.time.getTime() < since) dropped.since++
    else if (m.isGroup && !o.includeGroups) dropped.group++
    else window.push(m)
  }
  const contacts = topContacts(window, o.topContacts)
  const keep = new Set(contacts.map((c) => c.contact))
  const kept: Message[] = []
  for (const m of window) {
    if (!m.isGroup && !keep.has(m.chat)) {
      dropped.topContacts++
      continue
    }
    const r = cleanText(m.text, o)
    if (r.dropped) dropped[r.dropped]++
    else if (inPlace) {
      m.text = r.text
      kept.push(m)
    } else kept.push({ ...m, text: r.text })
  }
  // A contact all of whose messages were cleaned away is not "kept".
  const left = new Set<string>()
  for (const m of kept) if (!m.isGroup) left.add(m.chat)
  return { kept, dropped, contacts: contacts.filter((c) => left.has(c.contact)) }
}
