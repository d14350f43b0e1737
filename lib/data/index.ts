/** Data preparation: message histories → cleaned training pairs (`train.jsonl`, `val.jsonl`). */
export { prepare, readMessages } from './prepare.ts'
export type { Message, Example, Turn, PrepareOptions, PrepareReport, DropCounts, SourceKind } from './types.ts'
export { DEFAULTS } from './options.ts'
export { formatReport } from './report.ts'
