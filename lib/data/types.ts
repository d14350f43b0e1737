/**
 * The shapes that flow through data preparation: importers produce `Message`s, the rules
 * clean and filter them, `pairs.ts` turns them into `Example`s, and `prepare()` writes those
 * as JSONL and answers with a `PrepareReport`.
 */

/** One message of a person's history, whatever file it came from. */
export interface Message {
  /** When it was sent. */
  time: Date
  /** The conversation it belongs to (the contact for a direct chat, the group's id or name). */
  chat: string
  /** `'Me'` for the user's own messages, otherwise the contact (name, phone or e-mail). */
  sender: string
  /** True when the user sent it. */
  fromMe: boolean
  /** True when the conversation is a group chat. */
  isGroup: boolean
  /** The text as written (attachments show as U+FFFC). */
  text: string
}

/** One turn of earlier conversation given as context. */
export interface Turn {
  role: 'user' | 'assistant'
  content: string
}

/** One training pair: what a contact said, what the user answered. */
export interface Example {
  input: string
  output: string
  /** Earlier turns of the same conversation, oldest first (only when `contextTurns` > 0). */
  context?: Turn[]
}

/** Options of `prepare()`. Every field but `sources` and `out` has a default. */
export interface PrepareOptions {
  /**
   * Files to read: a `processed_messages.csv` of the macOS "iMessage analysis" app, a macOS
   * Messages `chat.db`, a WhatsApp chat export (`.txt`, Android or iOS; see `me`), or a JSONL
   * of `{input, output}` pairs (passed through). The kind is detected from the content. Required.
   */
  sources: string[]
  /** Path of the training JSONL to write (`val.jsonl` goes next to it). Required. */
  out: string
  /**
   * Path of the validation JSONL. Default: `val.jsonl` in the directory of `out` (or
   * `<name>.val.jsonl` when `out` is not called `train.jsonl`).
   */
  valOut?: string
  /** Keep only messages sent on or after this moment (a Date or an ISO date string). Default `2023-01-01` (UTC). */
  since?: Date | string
  /** Keep group chats. Default `false` (direct messages only). */
  includeGroups?: boolean
  /** Keep only this many contacts, those with the most direct messages (both directions) in the window; 0 or `Infinity` keeps all. Default `20`. */
  topContacts?: number
  /** Keep upper case. Default `false` (everything is lower-cased). */
  keepCase?: boolean
  /** Keep emoji. Default `false` (pictographs, skin tones, ZWJ sequences, variation selectors, flags removed). */
  keepEmoji?: boolean
  /** Keep URLs as written. Default `false` (each URL becomes the word `link`). */
  keepLinks?: boolean
  /** Longest run of one repeated character kept; longer runs are cut to it (`oooooh` → `oooh`). 0 turns the rule off. Default `3`. */
  maxRepeat?: number
  /** Keep reaction messages (`Loved “…”`, `Laughed at “…”`, …). Default `false` (dropped). */
  keepReactions?: boolean
  /** Minutes within which consecutive messages of one side are merged, and within which my reply must follow to make a pair. Default `30`. */
  replyWindowMinutes?: number
  /** Separator placed between merged consecutive messages. Default `' | '`. */
  mergeSeparator?: string
  /** Number of earlier turns of the conversation to include as `context`. Default `0` (no `context` field). */
  contextTurns?: number
  /** Fraction of the conversation pairs written to the validation file (deterministic, by content hash). Default `0.05`; `0` writes no validation file. */
  valFraction?: number
  /**
   * Facts about the user: a JSON object (`{"height": "5 feet 10 inches", ...}`) made into several
   * question phrasings per key, or a JSONL of hand-written `{input, output}` conversations.
   * A path, or an object / array given directly. Default: none.
   */
  facts?: string | Record<string, string> | Example[]
  /** How many times the fact pairs are repeated in the training file. Default `7`. */
  factRepeats?: number
  /** Replace phone numbers and e-mail addresses in outputs with `<phone>` / `<email>`. Default `false`. */
  scrub?: boolean
  /** Write nothing, only report. Default `false`. */
  dryRun?: boolean
  /**
   * WhatsApp exports: your name as the export writes it (e.g. `'Sam Lee'`), or several names
   * (different phones write different names). Matched ignoring case and direction marks.
   * Default: none — a WhatsApp export with any sender is then refused with an error that names
   * its senders (the export itself cannot tell which one is you).
   */
  me?: string | string[]
  /**
   * WhatsApp exports: the order of day and month, used only when a file's dates do not settle
   * it (no day above 12 anywhere; a file that does settle it is read its way). Default `'dmy'`
   * (day first), with a warning in the report that it was a guess.
   */
  dateOrder?: 'dmy' | 'mdy'
  /**
   * WhatsApp exports: the time zone the export's wall-clock times are read in: an IANA name
   * (`'Europe/Berlin'`), `'UTC'`, or an offset (`'+02:00'`, `'-0530'`). Default: the local time
   * zone of the machine running `prepare()` (`TZ` or the system's) — right when the export was
   * made on a phone in the same zone.
   */
  timeZone?: string
}

/** Counts of messages removed, by the name of the rule that removed them. */
export interface DropCounts {
  /** chat.db: tapback rows (associated_message_type 2000–2007, 3000–3007). */
  tapback: number
  /**
   * chat.db: system rows (item_type ≠ 0). WhatsApp: system lines (encryption notice, joins,
   * subject changes) and deleted messages ("This message was deleted").
   */
  system: number
  /** Sent before `since`. */
  since: number
  /** In a group chat. */
  group: number
  /** From a contact outside the `topContacts`. */
  topContacts: number
  /** A reaction text (`Loved “…”`, …). */
  reaction: number
  /** Nothing but attachments (U+FFFC). */
  attachment: number
  /** Nothing but emoji. */
  emoji: number
  /** Empty or whitespace only. */
  empty: number
  /** A row that could not be read (a timestamp that is not a number, a missing chat). */
  malformed: number
}

/** What `prepare()` did. */
export interface PrepareReport {
  /** Per source: its path, detected kind and how many messages or pairs it gave. */
  sources: { path: string; kind: SourceKind; messages: number; pairs: number }[]
  /** Messages read from all message sources (after importer-level skips). */
  messagesRead: number
  /** Messages kept after every rule. */
  messagesKept: number
  /** Messages dropped, by rule. */
  dropped: DropCounts
  /** Number of contacts whose messages were kept. */
  contactsKept: number
  /** The kept contacts, most messages first. */
  contacts: { contact: string; messages: number }[]
  /** Consecutive messages merged into an earlier one. */
  merged: number
  /** Pairs made from conversations (before the split), plus passed-through JSONL pairs. */
  pairs: number
  /** Contact turns left without a reply of mine within the window. */
  unanswered: number
  /** Fact pairs written into train (after repeats). */
  factPairs: number
  /** Lines written to the training file. */
  train: number
  /** Lines written to the validation file. */
  val: number
  /** Paths written (none when nothing came out or on a dry run). */
  written: { train?: string; val?: string }
  /** Things worth knowing (a source with nothing usable, a rule that removed everything...). */
  warnings: string[]
  /** Why nothing came out, when nothing did. */
  reason?: string
}

/** The kinds of file a source can be. */
export type SourceKind = 'csv' | 'chatdb' | 'jsonl' | 'whatsapp'

/** What an importer hands back: the messages and what it skipped, by rule name. */
export interface ImportResult {
  kind: SourceKind
  messages: Message[]
  pairs: Example[]
  skipped: Partial<DropCounts>
  /** Things worth knowing about this file, each naming it (go into the report's warnings). */
  warnings?: string[]
}
