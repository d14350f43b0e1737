import t from 'tap'
import { makePairs, mergeTurns } from '../../../lib/data/pairs.ts'
import type { Message } from '../../../lib/data/types.ts'

const m = (min: number, chat: string, fromMe: boolean, text: string): Message => ({
  time: new Date(Date.UTC(2024, 0, 1) + min * 60000),
  chat,
  sender: fromMe ? 'Me' : chat,
  fromMe,
  isGroup: false,
  text,
})
const W = 30 * 60000

t.test('merge consecutive messages of one side within the window', async (t) => {
  const r = mergeTurns([m(0, 'a', false, 'hey'), m(10, 'a', false, 'you there?'), m(45, 'a', false, 'hello??'), m(46, 'a', true, 'yes'), m(47, 'a', true, 'sorry')], W)
  t.same(r.blocks.map((b) => [b.fromMe, b.text]), [
    [false, 'hey | you there?'],
    [false, 'hello??'],
    [true, 'yes | sorry'],
  ])
  t.equal(r.merged, 2)
  t.equal(mergeTurns([m(0, 'a', true, 'a'), m(30, 'a', true, 'b')], W).blocks.length, 1, 'exactly the window merges')
})

t.test('pairs: reply within the window, chats apart, order restored', async (t) => {
  const ms = [
    m(100, 'b', true, 'b-reply'), // out of order on purpose
    m(0, 'a', false, 'dinner?'),
    m(5, 'a', true, 'yeah'),
    m(6, 'a', true, 'bartaco?'),
    m(90, 'b', false, 'b-question'),
    m(200, 'a', false, 'late'),
    m(231, 'a', true, 'too late'),
    m(300, 'a', true, 'my own start'),
    m(301, 'a', false, 'answer to me'),
  ]
  const r = makePairs(ms, { replyWindowMs: W, separator: ' | ', contextTurns: 0 })
  t.same(r.examples, [
    { input: 'b-question', output: 'b-reply' },
    { input: 'dinner?', output: 'yeah | bartaco?' },
  ])
  t.equal(r.unanswered, 2, '"late" (31 min) and "answer to me" (no reply)')
  t.equal(r.merged, 1)
  const sep = makePairs(ms, { replyWindowMs: W, separator: ' / ', contextTurns: 0 })
  t.equal(sep.examples[1].output, 'yeah / bartaco?')
})

t.test('context turns: earlier turns of the same sitting, oldest first', async (t) => {
  const ms = [
    m(0, 'a', false, 'one'),
    m(1, 'a', true, 'two'),
    m(2, 'a', false, 'three'),
    m(3, 'a', true, 'four'),
    m(4, 'a', false, 'five'),
    m(5, 'a', true, 'six'),
    m(100, 'a', false, 'new sitting'),
    m(101, 'a', true, 'yep'),
  ]
  const r = makePairs(ms, { replyWindowMs: W, separator: ' | ', contextTurns: 2 })
  t.same(r.examples, [
    { input: 'one', output: 'two', context: [] },
    { input: 'three', output: 'four', context: [{ role: 'user', content: 'one' }, { role: 'assistant', content: 'two' }] },
    { input: 'five', output: 'six', context: [{ role: 'user', content: 'three' }, { role: 'assistant', content: 'four' }] },
    { input: 'new sitting', output: 'yep', context: [] },
  ])
})
