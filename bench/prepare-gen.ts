/**
 * A synthetic processed_messages.csv for the prepare benchmark: `n` messages over 60 contacts
 * and 5 groups across 2021–2025, newest first like the app writes, with the things the rules
 * work on (links, emoji, reactions, attachments, quoted commas, repeats, upper case).
 * Deterministic (fixed-seed xorshift), written in 1 MB chunks.
 */
import { createWriteStream } from 'node:fs'
import { once } from 'node:events'

const WORDS = ('yeah no lol ok wait what time are you coming tonight dinner bartaco sounds good (maybe) idk ' +
  'haha thats crazy did you see the game tomorrow works for me send it omw running late im here where r u ' +
  'nice love that same tbh literally cant rn call me later bro dude the meeting got moved class was fine').split(' ')
const EXTRAS = [
  'check this https://example.com/some/long/path?x=1',
  'Loved “see you there”',
  'Laughed at "that was wild"',
  '\uFFFC',
  'nooooooooo way',
  'ok 😂😂',
  'sounds good 👍🏽',
  'Yes, "obviously", lol',
  'HAHAHA WHAT',
  'on my way\nsee you soon',
]

export async function generateCsv(path: string, n: number, seed = 42): Promise<void> {
  let s = seed >>> 0 || 1
  const rnd = () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) / 4294967296
  }
  const out = createWriteStream(path)
  out.write('Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n')
  const start = Date.UTC(2021, 0, 1) / 1000
  const end = Date.UTC(2025, 11, 31) / 1000
  let t = end
  const step = (end - start) / n
  let buf = ''
  let contact = 'Contact 0'
  let group = false
  for (let i = 0; i < n; i++) {
    // Conversations come in bursts: mostly a short gap to the next message, sometimes a long one.
    if (rnd() < 0.1) {
      const c = Math.floor(rnd() ** 2 * 60)
      contact = `Contact ${c}`
      group = rnd() < 0.1
    }
    t -= rnd() < 0.85 ? rnd() * step * 0.5 : rnd() * step * 1.5
    const me = rnd() < 0.5
    let text: string
    if (rnd() < 0.08) text = EXTRAS[Math.floor(rnd() * EXTRAS.length)]
    else {
      const k = 1 + Math.floor(rnd() * 9)
      const w: string[] = []
      for (let j = 0; j < k; j++) w.push(WORDS[Math.floor(rnd() * WORDS.length)])
      text = w.join(' ')
    }
    const q = /[",\n]/.test(text) ? '"' + text.replaceAll('"', '""') + '"' : text
    const gname = group ? `Group ${contact.slice(8)}` : ''
    const sender = me ? 'Me' : group ? `Contact ${Math.floor(rnd() * 60)}` : contact
    const readable = new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19)
    buf += `${t.toFixed(3)},${readable},${sender},${me ? '' : '+1555' + sender.slice(8).padStart(7, '0')},${q},${group ? 1 : 0},${gname},${me ? 1 : 0},${group ? '' : contact}\n`
    if (buf.length > 1 << 20) {
      if (!out.write(buf)) await once(out, 'drain')
      buf = ''
    }
  }
  out.end(buf)
  await once(out, 'finish')
}
