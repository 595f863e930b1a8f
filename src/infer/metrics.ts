/** Prometheus metrics of the server (prom-client), with vLLM's names under the `caat_` prefix. */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

const LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class ServerMetrics {
  readonly registry = new Registry();
  readonly running: Gauge;
  readonly waiting: Gauge;
  readonly slotsUsed: Gauge;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly success: Counter<'finished_reason'>;
  readonly failure: Counter<'reason'>;
  readonly http: Counter<'path' | 'status'>;
  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly e2e: Histogram;
  readonly queue: Histogram;
  readonly step: Histogram;
  readonly collective: Counter;
  readonly commBytes: Counter;
  readonly steps: Counter;

  constructor(model: string, live: { running: () => number; waiting: () => number; slots: () => number }) {
    const r = this.registry;
    r.setDefaultLabels({ model_name: model });
    const registers = [r];
    this.running = new Gauge({ name: 'caat_num_requests_running', help: 'Sequences holding a KV cache slot', registers, collect() { this.set(live.running()); } });
    this.waiting = new Gauge({ name: 'caat_num_requests_waiting', help: 'Sequences waiting for a slot', registers, collect() { this.set(live.waiting()); } });
    this.slotsUsed = new Gauge({ name: 'caat_kv_cache_slots_used', help: 'KV cache slots in use', registers, collect() { this.set(live.slots()); } });
    this.promptTokens = new Counter({ name: 'caat_prompt_tokens_total', help: 'Prompt tokens of admitted sequences', registers });
    this.generationTokens = new Counter({ name: 'caat_generation_tokens_total', help: 'Generated tokens', registers });
    this.success = new Counter({ name: 'caat_request_success_total', help: 'Requests completed, by finish reason of their last choice', labelNames: ['finished_reason'], registers });
    this.failure = new Counter({ name: 'caat_request_failure_total', help: 'Requests that failed or were aborted, by reason', labelNames: ['reason'], registers });
    this.http = new Counter({ name: 'caat_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['path', 'status'], registers });
    this.ttft = new Histogram({ name: 'caat_time_to_first_token_seconds', help: 'Arrival to first generated token', buckets: LATENCY, registers });
    this.itl = new Histogram({ name: 'caat_inter_token_latency_seconds', help: 'Time between generated tokens of one sequence', buckets: LATENCY, registers });
    this.e2e = new Histogram({ name: 'caat_e2e_request_latency_seconds', help: 'Arrival to the end of the response', buckets: LATENCY, registers });
    this.queue = new Histogram({ name: 'caat_request_queue_time_seconds', help: 'Arrival to admission into a cache slot', buckets: LATENCY, registers });
    this.step = new Histogram({ name: 'caat_tp_step_seconds', help: 'One engine step (forward of every scheduled row on every rank)', buckets: LATENCY, registers });
    this.collective = new Counter({ name: 'caat_tp_collective_seconds_total', help: 'Time rank 0 spent in collectives', registers });
    this.commBytes = new Counter({ name: 'caat_tp_communicated_bytes_total', help: 'Payload bytes rank 0 moved in collectives', registers });
    this.steps = new Counter({ name: 'caat_engine_steps_total', help: 'Engine steps', registers });
  }
}
