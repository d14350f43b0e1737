/** `mimic prepare SOURCE... --out train.jsonl [rules...]` */
import { InvalidArgumentError, type Command } from 'commander'
import { intArg, rangeArg } from './args.ts'
import { prepare } from '../data/prepare.ts'
import { formatReport } from '../data/report.ts'
import { DEFAULTS } from '../data/options.ts'

const numArg = (name: string, lo: number, hi: number) => rangeArg(name, lo, hi, true)

export function registerPrepare(program: Command): void {
  program
    .command('prepare')
    .description('turn message histories (chat.db, processed_messages.csv, WhatsApp exports, JSONL pairs) into train.jsonl / val.jsonl')
    .argument('<sources...>', 'chat.db, processed_messages.csv, WhatsApp chat export (.txt) or JSONL of {input, output}; the kind is detected from the content')
    .requiredOption('-o, --out <file>', 'training JSONL to write (val.jsonl goes next to it)')
    .option('--val-out <file>', 'validation JSONL to write (default: val.jsonl next to --out)')
    .option('--since <date>', 'keep messages on or after this date', DEFAULTS.since)
    .option('--top-contacts <n>', 'keep the n contacts with the most direct messages (0 = all)', intArg('--top-contacts'), DEFAULTS.topContacts)
    .option('--reply-window <minutes>', 'merge and pair messages within this many minutes', numArg('--reply-window', 0.001, Infinity), DEFAULTS.replyWindowMinutes)
    .option('--facts <file>', 'facts about you: a JSON object {"key": "value"} or a JSONL of conversations')
    .option('--fact-repeats <n>', 'times the fact pairs are repeated in train', intArg('--fact-repeats'), DEFAULTS.factRepeats)
    .option('--context-turns <n>', 'earlier turns to include as context', intArg('--context-turns'), DEFAULTS.contextTurns)
    .option('--val-fraction <f>', 'fraction of pairs for validation (0 = none)', numArg('--val-fraction', 0, 1), DEFAULTS.valFraction)
    .option('--max-repeat <n>', 'cut runs of one character longer than n (0 = off)', intArg('--max-repeat'), DEFAULTS.maxRepeat)
    .option('--keep-case', 'do not lower-case')
    .option('--keep-emoji', 'do not remove emoji')
    .option('--keep-links', 'do not replace URLs with "link"')
    .option('--keep-reactions', 'do not drop reaction messages (Loved “…”)')
    .option('--include-groups', 'keep group chats')
    .option('--scrub', 'replace phone numbers and e-mail addresses in outputs')
    .option('--me <name>', 'WhatsApp: your name as the export writes it (repeat for several names; required for WhatsApp exports)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--date-order <order>', `WhatsApp: dmy or mdy, used when the dates do not settle it (default ${DEFAULTS.dateOrder})`, (v: string) => {
      if (v !== 'dmy' && v !== 'mdy') throw new InvalidArgumentError('must be dmy or mdy')
      return v
    })
    .option('--time-zone <zone>', 'WhatsApp: time zone of the export times: IANA name, UTC or +HH:MM (default: this machine\'s)')
    .option('--dry-run', 'report only, write nothing')
    .option('--json', 'print the report as JSON')
    .action(async (sources: string[], f: Record<string, unknown>) => {
      let report
      try {
        report = await prepare({
          sources,
          out: f.out as string,
          valOut: f.valOut as string | undefined,
          since: f.since as string,
          topContacts: f.topContacts as number,
          replyWindowMinutes: f.replyWindow as number,
          facts: f.facts as string | undefined,
          factRepeats: f.factRepeats as number,
          contextTurns: f.contextTurns as number,
          valFraction: f.valFraction as number,
          maxRepeat: f.maxRepeat as number,
          keepCase: !!f.keepCase,
          keepEmoji: !!f.keepEmoji,
          keepLinks: !!f.keepLinks,
          keepReactions: !!f.keepReactions,
          includeGroups: !!f.includeGroups,
          scrub: !!f.scrub,
          dryRun: !!f.dryRun,
          me: f.me as string[] | undefined,
          dateOrder: f.dateOrder as 'dmy' | 'mdy' | undefined,
          timeZone: f.timeZone as string | undefined,
        })
      } catch (e) {
        process.stderr.write(`mimic prepare: ${(e as Error).message}\n`)
        process.exitCode = 1
        return
      }
      process.stdout.write((f.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n')
      if (report.train === 0) process.exitCode = 1
    })
}
