/** Cache slots: which sequence holds each of the KV cache's `slots` rows (llama.cpp's slots). */
export class SlotManager {
  private readonly free: number[];
  constructor(readonly slots: number) {
    this.free = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }
  get available(): number {
    return this.free.length;
  }
  get used(): number {
    return this.slots - this.free.length;
  }
  acquire(): number | null {
    return this.free.pop() ?? null;
  }
  release(slot: number): void {
    if (slot < 0 || slot >= this.slots || this.free.includes(slot)) throw new Error(`slot ${slot} released twice`);
    this.free.push(slot);
  }
}
