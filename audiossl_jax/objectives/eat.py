"""EAT (Chen et al., 2024): bootstrap pre-training of an audio ViT from its EMA teacher.

Per step, for a batch of B clips:
1. the EMA teacher (in `aux`, never differentiated) encodes each full clip once; its targets are the
   feed-forward outputs of the top K blocks, each instance-normed over the patch tokens (per channel),
   averaged over the K layers, then layer-normed without affine (EAT's `instance_norm_target_layer`,
   `layer_norm_targets`);
2. every clip is cloned C = `clone_batch` times, each clone with its own inverse block mask
   (`inverse_block_mask`): the student encodes only the ~20% visible patches (+ CLS);
3. the CNN decoder gets the student's patch tokens laid back on the [time, mel] patch grid, masked
   positions filled with N(0, mask_noise_std) noise (EAT's `mask_noise_std` = 0.01), and predicts the
   targets everywhere;
4. Utterance-Frame Objective: frame loss = mean over masked patches of ||pred - target||^2 / sqrt(D);
   utterance loss = mean over clones of ||student CLS - teacher's mean target over patches||^2 / sqrt(D)
   (no projection on the CLS, as in EAT's code); loss = w_f * frame + w_u * utterance.

Loss weights vs the reference: EAT's criterion sums the CLS loss over a GPU's B_gpu*C clones and
normalises the sum of both losses by the number of masked patches, so with `cls_loss: 1` the utterance
term is weighted B_gpu*C (12*16 = 192) relative to the per-patch frame term. Here both terms are
means, and configs set `utterance_loss_weight` = cls_loss * B_gpu * C to reproduce the reference.

Padding (`valid`): patches entirely in padding are left out of the teacher's instance-norm statistics,
the utterance target's mean, the frame loss and the variance metrics; attention ignores them.
The teacher encodes every clip once and its targets are shared by the C clones (broadcast, not copied).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from audiossl_jax.models.cnn_decoder import CNNDecoder2D
from audiossl_jax.models.factory import build_encoder
from audiossl_jax.models.layers import masked_mean
from audiossl_jax.models.vit import AudioViT
from audiossl_jax.objectives import ema
from audiossl_jax.objectives.inverse_block_mask import inverse_block_mask
from audiossl_jax.train.precision import compute_dtype, matmul_dtype

TARGET_SITES = ("ffn", "block")  # per-layer target: feed-forward output (EAT) or block output
EMBED_CLIP = ("cls", "mean")
UTTERANCE_TARGETS = ("normed", "raw")  # mean over patches of the frame targets | of the raw layer average


# ---------------------------------------------------------------- pure pieces (tested vs numpy)


def teacher_targets(
    layers: jax.Array, patch_valid: jax.Array, *, instance_norm: bool = True, layer_norm: bool = True, eps: float = 1e-5
) -> jax.Array:
    """Averages teacher layer outputs [K, B, N, D] into targets [B, N, D] (float32).

    instance_norm: each layer normalised per channel over the valid patch tokens (torch
    `F.instance_norm`: biased variance, eps 1e-5); layer_norm: the average normalised over channels
    without affine (`F.layer_norm`).
    """
    y = layers.astype(jnp.float32)
    if instance_norm:  # weighted sums over tokens as einsums: ~2x faster on XLA:CPU than reductions
        w = patch_valid.astype(jnp.float32)
        count = jnp.maximum(w.sum(-1), 1.0)[None, :, None, None]
        mean = jnp.einsum("bn,kbnd->kbd", w, y)[:, :, None] / count
        y = y - mean
        var = jnp.einsum("bn,kbnd->kbd", w, jnp.square(y))[:, :, None] / count
        y = y * jax.lax.rsqrt(var + eps)
    y = y.mean(axis=0)
    return _normalize_channels(y, eps) if layer_norm else y


def _normalize_channels(y: jax.Array, eps: float) -> jax.Array:
    """`F.layer_norm` over the last axis without affine."""
    mean = y.mean(axis=-1, keepdims=True)
    var = jnp.square(y - mean).mean(axis=-1, keepdims=True)
    return (y - mean) * jax.lax.rsqrt(var + eps)


def raw_clip_targets(layers: jax.Array, patch_valid: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Clip targets [B, D] that keep the clip's content: the teacher layers [K, B, N, D] averaged over
    K and the valid patches, *without* the per-layer instance norm (which zeroes every channel's mean
    over the patches, so the mean of the frame targets is ~0 for every clip), then layer-normed over
    channels without affine."""
    return _normalize_channels(masked_mean(layers.astype(jnp.float32).mean(axis=0), patch_valid), eps)


