/** The inference API: load a checkpoint (+ LoRA adapter), score and generate. */
export { loadModel, Model, type LoadModelOptions, type DeviceOption, type StepRequest } from './model.ts';
export { generate, type GenerateCallOptions } from './generate.ts';
export { GENERATE_DEFAULTS, resolveGenerateOptions, type GenerateOptions, type GenerateResult, type SamplingOptions, type StopReason } from './options.ts';
export { InferError, type InferErrorCode } from './errors.ts';
export { Scheduler, StepFailure, type SchedulerOptions, type Lease, type AcquireOptions } from './scheduler.ts';
export { StopMatcher, type StopPush } from './stop.ts';
export { StreamDecoder, type DecodeFn } from './stream-decode.ts';
