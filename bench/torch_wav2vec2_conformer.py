"""PyTorch peer for the speed comparison: torchaudio Conformer + wav2vec 2.0 loss, one AdamW step.

Same model and loss as `configs/wav2vec2_conformer.py:S` (frame stacking 4 + linear to 256, 12
conformer layers, 8 heads, FFN 1024, depthwise kernel 31 - torchaudio takes one kernel size for all
layers; ours uses 31 then 15, i.e. slightly fewer conv FLOPs), span masking, Gumbel product quantizer
(2 x 320), contrastive loss with 100 same-clip distractors, diversity + feature penalty.
Run with a torch environment (not a dependency of the package):

    /path/to/torch-venv/bin/python bench/torch_wav2vec2_conformer.py --batch 4 --frames 1000 --steps 7
"""

import argparse

import torch
import torch.nn.functional as F
import torchaudio
from torch_peer import add_run_arguments, report, setup, time_steps


class Wav2vec2Conformer(torch.nn.Module):
    def __init__(
        self, mel=64, dim=256, layers=12, heads=8, ffn=1024, kernel=31, groups=2, codewords=320, final_dim=256
    ):
        super().__init__()
        self.proj = torch.nn.Linear(4 * mel, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.mask_emb = torch.nn.Parameter(torch.rand(dim))
        self.encoder = torchaudio.models.Conformer(
            input_dim=dim,
            num_heads=heads,
            ffn_dim=ffn,
            num_layers=layers,
            depthwise_conv_kernel_size=kernel,
            dropout=0.1,
        )
        self.groups, self.codewords = groups, codewords
        self.q_logits = torch.nn.Linear(dim, groups * codewords)
        self.codebook = torch.nn.Parameter(torch.randn(groups * codewords, final_dim // groups))
        self.q_proj = torch.nn.Linear(final_dim, final_dim)
        self.final = torch.nn.Linear(dim, final_dim)

    def forward(self, x, lengths, mask, distractors, tau=2.0):
        b, t, m = x.shape
        x = x.reshape(b, t // 4, 4 * m)
        latent = self.norm(self.proj(x))
        features = torch.where(mask[..., None], self.mask_emb, latent)
        context, _ = self.encoder(features, lengths // 4)
        context = self.final(context)
        logits = self.q_logits(latent).reshape(b, t // 4, self.groups, self.codewords)
        soft = F.gumbel_softmax(logits.float(), tau=tau, hard=True)
        q = torch.einsum("btgv,gvd->btgd", soft, self.codebook.reshape(self.groups, self.codewords, -1))
        q = self.q_proj(q.reshape(b, t // 4, -1))
        probs = torch.softmax(logits, -1).mean(dim=(0, 1))
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()
        # positives and 100 same-clip distractors at masked frames
        idx = mask.nonzero(as_tuple=True)
        ctx = context[idx].float()  # [M, d]
        pos = q[idx].float()  # [M, d]
        neg = q[idx[0][:, None], distractors[idx]].float()  # [M, K, d]
        cand = torch.cat([pos[:, None], neg], 1)
        sim = F.cosine_similarity(ctx[:, None], cand, dim=-1) / 0.1
        sim[:, 1:][(neg == pos[:, None]).all(-1)] = float("-inf")
        contrastive = F.cross_entropy(sim, torch.zeros(len(sim), dtype=torch.long, device=sim.device), reduction="sum")
        gv = self.groups * self.codewords
        diversity = (gv - perplexity) / gv * len(sim)
        penalty = latent.float().pow(2).mean()
        return contrastive + 0.1 * diversity + 10.0 * penalty


def span_mask(b, t, prob=0.65, span=10):
    mask = torch.zeros(b, t, dtype=torch.bool)
    n = max(2, int(prob * t / span + torch.rand(1)))
    for i in range(b):
        starts = torch.randperm(t - span)[:n]
        for s in starts:
            mask[i, s : s + span] = True
    return mask


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=1000)
    add_run_arguments(p, steps=7)
    a = p.parse_args()
    dev = setup(a)
    model = Wav2vec2Conformer().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t = a.frames // 4
    x = torch.randn(a.batch, a.frames, 64, device=dev)
    lengths = torch.full((a.batch,), a.frames, device=dev)

    def inputs():
        mask = span_mask(a.batch, t).to(dev)
        distractors = torch.randint(0, t - 1, (a.batch, t, 100))
        distractors = (distractors + (distractors >= torch.arange(t)[None, :, None]).long()).to(dev)
        return mask, distractors

    def step(mask, distractors):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(x, lengths, mask, distractors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        return loss

    times, cpu, _ = time_steps(step, a.steps, dev, inputs=inputs)
    report(a, times, cpu, batch=a.batch, frames=a.frames)


if __name__ == "__main__":
    main()
