// `mimic chat` at a terminal: Ctrl-C during a reply and at the prompt, Ctrl-D, the end of the input.
// The chat runs in this process on the tiny checkpoint (CPU engine) with a fake TTY: a keyboard
// (readline in raw mode gets the keys as bytes: '\x03' is Ctrl-C, '\x04' Ctrl-D, '\r' Enter) and a
// screen that records each write. The tests wait on writes (never on time): a key pressed when a
// reply's piece has been printed reaches the chat before the engine's next step can finish.
import t, { type Test } from 'tap';
import { PassThrough, Writable } from 'node:stream';
import { Command } from 'commander';
import { loadModel, type Model } from '../../lib/infer/model.ts';
import { TRAINED_STOPS } from '../../lib/tokenize/format.ts';
import type { ChatMessage } from '../../lib/tokenize/tokenizer.ts';
import { chatLoop } from '../../lib/cli/chat.ts';
import { addSamplingOptions } from '../../lib/cli/generate.ts';

const dir = new URL('../fixtures/ref/tiny-llama', import.meta.url).pathname;
const ME = '\x1b[1mme>\x1b[0m ';
const YOU = '\x1b[1myou>\x1b[0m ';
const CTRL_C = '\x03', CTRL_D = '\x04';
const STOPPED = ' [stopped]\n';
const WARNING = '(press Ctrl-C again or Ctrl-D to exit)';
const MAX_TOKENS = 64;
const SAFETY_MS = 15_000;

/** A terminal's keyboard: readline reads what is written, as keys. */
class Keyboard extends PassThrough {
  isTTY: boolean;
  rawModes: boolean[] = [];
  constructor(tty: boolean) { super(); this.isTTY = tty; }
  setRawMode(on: boolean) { this.rawModes.push(on); return this; }
}

/** A terminal's screen: records every write and wakes who waits for one. */
class Screen extends Writable {
  isTTY: boolean;
  readonly chunks: string[] = [];
  private waiters: { cond: () => boolean; resolve: () => void; reject: (why: string) => void }[] = [];
  private over: string | undefined;
  constructor(tty: boolean) { super({ decodeStrings: false }); this.isTTY = tty; }
  override _write(chunk: string | Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void) {
    this.chunks.push(String(chunk));
    this.waiters = this.waiters.filter((w) => { if (!w.cond()) return true; w.resolve(); return false; });
    cb();
  }
  get text() { return this.chunks.join(''); }
  /** Resolves at the write that makes `cond` true (at once when it already is); rejects if the chat ends first. */
  until(what: string, cond: () => boolean): Promise<void> {
    if (cond()) return Promise.resolve();
    const fail = (why: string) => new Error(`no ${what} on the screen (${why}):\n${JSON.stringify(this.text)}`);
    if (this.over) return Promise.reject(fail(this.over));
    return new Promise((resolve, reject) => {
      // a safety net only: every wait is for a write that comes within milliseconds
      const timer = setTimeout(() => reject(fail('timed out')), SAFETY_MS);
      this.waiters.push({ cond, resolve: () => { clearTimeout(timer); resolve(); }, reject: (why) => { clearTimeout(timer); reject(fail(why)); } });
    });
  }
  /** The chat has ended: nothing more will be written. */
  chatEnded() {
    this.over = 'the chat has ended';
    for (const w of this.waiters.splice(0)) w.reject(this.over);
  }
  /** Index of the first chunk from `from` for which `pred` holds, or -1. */
  find(pred: (c: string) => boolean, from = 0): number {
    for (let i = from; i < this.chunks.length; i++) if (pred(this.chunks[i])) return i;
    return -1;
  }
}

/** The flags of `mimic chat --temperature 0 --max-tokens 64`, parsed as the command parses them. */
function chatFlags(): Record<string, unknown> {
  const cmd = addSamplingOptions(new Command());
  cmd.parse(['--temperature', '0', '--max-tokens', String(MAX_TOKENS)], { from: 'user' });
  return cmd.opts();
}

