import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { detectKind } from '../../../lib/data/importers/detect.ts'
import { readJsonl } from '../../../lib/data/importers/jsonl.ts'
import { firstInvalidUtf8 } from '../../../lib/data/importers/text.ts'

const FX = join(import.meta.dirname, '../../fixtures/data')

t.test('detects by content, not by name', async (t) => {
  const dir = t.testdir({
    'pairs.txt': '{"input": "a", "output": "b"}\n',
    '_chat.txt': '[12/03/2024, 21:04:11] Sam: hi\n',
    'history.dat': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n',
  })
  t.equal(await detectKind(join(FX, 'processed_messages.csv')), 'csv')
  t.equal(await detectKind(join(FX, 'macos-ts-chat.db')), 'chatdb')
  t.equal(await detectKind(join(dir, 'pairs.txt')), 'jsonl')
  t.equal(await detectKind(join(dir, 'history.dat')), 'csv')
  t.equal(await detectKind(join(dir, '_chat.txt')), 'whatsapp')
})

t.test('says what a file is when it is none of them', async (t) => {
  const dir = t.testdir({
    'empty.csv': '',
    'blank.csv': '\n\n  \n',
    'other.jsonl': '{"prompt": "a", "completion": "b"}\n',
    'doc.json': '{\n  "input": "a"\n}\n',
    'arr.json': '[{"input": "a", "output": "b"}]',
    'notes.txt': 'dear diary\n',
    sub: {},
  })
  writeFileSync(join(dir, 'img.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d]))
  const cases: [string, RegExp][] = [
    ['empty.csv', /empty\.csv: the file is empty/],
    ['blank.csv', /blank\.csv: the file holds only blank lines/],
    ['other.jsonl', /other\.jsonl: JSON lines, but the first object has keys \["prompt","completion"\] instead of "input" and "output"/],
    ['doc.json', /doc\.json: starts with "\{" but its first line is not a JSON object/],
    ['arr.json', /arr\.json: a JSON array; give pairs as JSONL/],
    ['notes.txt', /notes\.txt: plain text that is none of: a chat\.db \(SQLite\), a processed_messages\.csv/],
    ['img.png', /img\.png: binary data \(starts 89 50 4e 47/],
    ['sub', /cannot read .*sub: it is a directory, not a file/],
    ['missing.csv', /cannot read .*missing\.csv: no such file/],
  ]
  for (const [f, re] of cases) await t.rejects(detectKind(join(dir, f)), { message: re }, f)
})

t.test('JSONL pass-through: pairs, context, errors with line numbers', async (t) => {
  const dir = t.testdir({
    'ok.jsonl': '{"input": "hi", "output": "yo"}\n\n{"input": "a", "output": "b", "context": [{"role": "user", "content": "c"}]}\n',
    'bad.jsonl': '{"input": "hi", "output": "yo"}\n{"input": "hi", "output": 3}\n',
    'broken.jsonl': '{"input": "hi", "output": "yo"}\n{"input": \n',
    'ctx.jsonl': '{"input": "hi", "output": "yo", "context": [{"role": "system", "content": "c"}]}\n',
  })
  const r = await readJsonl(join(dir, 'ok.jsonl'))
  t.same(r.pairs, [
    { input: 'hi', output: 'yo' },
    { input: 'a', output: 'b', context: [{ role: 'user', content: 'c' }] },
  ])
  await t.rejects(readJsonl(join(dir, 'bad.jsonl')), { message: /bad\.jsonl: line 2: expected an object with string "input" and "output"/ })
  await t.rejects(readJsonl(join(dir, 'broken.jsonl')), { message: /broken\.jsonl: line 2 is not JSON/ })
  await t.rejects(readJsonl(join(dir, 'ctx.jsonl')), { message: /ctx\.jsonl: line 1: context\[0\] must be/ })
  const p = join(dir, 'utf.jsonl')
  writeFileSync(p, Buffer.concat([Buffer.from('{"input": "ok", "output": "b\n'), Buffer.from([0xff, 0xfe])]))
  await t.rejects(readJsonl(p), { message: `${p}: invalid UTF-8 at byte offset 29 (line 2, bytes ff fe); re-save the file as UTF-8` })
})

t.test('firstInvalidUtf8', async (t) => {
  const b = (...x: number[]) => Uint8Array.from(x)
  t.equal(firstInvalidUtf8(Buffer.from('héllo 😂')), -1)
  t.equal(firstInvalidUtf8(b(0x61, 0x80)), 1, 'stray continuation')
  t.equal(firstInvalidUtf8(b(0x61, 0xc0, 0xaf)), 1, 'overlong 2-byte')
  t.equal(firstInvalidUtf8(b(0xe0, 0x80, 0xaf)), 0, 'overlong 3-byte')
  t.equal(firstInvalidUtf8(b(0xed, 0xa0, 0x80)), 0, 'surrogate')
  t.equal(firstInvalidUtf8(b(0xf4, 0x90, 0x80, 0x80)), 0, 'above U+10FFFF')
  t.equal(firstInvalidUtf8(b(0x61, 0x62, 0xe2, 0x82)), 2, 'cut short')
})