def ufo_losses(
    pred: jax.Array,
    cls: jax.Array,
    targets: jax.Array,
    masked: jax.Array,
    patch_valid: jax.Array,
    scale: float,
    clip_target: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Utterance-Frame Objective terms (frame_loss, utterance_loss).

    pred [B, C, N, D] decoder outputs of the C clones; cls [B, C, D] student CLS outputs; targets
    [B, N, D] shared by the clones; masked [B, C, N] True where the clone's patch was masked;
    patch_valid [B, N]; scale multiplies the squared error summed over channels (EAT: 1/sqrt(D));
    clip_target [B, D] (None: EAT's, the mean of `targets` over the valid patches).
    """
    w = (masked & patch_valid[:, None, :]).astype(jnp.float32)
    per_patch = jnp.square(pred.astype(jnp.float32) - targets[:, None]).sum(-1) * scale
    frame = (per_patch * w).sum() / jnp.maximum(w.sum(), 1.0)
    if clip_target is None:
        pv = patch_valid.astype(jnp.float32)
        clip_target = jnp.einsum("bn,bnd->bd", pv, targets) / jnp.maximum(pv.sum(1), 1.0)[:, None]
    utterance = (jnp.square(cls.astype(jnp.float32) - clip_target[:, None]).sum(-1) * scale).mean()
    return frame, utterance


def weighted_channel_std(x: jax.Array, weights: jax.Array) -> jax.Array:
    """EAT's `compute_var` on weighted rows: mean over channels of sqrt(unbiased var + 1e-6).

    x [..., D], weights [...] (row multiplicities, e.g. how many clones masked a patch).
    """
    x = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    w = weights.astype(jnp.float32).reshape(-1)
    n = w.sum()
    mean = jnp.einsum("r,rd->d", w, x) / jnp.maximum(n, 1.0)
    var = jnp.einsum("r,rd->d", w, jnp.square(x - mean)) / jnp.maximum(n - 1.0, 1.0)
    return jnp.sqrt(var + 1e-6).mean()


def decoder_input(
    patches: jax.Array, visible: jax.Array, num_patches: int, rng: jax.Array, noise_std: float
) -> jax.Array:
    """Lays encoded visible tokens [R, K, D] back at their patch indices [R, K] of a [R, N, D] sequence
    whose masked positions hold N(0, noise_std) noise (zeros if noise_std == 0)."""
    r, _, d = patches.shape
    if noise_std > 0:
        base = noise_std * jax.random.normal(rng, (r, num_patches, d), patches.dtype)
    else:
        base = jnp.zeros((r, num_patches, d), patches.dtype)
    return base.at[jnp.arange(r)[:, None], visible].set(patches)


# ---------------------------------------------------------------- the objective


@dataclasses.dataclass(frozen=True)
class EAT:
    """EAT as an `Objective` (see audiossl_jax/objectives/protocol.py). Built by `build(config)`."""

    encoder: AudioViT
    decoder: CNNDecoder2D
    clone_batch: int = 16
    mask_prob: float = 0.8
    mask_prob_adjust: float = 0.07
    mask_block: int = 5
    average_top_k_layers: int = 12
    target_site: str = "ffn"
    instance_norm_target_layer: bool = True
    layer_norm_targets: bool = True
    frame_loss_weight: float = 1.0
    utterance_loss_weight: float = 1.0
    loss_scale: float | None = None  # None: 1/sqrt(D)
    mask_noise_std: float = 0.01
    ema_start: float = 0.9998
    ema_end: float = 0.99999
    ema_anneal_steps: int = 100_000
    embed_clip: str = "cls"
    utterance_target: str = "normed"
    name: str = "eat"
    progress_keys: tuple[str, ...] = ("frame_loss", "utterance_loss")

    def init(self, rng, batch):
        enc_rng, dec_rng = jax.random.split(rng)
        features, valid = batch["features"][:1], batch["valid"][:1]
        encoder = self.encoder.init({"params": enc_rng}, features, valid)["params"]
        h, w = self.encoder.grid(*features.shape[1:])
        decoder = self.decoder.init({"params": dec_rng}, jnp.zeros((1, h, w, self.encoder.dim)))["params"]
        teacher = jax.tree.map(jnp.copy, encoder)  # EMA teacher starts as a copy of the student encoder
        return {"params": {"encoder": encoder, "decoder": decoder}, "aux": {"teacher": teacher}}

    def targets(self, teacher, features, valid):
        """Teacher frame targets [B, N, D], patch validity [B, N] and clip targets [B, D] (None: the
        mean of the frame targets); no gradient."""
        out = self.encoder.apply({"params": jax.lax.stop_gradient(teacher)}, features, valid, return_layers=True)
        layers = out["layer_ffn" if self.target_site == "ffn" else "layer_out"]
        top = layers[-self.average_top_k_layers :, :, 1:]
        y = teacher_targets(
            top, out["valid"], instance_norm=self.instance_norm_target_layer, layer_norm=self.layer_norm_targets
        )
        clip = None
        if self.utterance_target == "raw":
            clip = jax.lax.stop_gradient(raw_clip_targets(top, out["valid"]))
        return jax.lax.stop_gradient(y), out["valid"], clip

    def loss(self, params, aux, batch, rng, step):
        features, valid = batch["features"], batch["valid"]
        b, t, m = features.shape
        h, w = self.encoder.grid(t, m)
        n, c, d = h * w, self.clone_batch, self.encoder.dim
        mask_rng, noise_rng, drop_rng = jax.random.split(rng, 3)

        targets, patch_valid, clip_target = self.targets(aux["teacher"], features, valid)
        visible, masked = inverse_block_mask(
            mask_rng,
            b * c,
            (h, w),
            mask_prob=self.mask_prob,
            mask_prob_adjust=self.mask_prob_adjust,
            block=self.mask_block,
        )
        student = self.encoder.apply(
            {"params": params["encoder"]},
            features,
            valid,
            visible.reshape(b, c, -1),
            train=True,
            rngs={"dropout": drop_rng},
        )
        grid_tokens = decoder_input(student["frames"], visible, n, noise_rng, self.mask_noise_std)
        pred = self.decoder.apply({"params": params["decoder"]}, grid_tokens.reshape(b * c, h, w, d))
        pred = pred.reshape(b, c, n, -1)
        masked = masked.reshape(b, c, n)
        scale = self.loss_scale if self.loss_scale is not None else 1.0 / math.sqrt(targets.shape[-1])
        frame, utterance = ufo_losses(
            pred, student["cls"].reshape(b, c, -1), targets, masked, patch_valid, scale, clip_target
        )
        loss = self.frame_loss_weight * frame + self.utterance_loss_weight * utterance
        weights = masked & patch_valid[:, None, :]
        metrics = {
            "frame_loss": frame,
            "utterance_loss": utterance,
            "ema_decay": ema.ema_decay(step, self.ema_start, self.ema_end, self.ema_anneal_steps),
            "target_var": weighted_channel_std(targets, weights.sum(1)),
            "pred_var": weighted_channel_std(jax.lax.stop_gradient(pred), weights),
        }
        return loss, (metrics, aux)

    def update_aux(self, params, aux, carry, step):
        """EMA step after optimizer update number step + 1 (fairseq's `set_num_updates` order)."""
        decay = ema.ema_decay(step + 1, self.ema_start, self.ema_end, self.ema_anneal_steps)
        return {**aux, "teacher": ema.ema_update(aux["teacher"], params["encoder"], decay)}

    def embed(self, params, aux, features, valid):
        """Student encoder on the full input. frames [B, T/16, mel/16 * D]: the patch tokens of each
        time step concatenated over the mel patches (as M2D / ATST-Frame read out patch ViTs: a mean
        over the mel patches would fold the frequency position away); clip: the CLS output
        (`embed_clip='cls'`, what EAT fine-tunes) or the mean of the valid frames ('mean');
        valid [B, T/16]."""
        out = self.encoder.apply({"params": params["encoder"]}, features, valid)
        frames, frames_valid = self._time_frames(out, features)
        clip = out["clip"] if self.embed_clip == "cls" else masked_mean(frames, frames_valid)
        return {"frames": frames, "valid": frames_valid, "clip": clip}

    def _time_frames(self, out, features):
        """The ViT's time-major patch tokens [B, N, D] as frames [B, T/16, mel/16 * D] (each time
        step's tokens concatenated over the mel patches) and their validity [B, T/16]."""
        b = features.shape[0]
        h, w = self.encoder.grid(*features.shape[1:])
        return out["frames"].reshape(b, h, -1), out["valid"].reshape(b, h, w)[..., 0]

    # -- fine-tuning (objectives/finetune.py)
    def encoder_variables(self, params, aux):
        """The variables of the encoder that fine-tuning starts from: the student's params."""
        return {"params": params["encoder"]}

    def encode(self, variables, features, valid, *, train=False, rng=None):
        """(student outputs, no state): frames [B, T/16, mel/16 * D] = the patch tokens of each time
        step concatenated over the mel patches (as `embed` reads them out, so a mean pooling keeps the
        frequency position), valid [B, T/16], clip = cls: the CLS output [B, D], patches [B, N, D]."""
        out = self.encoder.apply(variables, features, valid, train=train, rngs={"dropout": rng} if train else {})
        frames, frames_valid = self._time_frames(out, features)
        return {
            "frames": frames,
            "valid": frames_valid,
            "clip": out["clip"],
            "cls": out["cls"],
            "patches": out["frames"],
        }, {}


def build(config) -> EAT:
    """EAT objective from `config.model` (encoder + decoder) and `config.objective` (see configs/eat.py)."""
    mc, oc = config.model, config.objective
    dtype = compute_dtype(config)
    if oc.target_site not in TARGET_SITES:
        raise ValueError(f"config.objective.target_site={oc.target_site!r} is not one of {TARGET_SITES}")
    if oc.embed_clip not in EMBED_CLIP:
        raise ValueError(f"config.objective.embed_clip={oc.embed_clip!r} is not one of {EMBED_CLIP}")
    if oc.utterance_target not in UTTERANCE_TARGETS:
        raise ValueError(f"config.objective.utterance_target={oc.utterance_target!r} is not one of {UTTERANCE_TARGETS}")
    matmuls = matmul_dtype(config)
    encoder = build_encoder(mc, dtype, default="vit", choices=("vit",), matmul_dtype=matmuls)
    if not 1 <= oc.average_top_k_layers <= encoder.depth:
        raise ValueError(
            f"config.objective.average_top_k_layers={oc.average_top_k_layers} must be in "
            f"[1, config.model.depth={encoder.depth}]"
        )
    decoder = CNNDecoder2D(
        dim=mc.decoder_dim,
        out_dim=encoder.dim,
        num_layers=mc.decoder_layers,
        kernel_size=mc.decoder_kernel,
        groups=mc.decoder_groups,
        conv_impl=mc.decoder_conv_impl,
        dtype=dtype,
        matmul_dtype=matmuls,
    )
    return EAT(
        encoder=encoder,
        decoder=decoder,
        clone_batch=oc.clone_batch,
        mask_prob=oc.mask_prob,
        mask_prob_adjust=oc.mask_prob_adjust,
        mask_block=oc.mask_block,
        average_top_k_layers=oc.average_top_k_layers,
        target_site=oc.target_site,
        instance_norm_target_layer=oc.instance_norm_target_layer,
        layer_norm_targets=oc.layer_norm_targets,
        frame_loss_weight=oc.frame_loss_weight,
        utterance_loss_weight=oc.utterance_loss_weight,
        loss_scale=oc.loss_scale,
        mask_noise_std=oc.mask_noise_std,
        ema_start=oc.ema_decay,
        ema_end=oc.ema_end_decay,
        ema_anneal_steps=oc.ema_anneal_steps,
        embed_clip=oc.embed_clip,
        utterance_target=oc.utterance_target,
    )
