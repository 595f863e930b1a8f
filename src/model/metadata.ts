/**
 * The model configuration as safetensors `__metadata__` (all values strings), using the keys of the
 * reference fixtures: tp, p, n_layers, n_heads, n_kv_heads, hidden, ffn, vocab, private_scale,
 * rope_theta, norm_eps, shared (plus seq_len, which caatnet adds).
 */
import { ConfigError, resolveConfig, type ResolvedConfig } from './config.js';

export function configToMetadata(cfg: ResolvedConfig): Record<string, string> {
  const m = cfg.model;
  return {
    format: 'caatnet',
    tp: String(cfg.parallel.tp),
    p: String(cfg.parallel.p),
    private_scale: cfg.parallel.privateScale,
    shared: String(cfg.shared),
    n_layers: String(m.layers),
    n_heads: String(m.heads),
    n_kv_heads: String(m.kvHeads),
    hidden: String(m.hidden),
    ffn: String(m.ffn),
    vocab: String(cfg.vocab),
    seq_len: String(m.seqLen),
    rope_theta: String(m.ropeTheta),
    norm_eps: String(m.normEps),
  };
}

/**
 * Parse and validate metadata into a resolved config. `file` names the source in errors. `seqLen`
 * fills in when the metadata has none (the fixtures do not store it). `tpOverride` runs the model at
 * another TP degree; refused when p < 1, since the function then depends on N.
 */
export function configFromMetadata(
  meta: Record<string, string>,
  file: string,
  opts: { seqLen?: number; tpOverride?: number } = {},
): ResolvedConfig {
  const num = (key: string, required = true): number | undefined => {
    const v = meta[key];
    if (v === undefined) {
      if (required) throw new ConfigError(`${file}: metadata field "${key}" is missing`);
      return undefined;
    }
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x)) throw new ConfigError(`${file}: metadata field "${key}" = ${JSON.stringify(v)} is not a number`);
    return x;
  };
  const scale = meta['private_scale'] ?? 'sqrt';
  if (scale !== 'sqrt' && scale !== 'none') throw new ConfigError(`${file}: metadata field "private_scale" = ${JSON.stringify(scale)} must be "sqrt" or "none"`);
  const tpStored = num('tp')!;
  const p = num('p')!;
  const seqLen = num('seq_len', false) ?? opts.seqLen;
  if (seqLen === undefined) throw new ConfigError(`${file}: metadata field "seq_len" is missing`);
  let tp = tpStored;
  if (opts.tpOverride !== undefined && opts.tpOverride !== tpStored) {
    if (p < 1) {
      throw new ConfigError(
        `${file}: this model was trained with TP = ${tpStored} and p = ${p} < 1; it cannot run at TP = ${opts.tpOverride}, ` +
          `because with partial synchronisation each of the ${tpStored} ranks carries its own private residual stream, so the function itself depends on the TP degree. ` +
          `Run it with --tp ${tpStored}; the ranks need not have a core each, since caatnet can host several of them in one thread or process.`,
      );
    }
    tp = opts.tpOverride;
  }
  const cfg = resolveConfig(
    {
      vocab: num('vocab')!,
      hidden: num('hidden')!,
      layers: num('n_layers')!,
      heads: num('n_heads')!,
      kvHeads: num('n_kv_heads')!,
      ffn: num('ffn')!,
      seqLen,
      normEps: num('norm_eps', false) ?? 1e-5,
      ropeTheta: num('rope_theta', false) ?? 10000,
    },
    { tp, p, privateScale: scale },
    file,
  );
  const shared = num('shared', false);
  if (shared !== undefined && shared !== cfg.shared) {
    throw new ConfigError(`${file}: metadata field "shared" = ${shared} disagrees with floor(p·hidden) = ${cfg.shared}`);
  }
  if (cfg.vocab !== num('vocab')) {
    throw new ConfigError(`${file}: metadata field "vocab" = ${num('vocab')} is not a multiple of tp = ${tp}`);
  }
  return cfg;
}
