/**
 * Conversations → training pairs.
 *
 * Per chat, in time order: consecutive messages of one side are merged with the separator
 * (` | `) while each follows the previous within the reply window. A contact's merged turn
 * followed by my merged turn that starts within the window of its last message becomes
 * `{input, output}`. With `contextTurns` > 0 the turns just before the input (same chat, no
 * gap longer than the window between them) come along as `context`, oldest first.
 */
import type { Example, Message, Turn } from './types.ts'

/** A run of merged messages of one side. */
export interface Block {
  chat: string
  fromMe: boolean
  start: number
  end: number
  /** The merged text (parts joined with the separator). */
  text: string
}

/** Group by chat and sort each chat by time (stable: equal times keep input order). */
export function byChat(messages: Message[]): Map<string, Message[]> {
  const chats = new Map<string, Message[]>()
  for (const m of messages) {
    let list = chats.get(m.chat)
    if (!list) chats.set(m.chat, (list = []))
    list.push(m)
  }
  for (const list of chats.values()) {
    let sorted = true
    for (let i = 1; i < list.length && sorted; i++) if (list[i].time < list[i - 1].time) sorted = false
    if (!sorted) list.sort((a, b) => a.time.getTime() - b.time.getTime())
  }
  return chats
}

/** Merge one chat's time-ordered messages into blocks; also returns how many were merged away. */
export function mergeTurns(chat: Message[], windowMs: number, separator = ' | '): { blocks: Block[]; merged: number } {
  const blocks: Block[] = []
  let merged = 0
  let cur: Block | undefined
  for (const m of chat) {
    const t = m.time.getTime()
    if (cur && cur.fromMe === m.fromMe && t - cur.end <= windowMs) {
      cur.text += separator + m.text
      cur.end = t
      merged++
    } else {
      cur = { chat: m.chat, fromMe: m.fromMe, start: t, end: t, text: m.text }
      blocks.push(cur)
    }
  }
  return { blocks, merged }
}

/** Knobs of `makePairs`. */
export interface PairOptions {
  replyWindowMs: number
  separator: string
  contextTurns: number
}

/** Turn cleaned messages (any order, any chats) into examples, chat by chat in time order. */
export function makePairs(
  messages: Message[],
  o: PairOptions,
): { examples: Example[]; merged: number; unanswered: number } {
  const examples: Example[] = []
  let merged = 0
  let unanswered = 0
  for (const chat of byChat(messages).values()) {
    const r = mergeTurns(chat, o.replyWindowMs, o.separator)
    merged += r.merged
    const blocks = r.blocks
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i]
      if (b.fromMe) continue
      const next = blocks[i + 1]
      if (!next || !next.fromMe || next.start - b.end > o.replyWindowMs) {
        unanswered++
        continue
      }
      const ex: Example = { input: b.text, output: next.text }
      if (o.contextTurns > 0) {
        const context: Turn[] = []
        for (let k = i - 1; k >= 0 && context.length < o.contextTurns; k--) {
          if (blocks[k + 1].start - blocks[k].end > o.replyWindowMs) break
          context.push({ role: blocks[k].fromMe ? 'assistant' : 'user', content: blocks[k].text })
        }
        ex.context = context.reverse()
      }
      examples.push(ex)
    }
  }
  return { examples, merged, unanswered }
}
