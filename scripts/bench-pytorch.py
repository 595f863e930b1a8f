#!/usr/bin/env python3
"""The training step of `caat bench train` written in PyTorch, for a same-machine comparison.

Same model (Llama: RMSNorm, RoPE, causal attention, SwiGLU, untied LM head), same shapes, AdamW step,
one thread by default. Prints one JSON line per precision: median ms/step over the timed steps.

  python3 scripts/bench-pytorch.py --config small --steps 8 --precision fp32,bf16
Debian: apt-get install python3-torch (PyTorch 1.13).
"""
import argparse, json, math, platform, statistics, time
import torch
import torch.nn.functional as F

CONFIGS = {
    'tiny': dict(vocab=8192, hidden=256, layers=4, heads=8, kv=8, ffn=688, seq=256, batch=8),
    'small': dict(vocab=8192, hidden=512, layers=8, heads=8, kv=8, ffn=1376, seq=256, batch=8),
}

class RMSNorm(torch.nn.Module):
    def __init__(self, h, eps=1e-5):
        super().__init__(); self.w = torch.nn.Parameter(torch.ones(h)); self.eps = eps
    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.w

def rope(x, cos, sin):
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, nh, kv, f = c['hidden'], c['heads'], c['kv'], c['ffn']
        self.nh, self.kv, self.hd = nh, kv, h // nh
        self.n1, self.n2 = RMSNorm(h), RMSNorm(h)
        self.q = torch.nn.Linear(h, nh * self.hd, bias=False)
        self.k = torch.nn.Linear(h, kv * self.hd, bias=False)
        self.v = torch.nn.Linear(h, kv * self.hd, bias=False)
        self.o = torch.nn.Linear(nh * self.hd, h, bias=False)
        self.g = torch.nn.Linear(h, f, bias=False)
        self.u = torch.nn.Linear(h, f, bias=False)
        self.d = torch.nn.Linear(f, h, bias=False)
    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        y = self.n1(x)
        q = self.q(y).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k(y).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v(y).view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv != self.nh:
            k = k.repeat_interleave(self.nh // self.kv, 1); v = v.repeat_interleave(self.nh // self.kv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float('-inf')).float().softmax(-1).to(q.dtype)
        a = (att @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o(a)
        y = self.n2(x)
        return x + self.d(F.silu(self.g(y)) * self.u(y))

class Llama(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.emb = torch.nn.Embedding(c['vocab'], c['hidden'])
        self.blocks = torch.nn.ModuleList([Block(c) for _ in range(c['layers'])])
        self.norm = RMSNorm(c['hidden'])
        self.head = torch.nn.Linear(c['hidden'], c['vocab'], bias=False)
        hd = c['hidden'] // c['heads']
        inv = 1.0 / (10000 ** (torch.arange(0, hd // 2).float() * 2 / hd))
        ang = torch.outer(torch.arange(c['seq']).float(), inv)
        self.register_buffer('cos', ang.cos()); self.register_buffer('sin', ang.sin())
    def forward(self, tok):
        x = self.emb(tok)
        for b in self.blocks: x = b(x, self.cos, self.sin)
        return self.head(self.norm(x))

def cpu():
    model, isa = platform.machine(), []
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): model = line.split(':', 1)[1].strip()
            if line.startswith('flags'):
                fl = line.split(':', 1)[1].split()
                isa = [f for f in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in fl]
                break
    except OSError:
        pass
    return model, isa

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--config', default='small', choices=list(CONFIGS))
    ap.add_argument('--steps', type=int, default=8)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--precision', default='fp32,bf16')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    c = CONFIGS[a.config]
    for prec in a.precision.split(','):
        torch.manual_seed(0)
        m = Llama(c)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
        g = torch.Generator().manual_seed(1)
        tok = torch.randint(0, c['vocab'], (c['batch'], c['seq'] + 1), generator=g)
        times = []
        for i in range(a.warmup + a.steps):
            t = time.perf_counter()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=(prec == 'bf16')):
                logits = m(tok[:, :-1])
            loss = F.cross_entropy(logits.float().view(-1, c['vocab']), tok[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            if i >= a.warmup: times.append((time.perf_counter() - t) * 1000)
        print(json.dumps({'framework': f'pytorch {torch.__version__}', 'config': a.config, 'precision': prec, 'threads': a.threads,
                          'ms_per_step': statistics.median(times), 'min_ms': min(times), 'steps': a.steps,
                          'loss': float(loss), 'cpu': cpu()[0], 'isa': cpu()[1]}))

if __name__ == '__main__':
    main()
