/**
 * Importer for a WhatsApp chat export (“Export chat”, without or with media): one `.txt` per
 * chat, in either of the two shapes the apps write:
 *
 *   Android  12/31/23, 9:15 PM - Name: text        31/12/2023, 21:15 - Name: text
 *   iOS      [31/12/2023, 21:15:03] Name: text     [12/31/23, 9:15:03 PM] Name: text
 *
 * A line without a timestamp continues the message before it (multi-line messages). Lines
 * with a timestamp but no `Name:` (Android) or whose text is a U+200E-marked notice (iOS) are
 * system lines (“Messages and calls are end-to-end encrypted”, “X joined”, “X changed the
 * subject”): skipped and counted. Media (`<Media omitted>`, `image omitted`,
 * `<attached: …>`, `… (file attached)`) become U+FFFC so the attachment rule drops them;
 * “This message was deleted” / “You deleted this message” are skipped and counted. The
 * patterns of media and system lines are those of English-language exports.
 *
 * Dates: day and month order is decided per file from the data (a first field above 12 means
 * day-first, a second field above 12 month-first); when nothing settles it, `dateOrder`
 * decides (default day-first) and a warning says so. Times are wall-clock times of the phone:
 * they are read in `timeZone` when given, else in the time zone of the machine running this.
 *
 * One export is one chat. `me` names the user as the export spells them; without it the
 * import stops and names the senders.
 */
import { basename, extname } from 'node:path'
import type { ImportResult, Message } from '../types.ts'
import { decodeUtf8, readFileOrExplain } from './text.ts'

/** The options of the WhatsApp importer (the same fields of `PrepareOptions`). */
export interface WhatsAppOptions {
  /** The user's name(s) as the export shows them. Default: none (an export with senders is refused, naming them). */
  me?: string | string[]
  /** Day/month order when the dates do not settle it. Default `'dmy'` (with a warning). */
  dateOrder?: 'dmy' | 'mdy'
  /** IANA zone, `UTC` or `±HH:MM` the times are read in. Default: the local time zone. */
  timeZone?: string
}

/** What the importer found, beyond the messages (for reports and tests). */
export interface WhatsAppStats {
  shape: 'android' | 'ios'
  /** The day/month order used, and whether it was a guess (nothing in the file settled it). */
  dateOrder: 'dmy' | 'mdy' | 'ymd'
  dateOrderGuessed: boolean
  /** System lines skipped. */
  systemLines: number
  /** Deleted messages skipped. */
  deleted: number
  /** Messages that were media (kept, as U+FFFC). */
  media: number
  /** Distinct senders, in order of first message. */
  senders: string[]
}

const SP = '[ \\t\\u00a0\\u202f]'
/**
 * A message header: optional marks, optional `[`, date, time (seconds and AM/PM optional),
 * then `] ` (iOS) or ` - ` (Android). Groups: 1 `[`, 2–5 date, 6–8 time, 9 a/p, 10 `]`, 11 rest.
 */
const HEADER = new RegExp(
  `^[\\u200e\\u200f\\ufeff]*(\\[)?(\\d{1,4})([./-])(\\d{1,2})\\3(\\d{1,4}),?${SP}+(\\d{1,2})[:.](\\d{2})(?:[:.](\\d{2}))?` +
    `(?:${SP}?([aApP])\\.?${SP}?[mM]\\.?)?(?:(\\])${SP}?|${SP}[-–]${SP})(.*)$`,
)

/** Whether a line starts like a WhatsApp message (what detection looks at). */
export function isWhatsAppLine(line: string): boolean {
  const m = HEADER.exec(line)
  return !!m && !!m[1] === !!m[10]
}

