/**
 * Facts about the user, as training pairs, so the model knows who it is speaking for.
 *
 * A JSON object `{"height": "5 feet 10 inches", ...}` becomes several question phrasings per
 * key, each answered with the value; a JSONL (or JSON array) of hand-written `{input, output}`
 * conversations is used as it is. `prepare()` repeats them `factRepeats` times, in train only.
 */
import { readUtf8 } from './importers/text.ts'
import { parseJsonl, toExample } from './importers/jsonl.ts'
import type { Example } from './types.ts'

/** Questions for some common keys, beyond the generic phrasings every key gets. */
const SPECIAL: Record<string, string[]> = {
  name: ['who are you?', "what's your name?", 'what should i call you?'],
  age: ['how old are you?'],
  height: ['how tall are you?'],
  hometown: ['where are you from?', 'where did you grow up?'],
  gender: ['are you a guy or a girl?'],
  school: ['where do you go to school?'],
  job: ['what do you do?', 'what do you do for work?'],
  profession: ['what do you do?'],
  'future profession': ['what do you want to do when you grow up?', 'what do you want to be?'],
  'political party': ['what are your politics?', 'are you a democrat or a republican?'],
  'presidential candidate': ['who are you voting for?'],
  birthday: ['when is your birthday?', "when's your bday?"],
  city: ['where do you live?'],
}

/** The generic phrasings; `{k}` is the key in words. */
const GENERIC = ['what is your {k}?', "what's your {k}?", 'tell me your {k}', '{k}?']

/** Question phrasings for one key. */
export function questionsFor(key: string): string[] {
  const k = key.replace(/[_-]+/g, ' ').replace(/\s+/g, ' ').trim().toLowerCase()
  const qs = [...(SPECIAL[k] ?? []), ...GENERIC.map((g) => g.replace('{k}', k))]
  return [...new Set(qs)]
}

/** Pairs from a facts object: every phrasing of every key, answered with its value. */
export function factPairs(facts: Record<string, unknown>, keepCase = false): Example[] {
  const out: Example[] = []
  for (const [key, v] of Object.entries(facts)) {
    if (v === null || v === undefined || v === '') continue
    let answer = typeof v === 'string' ? v : Array.isArray(v) ? v.join(' | ') : String(v)
    answer = answer.trim()
    if (!keepCase) answer = answer.toLowerCase()
    for (const q of questionsFor(key)) out.push({ input: q, output: answer })
  }
  return out
}

/** Load facts from a path, an object or a list of examples. */
export async function loadFacts(
  facts: string | Record<string, unknown> | Example[],
  keepCase = false,
): Promise<Example[]> {
  if (Array.isArray(facts)) return facts.map((e, i) => toExample(e, `facts[${i}]`))
  if (typeof facts === 'object') return factPairs(facts, keepCase)
  const text = await readUtf8(facts)
  const trimmed = text.trim()
  if (!trimmed) throw new Error(`${facts}: the facts file is empty`)
  let whole: unknown
  try {
    whole = JSON.parse(trimmed)
  } catch {
    // Not one JSON document: JSONL of conversations.
    return parseJsonl(text, facts)
  }
  if (Array.isArray(whole)) return whole.map((e, i) => toExample(e, `${facts}: item ${i}`))
  if (whole && typeof whole === 'object') {
    const o = whole as Record<string, unknown>
    if (typeof o.input === 'string' && typeof o.output === 'string') return [toExample(o, facts)] // one-line JSONL
    return factPairs(o, keepCase)
  }
  throw new Error(`${facts}: facts must be a JSON object {"key": "value", ...} or a JSONL of {"input", "output"}`)
}