/** Starts a chat on a fresh model with a fake terminal (or, with tty false, piped streams). */
async function startChat(t: Test, tty = true) {
  const model = await loadModel(dir, { device: 'cpu' });
  const kb = new Keyboard(tty), screen = new Screen(tty);
  const sigintBefore = process.listeners('SIGINT');
  const exitCodeBefore = process.exitCode;
  process.exitCode = 0;
  let over = false;
  const ended = chatLoop(model, chatFlags(), { input: kb, output: screen }).then(() => { over = true; screen.chatEnded(); });
  t.teardown(async () => {
    if (!over) { kb.end(); await ended; }
    process.exitCode = exitCodeBefore;
  });
  if (tty) await screen.until('first prompt', () => screen.find((c) => c.includes(YOU)) >= 0);
  return {
    model, kb, screen, ended,
    get over() { return over; },
    /** The chat's own SIGINT handler (the signal a terminal sends when stdin is not a TTY). */
    sigint() {
      const added = process.listeners('SIGINT').filter((l) => !sigintBefore.includes(l));
      if (added.length !== 1) throw new Error(`the chat should listen to SIGINT once (${added.length})`);
      (added[0] as () => void)();
    },
    /** Once the chat has ended: everything it took is given back and the exit code is 0. */
    async assertClosed(t: Test) {
      await ended;
      t.equal(process.exitCode, 0, 'exit code 0');
      t.same(process.listeners('SIGINT'), sigintBefore, 'its SIGINT handler is removed');
      if (tty) {
        t.equal(kb.rawModes[0], true, 'readline had the terminal in raw mode');
        t.equal(kb.rawModes.at(-1), false, 'and gave it back in cooked mode');
        t.ok(screen.text.endsWith('\n'), 'the last line is ended');
      }
      await t.rejects(model.generate('hi'), { code: 'EDISPOSED' }, 'the model is disposed');
    },
  };
}
type Chat = Awaited<ReturnType<typeof startChat>>;

/**
 * The reply that starts at chunk `me` (the "me>" label): its printed pieces, the text, and how it
 * ended ('\n', or ' [stopped]\n'). It runs to the next prompt, less readline's cursor moves before it.
 */
function replyAt(screen: Screen, me: number) {
  const prompt = screen.find((c) => c.includes(YOU), me + 1);
  if (prompt < 0) throw new Error('the reply has not ended');
  let end = prompt;
  while (screen.chunks[end - 1].startsWith('\x1b[')) end--;
  const pieces = screen.chunks.slice(me + 1, end - 1);
  return { pieces, text: pieces.join(''), ending: screen.chunks[end - 1] };
}

/** Types a question and Enter; resolves with the index of its reply's "me>" label. */
async function ask(chat: Chat, question: string): Promise<number> {
  const from = chat.screen.chunks.length;
  chat.kb.write(question + '\r');
  await chat.screen.until(`reply to ${question}`, () => chat.screen.find((c) => c === ME, from) >= 0);
  return chat.screen.find((c) => c === ME, from);
}

/** Waits for the prompt after chunk `from`. */
const promptAfter = (chat: Chat, from: number) =>
  chat.screen.until('prompt', () => chat.screen.find((c) => c.includes(YOU), from + 1) >= 0);

/** Types a question and waits for the whole reply. */
async function askAndWait(chat: Chat, question: string) {
  const me = await ask(chat, question);
  await promptAfter(chat, me);
  return replyAt(chat.screen, me);
}

/** Types /history and returns what it printed. */
async function history(chat: Chat): Promise<string> {
  const from = chat.screen.chunks.length;
  chat.kb.write('/history\r');
  await chat.screen.until('/history', () => chat.screen.find((c) => c.includes(YOU), from) >= 0);
  const enter = chat.screen.find((c) => c === '\r\n', from); // readline ends the typed line
  const prompt = chat.screen.find((c) => c.includes(YOU), enter);
  return chat.screen.chunks.slice(enter + 1, prompt).filter((c) => !c.startsWith('\x1b[')).join('');
}

// What the chat should print, from a model of its own: greedy replies, as `mimic chat` asks for them.
const ref: Model = await loadModel(dir, { device: 'cpu' });
t.teardown(() => ref.dispose());
const sampling = { temperature: 0, maxTokens: MAX_TOKENS, stop: [...TRAINED_STOPS] };
const refReply = async (q: string, turns: ChatMessage[] = []) => ref.generate(ref.promptIds(q, turns), sampling);
const Q1 = 'how are you', Q2 = 'and then?';
const full = await refReply(Q1);
const SHOWN = 3; // pieces of Q1's reply printed before Ctrl-C

t.test('the reference: the reply to Q1 is long (64 tokens), printable, and the chat prints it the same', async (t) => {
  t.equal(full.stopReason, 'length', 'so Ctrl-C after a few pieces comes long before its end');
  t.match(full.text, /^[\x20-\x7e]+$/, 'printable (the checks below read it off the screen)');
  const chat = await startChat(t);
  const r = await askAndWait(chat, Q1);
  t.equal(r.text, full.text);
  t.equal(r.ending, '\n');
  t.ok(r.pieces.length > SHOWN, 'streamed in more pieces than are shown before Ctrl-C below');
  chat.kb.write(CTRL_D);
  await chat.assertClosed(t);
});

