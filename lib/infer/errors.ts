/** Errors of the inference API. `code` is stable and safe to test; messages say what to do. */
export type InferErrorCode =
  /** A bad argument: wrong type, out of range, empty prompt, token id outside the vocabulary. */
  | 'EINVAL'
  /** The prompt (plus the tokens asked for) does not fit the model's context. */
  | 'ECONTEXT'
  /** The scheduler's wait queue is full; try again later. */
  | 'EQUEUEFULL'
  /** The model was disposed. */
  | 'EDISPOSED';

export class InferError extends Error {
  constructor(readonly code: InferErrorCode, message: string) {
    super(message);
    this.name = 'InferError';
  }
}

export const invalid = (message: string) => new InferError('EINVAL', `mimic: ${message}`);
