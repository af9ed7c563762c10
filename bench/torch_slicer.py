"""PyTorch peer for the speed comparison: one SLICER pre-training step (views + 4 forward passes +
backward + AdamW + EMA + enqueue).

Same structure and shapes as `audiossl_jax/objectives/slicer.py` with `configs/slicer.py` (written from
BYOL-A / LAPE, not imported from them):
* two views per clip by BYOL-A's random-resize-crop: the clip centred on a zero canvas (virtual scale
  1.0 x 1.5), a crop of U(0.6, 1.5) x its size per axis, resized back with bicubic
  `F.interpolate(align_corners=True)`, one clip at a time (as BYOL-A's RandomResizeCrop);
* AudioNTT2020 encoder: 3 x (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), per frame flatten -> Linear ->
  ReLU -> Dropout -> Linear -> ReLU; clip = max + mean over time;
* instance head (Linear), cluster head (Linear -> ReLU -> Linear -> softmax);
* student on both views (with grad), EMA teacher on both views (no grad, training mode);
* loss: InfoNCE(q1 -> k2) + InfoNCE(q2 -> k1) against a queue of teacher keys (MoCo, temperature),
  plus the Contrastive Clustering loss over the 2K assignment columns; clip-grad-norm, AdamW, EMA
  update, the 2B teacher keys enqueued.
Mixup and k-mix are not implemented: compare with configs whose `augment.mixup_ratio` and
`augment.kmix_ratio` are 0 (SLICER `local`); `bench/bench_train_step.py` refuses the others.

    /path/to/torch-venv/bin/python bench/torch_slicer.py --batch 16 --frames 400 --mel 64 --channels 32 \
        --dim 512 --clusters 16 --cluster-hidden 512 --queue 256 --steps 6

Prints one JSON line (median over the steps after the first).
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch_peer import add_run_arguments, report, setup, time_steps


class AudioNTT(nn.Module):
    def __init__(self, mel, channels, blocks, dim, dropout):
        super().__init__()
        layers, cin = [], 1
        for _ in range(blocks):
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
            cin = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * (mel >> blocks), dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.ReLU()
        )

    def forward(self, x):  # [B, T, mel] -> clip [B, dim]
        x = self.features(x[:, None])  # [B, C, T', M']
        b, c, t, m = x.shape
        x = self.fc(x.permute(0, 2, 3, 1).reshape(b, t, m * c))  # [B, T', dim]
        return x.max(1).values + x.mean(1)


class SlicerNet(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.encoder = AudioNTT(a.mel, a.channels, a.blocks, a.dim, a.dropout)
        self.instance = nn.Linear(a.dim, a.instance_dim)
        self.cluster = nn.Sequential(
            nn.Linear(a.dim, a.cluster_hidden), nn.ReLU(), nn.Linear(a.cluster_hidden, a.clusters)
        )

    def forward(self, x):
        clip = self.encoder(x)
        return self.instance(clip), F.softmax(self.cluster(clip), dim=-1)


def random_resize_crop(x, virtual=(1.0, 1.5), freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)):
    """BYOL-A RandomResizeCrop of each clip of x [B, T, mel], one clip at a time."""
    b, t, m = x.shape
    canvas_t, canvas_m = int(t * virtual[1]), int(m * virtual[0])
    canvas = x.new_zeros(b, canvas_t, canvas_m)
    ot, om = (canvas_t - t) // 2, (canvas_m - m) // 2
    canvas[:, ot : ot + t, om : om + m] = x
    out = []
    for i in range(b):
        lt = min(max(int(torch.empty(1).uniform_(*time_scale).item() * t), 1), canvas_t)
        lm = min(max(int(torch.empty(1).uniform_(*freq_scale).item() * m), 1), canvas_m)
        st = int(torch.randint(0, canvas_t - lt + 1, ()).item())
        sm = int(torch.randint(0, canvas_m - lm + 1, ()).item())
        crop = canvas[i : i + 1, None, st : st + lt, sm : sm + lm]
        out.append(F.interpolate(crop, size=(t, m), mode="bicubic", align_corners=True))
    return torch.cat(out)[:, 0]


def infonce(q, k, queue, temperature):
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    logits = torch.cat([(q * k).sum(-1, keepdim=True), q @ queue.T], dim=-1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def cluster_loss(c1, c2, temperature):
    k = c1.shape[1]
    z = F.normalize(torch.cat([c1.T, c2.T]), dim=-1)  # [2K, B]
    sim = z @ z.T / temperature
    n = 2 * k
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    partner = (torch.arange(n, device=sim.device) + k) % n
    return F.cross_entropy(sim, partner)


class SlicerStep:
    def __init__(self, a, device):
        self.a = a
        self.student = SlicerNet(a).to(device)
        self.teacher = SlicerNet(a).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.params = list(self.student.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
        self.queue = F.normalize(torch.randn(a.queue, a.instance_dim, device=device), dim=-1)
        self.ptr = 0

    def step(self, x):
        a = self.a
        self.opt.zero_grad(set_to_none=True)
        v1, v2 = random_resize_crop(x), random_resize_crop(x)
        q1, c1 = self.student(v1)
        q2, c2 = self.student(v2)
        with torch.no_grad():
            k1, _ = self.teacher(v1)
            k2, _ = self.teacher(v2)
        loss = (
            infonce(q1, k2, self.queue, a.temperature)
            + infonce(q2, k1, self.queue, a.temperature)
            + cluster_loss(c1, c2, a.cluster_temperature)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 10.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.teacher.parameters()), self.params, 1 - a.momentum)
            keys = F.normalize(torch.cat([k1, k2]), dim=-1)
            idx = (self.ptr + torch.arange(len(keys))) % a.queue
            self.queue[idx] = keys
            self.ptr = (self.ptr + len(keys)) % a.queue
        return loss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--mel", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--instance-dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--cluster-hidden", type=int, default=512)
    p.add_argument("--queue", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--cluster-temperature", type=float, default=1.0)
    p.add_argument("--momentum", type=float, default=0.99)
    add_run_arguments(p, steps=6, bf16_help="not supported by this peer (error)")
    a = p.parse_args()
    if a.bf16:
        raise SystemExit("torch_slicer.py: --bf16 is not implemented")
    dev = setup(a)
    slicer = SlicerStep(a, dev)
    x = torch.randn(a.batch, a.frames, a.mel, device=dev)
    times, cpu, loss = time_steps(lambda: slicer.step(x), a.steps, dev)
    conv_macs = 0
    t, m, cin = a.frames, a.mel, 1
    for _ in range(a.blocks):  # 3x3 convs at each block's input resolution
        conv_macs += t * m * 9 * cin * a.channels
        t, m, cin = t // 2, m // 2, a.channels
    fc_macs = t * (m * a.channels * a.dim + a.dim * a.dim)
    forward_gflop = 2 * a.batch * (conv_macs + fc_macs) / 1e9
    report(
        a,
        times,
        cpu,
        batch=a.batch,
        frames=a.frames,
        mel=a.mel,
        channels=a.channels,
        dim=a.dim,
        clusters=a.clusters,
        queue=a.queue,
        params=sum(t.numel() for t in slicer.params),
        loss=float(loss.detach()),
        # 4 forward passes (2 student, 2 teacher) + the students' backward (2x their forward)
        gflop_per_step_estimate=forward_gflop * (4 + 2 * 2),
    )


if __name__ == "__main__":
    main()
