import t from 'tap'
import {
  applyRules,
  cleanText,
  collapseWhitespace,
  isReaction,
  removeAttachments,
  removeEmoji,
  replaceLinks,
  scrubContacts,
  topContacts,
  truncateRepeats,
} from '../../../lib/data/rules.ts'
import type { Message } from '../../../lib/data/types.ts'

t.test('reactions: curly and straight quotes, every verb, removals, images', async (t) => {
  for (const s of [
    'Laughed at “that was wild”',
    'Loved “see you there”',
    'Liked "ok"',
    'Disliked “pineapple pizza”',
    'Emphasized “RIGHT NOW”',
    'Questioned “you did what”',
    'Removed a heart from “yo”',
    'Removed an exclamation from "hey"',
    'Removed a like from an image',
    'Liked an image',
    'Loved a photo',
    'Reacted 😂 to “lol”',
    'Laughed at “multi\nline”',
    '  Loved “padded”  ',
  ]) t.ok(isReaction(s), s)
  for (const s of ['I loved “dune”', 'Loved it', 'Liked the movie', 'loved “x”', 'Removed the trash', 'Emphasized?']) {
    t.notOk(isReaction(s), s)
  }
})

t.test('attachments and links', async (t) => {
  t.equal(removeAttachments('look \uFFFC\uFFFC here'), 'look    here')
  t.equal(replaceLinks('see https://example.com/a?b=1 now'), 'see link now')
  t.equal(replaceLinks('(http://x.io/path).'), '(link).', 'trailing punctuation kept')
  t.equal(replaceLinks('go to www.google.com, then google.com/maps'), 'go to link, then link')
  t.equal(replaceLinks('e.g. this is fine... ok.'), 'e.g. this is fine... ok.')
  t.equal(replaceLinks('x https://a.b', 'URL'), 'x URL')
})

t.test('emoji: pictographs, skin tones, ZWJ, variation selectors, flags, keycaps', async (t) => {
  t.equal(removeEmoji('ok 😂😂'), 'ok   ')
  t.equal(collapseWhitespace(removeEmoji('thumbs 👍🏽 up')), 'thumbs up')
  t.equal(collapseWhitespace(removeEmoji('fam 👨‍👩‍👧‍👦 ok')), 'fam ok')
  t.equal(collapseWhitespace(removeEmoji('love ❤️ you')), 'love you')
  t.equal(collapseWhitespace(removeEmoji('go 🇺🇸 team 🏴‍☠️')), 'go team')
  t.equal(collapseWhitespace(removeEmoji('press 1️⃣ now')), 'press now')
  t.equal(removeEmoji('café — où? 1 2 # *'), 'café — où? 1 2 # *', 'letters, digits, punctuation stay')
  t.equal(removeEmoji('plain ascii'), 'plain ascii')
})

t.test('repeats and whitespace', async (t) => {
  t.equal(truncateRepeats('oooooooh nooooo'), 'oooh nooo')
  t.equal(truncateRepeats('ooo aaaa'), 'ooo aaa')
  t.equal(truncateRepeats('!!!!!! ?????'), '!!! ???')
  t.equal(truncateRepeats('hmmmm', 2), 'hmm')
  t.equal(truncateRepeats('hmmmm', 0), 'hmmmm', '0 turns it off')
  t.equal(truncateRepeats('😂😂😂😂😂'), '😂😂😂', 'astral characters')
  t.equal(truncateRepeats('hahahaha'), 'hahahaha', 'only identical characters')
  t.equal(collapseWhitespace('  a \n\t b  '), 'a b')
  t.equal(collapseWhitespace('a b'), 'a b')
})

t.test('scrub phone numbers and e-mails', async (t) => {
  t.equal(scrubContacts('call 555-123-4567 or (555) 123 4567'), 'call <phone> or <phone>')
  t.equal(scrubContacts('text +1 555 123 4567 / +44 20 7946 0958'), 'text <phone> / <phone>')
  t.equal(scrubContacts('mail me: sam.r+x@mail.example.com'), 'mail me: <email>')
  t.equal(scrubContacts('at 10:30, 2024, room 101'), 'at 10:30, 2024, room 101', 'times and years stay')
})

const O = { keepCase: false, keepEmoji: false, keepLinks: false, keepReactions: false, maxRepeat: 3 }
t.test('cleanText: order and the rule that drops', async (t) => {
  t.same(cleanText('PERFECT, see you at 7 🌮🌮', O), { text: 'perfect, see you at 7' })
  t.same(cleanText('SOOOOO   good https://x.com/A', O), { text: 'sooo good link' })
  t.same(cleanText('Loved “x”', O), { dropped: 'reaction' })
  t.same(cleanText('Loved “x”', { ...O, keepReactions: true }), { text: 'loved “x”' })
  t.same(cleanText('\uFFFC', O), { dropped: 'attachment' })
  t.same(cleanText('\uFFFC nice pic', O), { text: 'nice pic' })
  t.same(cleanText('😂 🙏🏽', O), { dropped: 'emoji' })
  t.same(cleanText('😂 OK', { ...O, keepEmoji: true, keepCase: true }), { text: '😂 OK' })
  t.same(cleanText('  \n ', O), { dropped: 'empty' })
  t.same(cleanText('', O), { dropped: 'empty' })
  t.same(cleanText('See https://X.com', { ...O, keepLinks: true, keepCase: true }), { text: 'See https://X.com' })
})

const m = (min: number, chat: string, fromMe: boolean, text: string, isGroup = false): Message => ({
  time: new Date(Date.UTC(2024, 0, 1) + min * 60000),
  chat,
  sender: fromMe ? 'Me' : chat,
  fromMe,
  isGroup,
  text,
})

t.test('topContacts: most direct messages, both directions, ties by name', async (t) => {
  const ms = [m(0, 'b', false, 'x'), m(1, 'b', true, 'x'), m(2, 'a', true, 'x'), m(3, 'a', false, 'x'), m(4, 'c', false, 'x'), m(5, 'g', false, 'x', true), m(6, 'g', false, 'x', true), m(7, 'g', false, 'x', true)]
  t.same(topContacts(ms, 2), [
    { contact: 'a', messages: 2 },
    { contact: 'b', messages: 2 },
  ])
  t.equal(topContacts(ms, Infinity).length, 3, 'groups are not contacts')
})

t.test('applyRules: counts per rule, input untouched unless in place', async (t) => {
  const ms = [
    m(-600000, 'a', false, 'too old'),
    m(0, 'a', false, 'Hello THERE'),
    m(1, 'a', true, 'Loved “Hello THERE”'),
    m(2, 'g', false, 'group talk', true),
    m(3, 'b', false, 'bee'),
    m(4, 'a', false, '\uFFFC'),
    m(5, 'a', false, '🎉'),
    m(6, 'a', true, ' '),
  ]
  const r = applyRules(ms, { ...O, since: new Date('2023-01-01'), includeGroups: false, topContacts: 1 })
  t.same(r.kept.map((x) => x.text), ['hello there'])
  t.same(r.dropped, { tapback: 0, system: 0, since: 1, group: 1, topContacts: 1, reaction: 1, attachment: 1, emoji: 1, empty: 1, malformed: 0 })
  t.same(r.contacts, [{ contact: 'a', messages: 5 }])
  t.equal(ms[1].text, 'Hello THERE', 'not mutated')
  const g = applyRules(ms, { ...O, since: new Date('2023-01-01'), includeGroups: true, topContacts: Infinity }, undefined, true)
  t.same(g.kept.map((x) => x.text), ['hello there', 'group talk', 'bee'])
  t.equal(ms[1].text, 'hello there', 'in place')
})
