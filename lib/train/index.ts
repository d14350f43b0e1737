/** Training: finetune(), evaluate(), PEFT adapters, checkpoints, schedules. */
export { finetune, evaluateLoss, cleanRun } from './finetune.ts';
export type { FinetuneOptions, LoraOptions, TrainProgress, TrainReport } from './finetune.ts';
export { evaluate } from './evaluate.ts';
export type { EvaluateOptions, EvaluateReport } from './evaluate.ts';
export { loadAdapter, saveAdapter, adapterConfig, validateLoraSpec, readModelDims, ALL_TARGETS } from './adapter.ts';
export type { LoadedAdapter, AdapterConfig, LoraTarget, ModelDims } from './adapter.ts';
export { readSafetensors, decodeSafetensors, encodeSafetensors } from './safetensors.ts';
export { learningRate } from './schedule.ts';
export type { ScheduleKind } from './schedule.ts';
export { lossSvg } from './plot.ts';
export { promptText, answerText, encodePair } from '../tokenize/format.ts';
export type { TrainFormat, Pair } from '../tokenize/format.ts';
