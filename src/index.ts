/** caatnet as a library: the pieces a program needs to build, train and run models. */
export * from './backend/index.js';
export { resolveConfig, countParams, ConfigError, type ResolvedConfig, type ModelConfig, type ParallelConfig } from './model/config.js';
export { RankModel, TAGS, type KVCache } from './model/model.js';
export { VirtualModel } from './model/harness.js';
export { paramSpecs, type ParamSpec } from './model/params.js';
export { configFromMetadata, configToMetadata } from './model/metadata.js';
export type { Communicator, CommStats, ReduceOp } from './tp/comm.js';
export { CommAbortedError } from './tp/comm.js';
export { createVirtualGroup } from './tp/virtual.js';
export { launchThreadGroup, joinThreadGroup } from './transport/threads.js';
export * as ops from './tp/ops.js';
export { readSafetensors, writeSafetensors, parseSafetensors, serializeSafetensors } from './io/safetensors.js';
export { loadCheckpoint, loadModelFile, writeCheckpoint } from './io/checkpoint.js';
export { train, type RunSpec } from './train/trainer.js';
export { AdamW } from './train/adamw.js';
