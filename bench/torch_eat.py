"""PyTorch peer for the speed comparison: one EAT pre-training step (forward + backward + AdamW + EMA).

Same structure and shapes as `audiossl_jax/objectives/eat.py` with `configs/eat.py` (written from the
EAT / data2vec 2.0 reference, not imported from it):
* audio ViT: 16x16 patches [time, mel] -> one linear layer (= stride-16 conv) + fixed 2-D sin-cos
  positions, CLS token, input LayerNorm, post-LN blocks (`x = LN1(x + attn(x)); x = LN2(x + mlp(x))`,
  LN eps 1e-6, exact GELU, fused qkv, `F.scaled_dot_product_attention`);
* EMA teacher (no grad) on the full clip once; targets = mean over the top K blocks of the
  instance-normed FFN outputs (patch tokens), then layer norm; broadcast to the clones;
* student: `clones` copies of each clip, each encoding only K = int(N * (1 - mask_prob)) visible
  patches (gathered after the patch embedding; random permutations - only the counts matter here);
* CNN decoder: visible tokens scattered back on the [time, mel] patch grid, masked positions
  N(0, 0.01) noise; `layers` x (Conv2d groups=16 kernel 3 'same' -> LayerNorm without affine -> GELU
  -> + input), final linear;
* loss: frame MSE over masked patches / sqrt(D) + weight * utterance (CLS vs mean target) loss;
  grad-norm clip 4, AdamW (b 0.9/0.95, wd 0.05), EMA teacher update.
Run with a torch environment (not a dependency of the package):

    /path/to/torch-venv/bin/python bench/torch_eat.py --batch 1 --frames 1024 --mel 128 --dim 384 \
        --depth 4 --heads 6 --clones 16 --decoder-dim 384 --decoder-layers 6 --top-k 4 --steps 7

Prints one JSON line (median over the steps after the first); `--parts` adds per-part forward +
backward timings (teacher, student, decoder) measured separately after the full steps.
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_peer import add_run_arguments, report, setup, synchronizer, time_steps


def sincos_2d(dim, rows, cols):
    """Same as audiossl_jax.models.posemb.sincos_2d: first half encodes the column, second the row."""

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        a = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(a), np.cos(a)], 1)

    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return torch.from_numpy(np.concatenate([one(dim // 2, col), one(dim // 2, row)], 1).astype(np.float32))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0, eps=1e-6):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = self.norm1(x + self.proj(a))
        ffn = self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU
        return self.norm2(x + ffn), ffn


class AudioViT(nn.Module):
    def __init__(self, dim, depth, heads, grid, patch=16, eps=1e-6):
        super().__init__()
        self.patch, self.grid = patch, grid
        self.patch_embed = nn.Linear(patch * patch, dim)
        self.register_buffer("pos", sincos_2d(dim, *grid), persistent=False)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.input_norm = nn.LayerNorm(dim, eps=eps)
        self.blocks = nn.ModuleList(Block(dim, heads, eps=eps) for _ in range(depth))

    def patchify(self, x):
        b, t, m = x.shape
        h, w, p = t // self.patch, m // self.patch, self.patch
        return x.reshape(b, h, p, w, p).permute(0, 1, 3, 2, 4).reshape(b, h * w, p * p)

    def forward(self, features, visible=None):
        """visible [B, C, K] patch indices -> batch B*C of K+1 tokens; None -> full input."""
        x = self.patch_embed(self.patchify(features)) + self.pos
        if visible is not None:
            b, c, k = visible.shape
            x = x[torch.arange(b, device=x.device)[:, None, None], visible].reshape(b * c, k, -1)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        x = self.input_norm(x)
        ffns = []
        for blk in self.blocks:
            x, f = blk(x)
            ffns.append(f)
        return x, ffns


class CNNDecoder(nn.Module):
    def __init__(self, in_dim, dim, out_dim, layers, kernel=3, groups=16):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups) for i in range(layers)
        )
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x):  # [R, C, H, W]
        for conv in self.convs:
            y = conv(x)
            y = F.layer_norm(y.transpose(1, 3), (y.shape[1],)).transpose(1, 3)  # LN over channels, no affine
            y = F.gelu(y)
            x = y + x if y.shape[1] == x.shape[1] else y
        return self.proj(x.transpose(1, 3).transpose(1, 2))  # [R, H, W, out]


def teacher_targets(ffns, eps=1e-5):
    ys = [F.instance_norm(f[:, 1:].float().transpose(1, 2), eps=eps).transpose(1, 2) for f in ffns]
    y = sum(ys) / len(ys)
    return F.layer_norm(y, y.shape[-1:], eps=eps)


def random_visible(b, c, n, k, device):
    """[B, C, K] sorted visible indices and [B, C, N] masked flags (random permutations)."""
    vis = torch.stack([torch.randperm(n)[:k].sort().values for _ in range(b * c)]).reshape(b, c, k)
    masked = torch.ones(b, c, n, dtype=torch.bool)
    masked.scatter_(2, vis, False)
    return vis.to(device), masked.to(device)


class EATStep:
    def __init__(self, a, device):
        self.a, self.dev = a, device
        self.h, self.w = a.frames // a.patch, a.mel // a.patch
        self.n = self.h * self.w
        self.k = int(self.n * (1.0 - a.mask_prob))
        self.student = AudioViT(a.dim, a.depth, a.heads, (self.h, self.w), a.patch).to(device)
        self.teacher = AudioViT(a.dim, a.depth, a.heads, (self.h, self.w), a.patch).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.decoder = CNNDecoder(a.dim, a.decoder_dim, a.dim, a.decoder_layers, a.decoder_kernel, a.decoder_groups).to(
            device
        )
        self.params = list(self.student.parameters()) + list(self.decoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=5e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)

    def targets(self, x):
        with torch.no_grad():
            _, ffns = self.teacher(x)
            return teacher_targets(ffns[-self.a.top_k :])  # [B, N, D]

    def student_out(self, x, visible):
        out, _ = self.student(x, visible)
        return out[:, 0], out[:, 1:]  # cls [BC, D], patches [BC, K, D]

    def decode(self, patches, visible):
        r, _, d = patches.shape
        grid = 0.01 * torch.randn(r, self.n, d, device=patches.device, dtype=patches.dtype)
        grid = grid.scatter(1, visible.reshape(r, -1, 1).expand(-1, -1, d), patches)
        grid = grid.reshape(r, self.h, self.w, d).permute(0, 3, 1, 2)
        return self.decoder(grid).reshape(r, self.n, -1)

    def loss(self, x, visible, masked):
        b, c = visible.shape[:2]
        targets = self.targets(x)
        cls, patches = self.student_out(x, visible)
        pred = self.decode(patches, visible).reshape(b, c, self.n, -1)
        scale = 1.0 / math.sqrt(targets.shape[-1])
        w = masked.float()
        frame = ((pred.float() - targets[:, None]).square().sum(-1) * scale * w).sum() / w.sum().clamp(min=1)
        utter = ((cls.float().reshape(b, c, -1) - targets.mean(1)[:, None]).square().sum(-1) * scale).mean()
        return frame + self.a.utterance_weight * utter

    def step(self, x, visible, masked, ema_decay=0.9998):
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.a.bf16):
            loss = self.loss(x, visible, masked)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 4.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.teacher.parameters()), list(self.student.parameters()), 1 - ema_decay)
        return loss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mel", type=int, default=128)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--clones", type=int, default=16)
    p.add_argument("--mask-prob", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0, help="teacher layers averaged (0: depth)")
    p.add_argument("--decoder-dim", type=int, default=0, help="0: dim")
    p.add_argument("--decoder-layers", type=int, default=6)
    p.add_argument("--decoder-kernel", type=int, default=3)
    p.add_argument("--decoder-groups", type=int, default=16)
    p.add_argument("--utterance-weight", type=float, default=192.0)
    add_run_arguments(p, steps=7)
    p.add_argument("--parts", action="store_true", help="also time teacher / student / decoder separately")
    a = p.parse_args()
    a.top_k = a.top_k or a.depth
    a.decoder_dim = a.decoder_dim or a.dim
    dev = setup(a)
    eat = EATStep(a, dev)
    x = torch.randn(a.batch, a.frames, a.mel, device=dev)
    times, cpu, loss = time_steps(
        lambda visible, masked: eat.step(x, visible, masked),
        a.steps,
        dev,
        inputs=lambda: random_visible(a.batch, a.clones, eat.n, eat.k, dev),
    )
    fields = {
        "batch": a.batch,
        "frames": a.frames,
        "mel": a.mel,
        "dim": a.dim,
        "depth": a.depth,
        "heads": a.heads,
        "clones": a.clones,
        "patches": eat.n,
        "visible_patches": eat.k,
        "masked_patches": eat.n - eat.k,
        "decoder_dim": a.decoder_dim,
        "decoder_layers": a.decoder_layers,
        "top_k": a.top_k,
        "params": sum(t.numel() for t in eat.params),
        "loss": float(loss.detach()),
        "gflop_per_step_estimate": matmul_gflop(a, eat.n, eat.k),
    }
    if a.parts:
        fields["parts_median_seconds"] = time_parts(eat, x, a, synchronizer(dev))
    report(a, times, cpu, **fields)


def matmul_gflop(a, n, k):
    """Rough GFLOP of the matmuls + convs of one step: forward x3 for the trained parts (student,
    decoder), x1 for the teacher; elementwise ops, softmax, norms and the optimizer left out."""
    d, dd = a.dim, a.decoder_dim

    def encoder(rows, length):
        return rows * a.depth * (2 * length * 12 * d * d + 4 * length * length * d)

    embed = 2 * a.batch * n * a.patch**2 * d
    r = a.batch * a.clones
    decoder = (
        sum(
            2 * r * n * dd * ((d if i == 0 else dd) // a.decoder_groups) * a.decoder_kernel**2
            for i in range(a.decoder_layers)
        )
        + 2 * r * n * dd * d
    )
    train = embed + encoder(r, k + 1) + decoder
    return (3 * train + embed + encoder(a.batch, n + 1)) / 1e9


def time_parts(eat, x, a, sync, reps=4):
    """Forward (+ backward where trained) of each part on its own, medians of `reps` after a warm-up."""
    visible, masked = random_visible(a.batch, a.clones, eat.n, eat.k, x.device)
    cls, patches = eat.student_out(x, visible)
    dec_in = patches.detach().requires_grad_(True)

    def teacher():
        eat.targets(x)

    def student():
        c, pt = eat.student_out(x, visible)
        (c.square().mean() + pt.square().mean()).backward()

    def decoder():
        eat.decode(dec_in, visible).square().mean().backward()

    out = {}
    for name, fn in (("teacher", teacher), ("student", student), ("decoder", decoder)):
        ts = []
        for _ in range(reps + 1):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts[1:])
    return out


if __name__ == "__main__":
    main()