t.test('Ctrl-C while a reply streams stops it at once; the chat goes on; the partial reply stays in the history', async (t) => {
  const chat = await startChat(t);
  const me = await ask(chat, Q1);
  await chat.screen.until(`${SHOWN} pieces of the reply`, () => chat.screen.chunks.length >= me + 1 + SHOWN);
  const shown = chat.screen.chunks.slice(me + 1).join('');
  chat.kb.write(CTRL_C);
  await promptAfter(chat, me);
  const r = replyAt(chat.screen, me);
  t.equal(r.text, shown, 'nothing more of the reply is printed after Ctrl-C');
  t.equal(r.ending, STOPPED, 'the reply ends with the [stopped] marker and a newline');
  t.ok(full.text.startsWith(shown) && shown.length < full.text.length, 'it was cut short');
  t.notOk(chat.over, 'the chat goes on');

  // the Ctrl-C that stopped a reply is not the first of "Ctrl-C twice": one at the prompt only warns
  const before = chat.screen.chunks.length;
  chat.kb.write(CTRL_C);
  await chat.screen.until('the warning', () => chat.screen.find((c) => c.includes(WARNING), before) >= 0);
  await promptAfter(chat, chat.screen.find((c) => c.includes(WARNING), before));
  t.notOk(chat.over, 'a single Ctrl-C at the prompt does not exit');

  // the next question is answered, with the stopped reply, as far as it got, in its prompt
  const partialTurns: ChatMessage[] = [{ role: 'user', content: Q1 }, { role: 'assistant', content: shown.trim() }];
  const want = await refReply(Q2, partialTurns);
  t.not(want.text, (await refReply(Q2)).text, '(the history changes this reply, so the check below sees it)');
  const r2 = await askAndWait(chat, Q2);
  t.equal(r2.text, want.text, 'the reply to the next question is the one that follows the partial reply');
  t.equal(r2.ending, '\n', 'and it runs to its end');
  t.equal(await history(chat), `user: ${Q1}\nassistant: ${shown.trim()}\nuser: ${Q2}\nassistant: ${want.text.trim()}\n`,
    '/history holds the partial reply');

  chat.kb.write(CTRL_D);
  await chat.assertClosed(t);
});

t.test('Ctrl-C before the first word of a reply: stopped, and left out of the history with its question', async (t) => {
  const chat = await startChat(t);
  const me = await ask(chat, 'hello');
  chat.kb.write(CTRL_C); // at once: the reply's prompt is still being read
  await promptAfter(chat, me);
  const r = replyAt(chat.screen, me);
  t.equal(r.text, '', 'nothing of it was printed');
  t.equal(r.ending, STOPPED);
  t.equal(await history(chat), '', 'the history is empty');
  const r2 = await askAndWait(chat, Q1);
  t.equal(r2.text, full.text, 'the next question is answered as the first of the chat');
  t.equal(await history(chat), `user: ${Q1}\nassistant: ${full.text.trim()}\n`);
  chat.kb.end(); // the end of the input exits too
  await chat.assertClosed(t);
});

t.test('Ctrl-C at the empty prompt warns and the chat goes on; twice in a row exits with code 0', async (t) => {
  const chat = await startChat(t);
  const warned = async () => {
    const from = chat.screen.chunks.length;
    chat.kb.write(CTRL_C);
    await chat.screen.until('the warning', () => chat.screen.find((c) => c.includes(WARNING), from) >= 0);
    await promptAfter(chat, chat.screen.find((c) => c.includes(WARNING), from));
  };
  await warned();
  t.notOk(chat.over, 'one Ctrl-C does not exit');
  const r = await askAndWait(chat, Q1);
  t.equal(r.text, full.text, 'the next question gets its whole reply');
  t.equal(r.ending, '\n');
  await warned();
  t.notOk(chat.over, 'a line in between starts the count again: Ctrl-C once more only warns');
  t.equal(chat.screen.text.split(WARNING).length - 1, 2, 'warned twice');
  chat.kb.write(CTRL_C);
  await chat.assertClosed(t);
  t.equal(chat.screen.text.split(WARNING).length - 1, 2, 'the second Ctrl-C in a row exits without warning again');
});

t.test('Ctrl-D at the prompt exits cleanly with code 0', async (t) => {
  const chat = await startChat(t);
  const shown = chat.screen.chunks.length;
  chat.kb.write(CTRL_D);
  await chat.assertClosed(t);
  t.equal(chat.screen.chunks.slice(shown).join(''), '\n', 'it only ends the prompt line');
});

t.test('piped input (no TTY): SIGINT stops the running reply, the next line is answered, the end of input exits with 0', async (t) => {
  const chat = await startChat(t, false);
  chat.kb.write(`${Q1}\n${Q2}\n`);
  await chat.screen.until(`${SHOWN} pieces of the reply`, () => chat.screen.chunks.length >= SHOWN);
  const shown = chat.screen.text;
  chat.sigint();
  chat.kb.end();
  await chat.assertClosed(t);
  const want = await refReply(Q2, [{ role: 'user', content: Q1 }, { role: 'assistant', content: shown.trim() }]);
  t.equal(chat.screen.text, shown + STOPPED + want.text + '\n', 'the first reply stops where it was; the second follows it in full');
});