const MARKS = /^[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]+/
const ALL_MARKS = /[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g
const DELETED = /^(?:this message was deleted|you deleted this message)\.?$/i
const EDITED = /\s*[\u200e]?<This message was edited>$/
const MEDIA_LINE =
  /^(?:<Media omitted>|(?:image|video|audio|sticker|GIF|document|Contact card|video note) omitted|.+ document omitted|<attached: [^>]*>|.+ \(file attached\))$/i
const IOS_SYSTEM =
  /end-to-end encrypted|created group|\badded\b|joined using|\bleft$|\bremoved\b|changed the subject|changed the group|changed this group|security code|changed their phone number|changed to \+|disappearing messages|missed (?:voice|video|group voice|group video) call|blocked this contact|\badmin\b|pinned a message|waiting for this message/i
const GROUP_SYSTEM =
  /created group|\badded\b|joined using|\bjoined\b|\bleft$|\bremoved\b|changed the subject|changed the group|changed this group|group's invite link|\badmin\b/i
const SUBJECT = /(?:created group|changed the subject (?:from .* )?to|changed the group name (?:from .* )?to)\s*["“](.*)["”]\.?$/

const norm = (s: string) => s.replace(ALL_MARKS, '').trim().normalize('NFC').toLowerCase()
const cleanName = (s: string) => s.replace(ALL_MARKS, '').trim()

interface Raw {
  line: number
  a: number
  b: number
  c: number
  sep: string
  h: number
  min: number
  s: number
  ap: string | undefined
  /** The sender, or undefined for a system line. */
  sender: string | undefined
  text: string
  ios: boolean
}

/** Parse export text into messages; `path` names the file in errors and in `chat`. */
export function parseWhatsApp(text: string, path: string, o: WhatsAppOptions = {}): ImportResult & { whatsapp: WhatsAppStats } {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
  const lines = text.split(/\r\n|\n|\r/)
  const raws: Raw[] = []
  let malformed = 0
  let systemLines = 0
  let groupHint = false
  let subject: string | undefined
  let iosLines = 0
  let cur: Raw | undefined
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]
    const m = HEADER.exec(line)
    if (!m || !!m[1] !== !!m[10]) {
      if (cur) cur.text += '\n' + line
      else if (line.trim() !== '' && raws.length === 0 && systemLines === 0) malformed++ // before the first message
      continue
    }
    const ios = !!m[1]
    if (ios) iosLines++
    let rest = m[11]
    let sender: string | undefined
    const colon = rest.indexOf(': ')
    if (colon > 0) {
      const name = rest.slice(0, colon)
      if (!/["“”]/.test(name) && name.length <= 100) {
        sender = cleanName(name)
        rest = rest.slice(colon + 2)
      }
    } else if (rest.endsWith(':') && !/["“”]/.test(rest) && rest.length <= 101) {
      sender = cleanName(rest.slice(0, -1)) // an empty message
      rest = ''
    }
    // iOS writes notices as a "message" of the chat whose text starts with U+200E.
    if (sender !== undefined && ios && rest.startsWith('\u200e') && IOS_SYSTEM.test(rest) && !DELETED.test(rest.replace(MARKS, ''))) {
      sender = undefined
    }
    if (sender === undefined || sender === '') {
      systemLines++
      const body = rest.replace(MARKS, '')
      if (GROUP_SYSTEM.test(body)) groupHint = true
      const sm = SUBJECT.exec(body)
      if (sm) subject = sm[1]
      cur = undefined
      continue
    }
    cur = {
      line: i + 1,
      a: +m[2],
      b: +m[4],
      c: +m[5],
      sep: m[3],
      h: +m[6],
      min: +m[7],
      s: m[8] ? +m[8] : 0,
      ap: m[9]?.toLowerCase(),
      sender,
      text: rest,
      ios,
    }
    raws.push(cur)
  }

  // Day/month order, from the data.
  let order: 'dmy' | 'mdy' | 'ymd' | undefined
  let guessed = false
  let dayFirstAt: number | undefined
  let monthFirstAt: number | undefined
  for (const r of raws) {
    if (r.a > 31) {
      order = 'ymd'
      break
    }
    if (r.a > 12 && dayFirstAt === undefined) dayFirstAt = r.line
    if (r.b > 12 && monthFirstAt === undefined) monthFirstAt = r.line
  }
  if (!order) {
    if (dayFirstAt !== undefined && monthFirstAt !== undefined) {
      throw new Error(
        `${path}: dates disagree on day/month order: line ${dayFirstAt} has a first field above 12 (day first), ` +
          `line ${monthFirstAt} a second field above 12 (month first)`,
      )
    }
    const fromData = dayFirstAt !== undefined ? 'dmy' : monthFirstAt !== undefined ? 'mdy' : undefined
    if (fromData && o.dateOrder && o.dateOrder !== fromData) {
      const at = (fromData === 'dmy' ? dayFirstAt : monthFirstAt)!
      throw new Error(
        `${path}: dateOrder is '${o.dateOrder}' but line ${at} can only be read ${fromData === 'dmy' ? 'day' : 'month'} first; ` +
          `drop dateOrder (--date-order) or pass '${fromData}'`,
      )
    }
    order = fromData ?? o.dateOrder ?? 'dmy'
    guessed = !fromData && !o.dateOrder && raws.length > 0
  }

  const toTime = timeReader(o.timeZone)
  const warnings: string[] = []
  if (guessed) {
    warnings.push(
      `${path}: no date has a day above 12, so day/month order is a guess: read as ${order === 'dmy' ? 'day' : 'month'} first ` +
        `(${order}); pass dateOrder '${order === 'dmy' ? 'mdy' : 'dmy'}' (--date-order ${order === 'dmy' ? 'mdy' : 'dmy'}) if that is wrong`,
    )
  }

  // Senders and who is me.
  const senders: string[] = []
  const seen = new Set<string>()
  for (const r of raws) {
    if (!seen.has(r.sender!)) {
      seen.add(r.sender!)
      senders.push(r.sender!)
    }
  }
  const list = (xs: string[]) => xs.slice(0, 8).map((s) => `"${s}"`).join(', ') + (xs.length > 8 ? `, … (${xs.length} in all)` : '')
  const meNames = (Array.isArray(o.me) ? o.me : o.me !== undefined ? [o.me] : []).map(norm).filter((s) => s !== '')
  if (senders.length > 0 && meNames.length === 0) {
    throw new Error(
      `${path}: a WhatsApp export, and which sender is you cannot be told from it: the senders are ${list(senders)}; ` +
        `pass me (--me NAME) with your name as the export writes it`,
    )
  }
  const meSet = new Set(meNames)
  const isMe = (s: string) => meSet.has(norm(s))
  const mine = senders.filter(isMe)
  if (senders.length > 0 && mine.length === 0) {
    const msg = `none of the senders is me (${(Array.isArray(o.me) ? o.me : [o.me]).map((s) => `"${s}"`).join(', ')}): the senders are ${list(senders)}`
    if (senders.length === 2) throw new Error(`${path}: ${msg}; pass me (--me NAME) with your name as the export writes it`)
    warnings.push(`${path}: ${msg}`)
  }
  const others = senders.filter((s) => !isMe(s))
  const isGroup = senders.length > 2 || others.length > 1 || groupHint
  const fileName = basename(path, extname(path))
  const fromName = /^WhatsApp Chat (?:with|-) (.+)$/i.exec(fileName)?.[1]
  const chat = isGroup ? 'group:' + (fromName ?? subject ?? fileName) : (others[0] ?? fromName ?? fileName)

  const messages: Message[] = []
  let deleted = 0
  let media = 0
  for (const r of raws) {
    let d: number, mo: number, y: number
    if (order === 'ymd') [y, mo, d] = [r.a, r.b, r.c]
    else if (order === 'dmy') [d, mo, y] = [r.a, r.b, r.c]
    else [mo, d, y] = [r.a, r.b, r.c]
    if (y < 100) y += 2000
    let h = r.h
    if (r.ap) {
      if (h < 1 || h > 12) throw new Error(`${path}: line ${r.line}: hour ${h} with AM/PM`)
      h = (h % 12) + (r.ap === 'p' ? 12 : 0)
    }
    if (mo < 1 || mo > 12 || d < 1 || d > daysIn(y, mo) || h > 23 || r.min > 59 || r.s > 59) {
      throw new Error(
        `${path}: line ${r.line}: not a date and time: ${String(r.a)}${r.sep}${r.b}${r.sep}${r.c} ${r.h}:${String(r.min).padStart(2, '0')} ` +
          `(read as ${order})`,
      )
    }
    let body = r.text.replace(/\s+$/, '').replace(EDITED, '')
    const plain = body.replace(MARKS, '')
    if (DELETED.test(plain)) {
      deleted++
      continue
    }
    const nl = plain.indexOf('\n')
    const first = nl < 0 ? plain : plain.slice(0, nl)
    if (MEDIA_LINE.test(first.replace(ALL_MARKS, '').trim())) {
      media++
      body = '\uFFFC' + (nl < 0 ? '' : plain.slice(nl))
    } else body = plain
    const fromMe = isMe(r.sender!)
    messages.push({ time: toTime(y, mo, d, h, r.min, r.s), chat, sender: fromMe ? 'Me' : r.sender!, fromMe, isGroup, text: body })
  }
  return {
    kind: 'whatsapp',
    messages,
    pairs: [],
    skipped: { system: systemLines + deleted, malformed },
    warnings,
    whatsapp: {
      shape: iosLines * 2 > raws.length + systemLines ? 'ios' : 'android',
      dateOrder: order,
      dateOrderGuessed: guessed,
      systemLines,
      deleted,
      media,
      senders,
    },
  }
}

const daysIn = (y: number, m: number) => new Date(Date.UTC(y, m, 0)).getUTCDate()

/**
 * A function from wall-clock fields to a Date: in the local zone (no `timeZone`), at a fixed
 * offset (`UTC`, `Z`, `+02:00`, `-0530`), or in an IANA zone (DST gaps and overlaps resolve
 * as the zone's offset just before the wall time).
 */
export function timeReader(timeZone?: string): (y: number, mo: number, d: number, h: number, mi: number, s: number) => Date {
  if (timeZone === undefined || timeZone === '') return (y, mo, d, h, mi, s) => new Date(y, mo - 1, d, h, mi, s)
  const off = parseOffset(timeZone)
  if (off !== undefined) return (y, mo, d, h, mi, s) => new Date(Date.UTC(y, mo - 1, d, h, mi, s) - off * 60_000)
  let fmt: Intl.DateTimeFormat
  try {
    fmt = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    })
  } catch {
    throw new Error(`timeZone: not a time zone: "${timeZone}" (give an IANA name like "Europe/Berlin", "UTC" or an offset like "+02:00")`)
  }
  const offsetAt = (ms: number): number => {
    const p: Record<string, number> = {}
    for (const x of fmt.formatToParts(new Date(ms))) if (x.type !== 'literal') p[x.type] = +x.value
    return (Date.UTC(p.year, p.month - 1, p.day, p.hour % 24, p.minute, p.second) - Math.floor(ms / 1000) * 1000) / 60_000
  }
  return (y, mo, d, h, mi, s) => {
    const wall = Date.UTC(y, mo - 1, d, h, mi, s)
    const o1 = offsetAt(wall)
    const t = wall - o1 * 60_000
    const o2 = offsetAt(t)
    return new Date(o2 === o1 ? t : wall - o2 * 60_000)
  }
}

/** Minutes east of UTC for `UTC`, `Z`, `±HH:MM`, `±HHMM`, `±HH`, `UTC±HH:MM`; undefined otherwise. */
export function parseOffset(tz: string): number | undefined {
  const t = tz.trim()
  if (/^(?:UTC|GMT|Z)$/i.test(t)) return 0
  const m = /^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$/i.exec(t)
  if (!m) return undefined
  const v = +m[2] * 60 + (m[3] ? +m[3] : 0)
  if (+m[2] > 14 || (m[3] && +m[3] > 59)) throw new Error(`timeZone: not a UTC offset: "${tz}"`)
  return m[1] === '-' ? -v : v
}

/** Read a WhatsApp export file (strict UTF-8). */
export async function readWhatsApp(path: string, o: WhatsAppOptions = {}): Promise<ImportResult & { whatsapp: WhatsAppStats }> {
  return parseWhatsApp(decodeUtf8(await readFileOrExplain(path), path), path, o)
}
