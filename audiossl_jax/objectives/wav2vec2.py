"""wav2vec 2.0 pre-training of a Conformer (Baevski et al. 2020; Srivastava et al., ICASSP 2022).

Per batch: span-mask the stacked frames (objectives/span_masking.py); the Conformer encodes the
masked latent; `final_projection` maps its frames to the context c; the Gumbel product quantizer
maps the unmasked latent to the targets q. At every masked valid frame t the loss is a
(K + 1)-way cross-entropy between cos(c_t, q_t) / tau (the positive, index 0) and cos(c_t, q_j) / tau
for K distractors j drawn uniformly, with replacement, from the other masked frames of the same clip
(fairseq's `sample_negatives`), plus `cross_sample_negatives` drawn from the other clips of the
batch; a distractor equal to the positive gets -inf. Total:
  contrastive + diversity_weight * (G V - perplexity) / (G V) + penalty_weight * mean(latent^2).

Efficiency: instead of gathering K distractor vectors ([B, T, K, F]: 100 MB at B=4, T=250, K=100,
F=256), the loss computes the [B, T, T] cosine-similarity matrix with one batched matmul and gathers
K scalars per frame from it ([B, T, K]). Distractors equal to the positive are detected by comparing
their integer codes (equal codes <=> equal quantized vectors) rather than the vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.models.conformer import Conformer, ConformerBlock, stacked_valid
from audiossl_jax.models.factory import build_encoder
from audiossl_jax.models.layers import Dropout, masked_mean
from audiossl_jax.models.quantizer import GumbelQuantizer, gumbel_temperature
from audiossl_jax.objectives.span_masking import compute_span_mask
from audiossl_jax.train.precision import compute_dtype, matmul_dtype

COSINE_EPS = 1e-8  # as torch.cosine_similarity
NEGATIVES_FROM = ("masked", "valid")
QUANTIZER_INPUTS = ("latent", "input")


# ----------------------------------------------------------------------------- model


class Wav2Vec2Model(nn.Module):
    """Conformer encoder + context projection + quantizer of the unmasked latent."""

    encoder: Conformer
    quantizer: GumbelQuantizer
    final_dim: int  # width of context and targets
    feature_dropout_rate: float = 0.1  # on the quantizer's input (fairseq's dropout_features)
    # What the quantizer codes: the learned "latent" (wav2vec 2.0) or the stacked "input" frames
    # (with a frozen assignment: BEST-RQ's fixed random-projection targets).
    quantizer_input: str = "latent"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.final_projection = nn.Dense(
            self.final_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        )
        self.feature_dropout = Dropout(self.feature_dropout_rate)

    def __call__(self, features, valid, span_mask, temperature, deterministic: bool):
        encoded = self.encoder(features, valid, span_mask, train=not deterministic)
        context = self.final_projection(encoded["frames"])
        if self.quantizer_input == "input":
            source = jax.lax.stop_gradient(encoded["stacked"])
        else:
            source = self.feature_dropout(encoded["latent"], deterministic=deterministic)
        targets = self.quantizer(source, span_mask & encoded["valid"], temperature, deterministic)
        return context, targets, encoded

    def embed(self, features, valid):
        return self.encoder(features, valid)


# ----------------------------------------------------------------------------- loss pieces


def _candidate_order(candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(candidates per clip [B] int32, frame indices [B, T] with the candidate frames first, in time
    order)."""
    return (jnp.sum(candidates, axis=1).astype(jnp.int32), jnp.argsort(~candidates, axis=1, stable=True))


def sample_negative_indices(rng: jax.Array, candidates: jax.Array, num_negatives: int) -> jax.Array:
    """For every frame, `num_negatives` frame indices drawn uniformly with replacement from the OTHER
    candidate frames of the same clip.

    candidates [B, T] bool -> int32 [B, T, K]. As fairseq: draw r in [0, n - 1) among the n candidates
    and skip the frame's own rank (r >= own rank -> r + 1). Rows of non-candidate frames and clips with
    n < 2 hold arbitrary indices: mask them with `has_negatives`.
    """
    batch, length = candidates.shape
    n, order = _candidate_order(candidates)
    own_rank = jnp.cumsum(candidates, axis=1) - 1
    u = jax.random.uniform(rng, (batch, length, num_negatives))
    high = jnp.maximum(n - 1, 1)[:, None, None]
    draw = jnp.minimum(jnp.floor(u * high).astype(jnp.int32), high - 1)
    draw = jnp.where(draw >= own_rank[..., None], draw + 1, draw)
    draw = jnp.minimum(draw, length - 1)
    return jnp.take_along_axis(order, draw.reshape(batch, -1), axis=1).reshape(batch, length, -1)


def sample_cross_negative_indices(
    rng: jax.Array, candidates: jax.Array, num_negatives: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For every frame, `num_negatives` distractors from OTHER clips of the batch (fairseq's
    `cross_sample_negatives`, which draws from the whole batch; here the frame's own clip is skipped,
    so these distractors always differ from it in clip-level content): a clip drawn uniformly among
    the B - 1 others, then a frame uniformly among that clip's candidates.

    candidates [B, T] bool -> (clip [B, T, K] int32, frame [B, T, K] int32, ok [B, T, K] bool); `ok`
    is False where the drawn clip has no candidate frame (or the batch has one clip).
    """
    batch, length = candidates.shape
    clip_rng, frame_rng = jax.random.split(rng)
    n, order = _candidate_order(candidates)
    own = jnp.arange(batch)[:, None, None]
    draw = jax.random.randint(clip_rng, (batch, length, num_negatives), 0, max(batch - 1, 1))
    clip = jnp.where(draw >= own, draw + 1, draw) % batch
    u = jax.random.uniform(frame_rng, (batch, length, num_negatives))
    rank = jnp.minimum(jnp.floor(u * n[clip]).astype(jnp.int32), jnp.maximum(n[clip] - 1, 0))
    frame = order[clip, rank]
    ok = (n[clip] > 0) & (batch > 1)
    return clip.astype(jnp.int32), frame.astype(jnp.int32), ok


def has_negatives(candidates: jax.Array) -> jax.Array:
    """[B, 1, 1] bool: the clip has at least two candidate frames (so one other to draw from)."""
    return (jnp.sum(candidates, axis=1) >= 2)[:, None, None]


def _normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), COSINE_EPS**2))


def contrastive_logits(
    context: jax.Array, targets: jax.Array, negative_indices: jax.Array, negative_mask: jax.Array, temperature: float
) -> jax.Array:
    """[B, T, 1 + K] logits: cos(c_t, q_t) / tau at index 0, then cos(c_t, q_j) / tau for the
    distractors j = negative_indices[b, t, k] (-inf where negative_mask is False).

    context, targets [B, T, F]; negative_indices [B, T, K] int; negative_mask [B, T, K] bool.
    """
    c, q = _normalize(context), _normalize(targets)
    similarity = jnp.einsum("btf,bsf->bts", c, q)
    # the positive from the same matmul as the distractors: a distractor that is the positive frame
    # ties with it exactly on every backend (a separate sum(c * q) rounds differently on some CPUs)
    positive = jnp.diagonal(similarity, axis1=1, axis2=2)[..., None]
    negative = jnp.take_along_axis(similarity, negative_indices, axis=2)
    negative = jnp.where(negative_mask, negative, -jnp.inf)
    return jnp.concatenate([positive, negative], axis=-1) / temperature


def cross_contrastive_logits(
    context: jax.Array, targets: jax.Array, clip: jax.Array, frame: jax.Array, mask: jax.Array, temperature: float
) -> jax.Array:
    """[B, T, K] logits cos(c_t, q[clip, frame]) / tau of the cross-clip distractors (-inf where
    mask is False); the targets are gathered ([B, T, K, F]), as the clips differ per distractor."""
    c, q = _normalize(context), _normalize(targets)
    negative = jnp.einsum("btf,btkf->btk", c, q[clip, frame])
    return jnp.where(mask, negative, -jnp.inf) / temperature


def contrastive_loss(logits: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy with target index 0 over the frames selected by weights [B, T], and the
    accuracy (the positive beats every distractor)."""
    w = weights.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(w), 1.0)
    nll = -jax.nn.log_softmax(logits, axis=-1)[..., 0]
    correct = logits[..., 0] > jnp.max(logits[..., 1:], axis=-1)
    return jnp.sum(nll * w) / count, jnp.sum(correct * w) / count


# ----------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Objective:
    """wav2vec 2.0 objective over a Conformer (the Objective interface of objectives/protocol.py)."""

    model: Wav2Vec2Model
    stack: int  # input frames per encoder frame (for the span mask's frame rate)
    mask_prob: float
    mask_span: int
    min_masks: int
    num_negatives: int
    negatives_from: str  # "masked" (wav2vec 2.0) | "valid"
    cross_sample_negatives: int  # extra distractors from the other clips of the batch (0: wav2vec 2.0)
    logit_temperature: float
    diversity_weight: float
    feature_penalty_weight: float
    gumbel_max_temp: float
    gumbel_min_temp: float
    gumbel_decay: float
    embed_layers: str = "average"  # clip embedding from the "average" of all block outputs or the "last"
    name: str = "wav2vec2"
    progress_keys: tuple[str, ...] = ("contrastive_accuracy", "code_perplexity")  # shown by the loop

    def _span_mask(self, rng, valid):
        return compute_span_mask(rng, stacked_valid(valid, self.stack), self.mask_prob, self.mask_span, self.min_masks)

    def init(self, rng, batch):
        params_rng, mask_rng = jax.random.split(rng)
        span_mask = self._span_mask(mask_rng, batch["valid"])
        variables = self.model.init(
            {"params": params_rng},
            batch["features"],
            batch["valid"],
            span_mask,
            jnp.float32(self.gumbel_max_temp),
            deterministic=True,
        )
        return {"params": variables["params"], "aux": {}}

    def loss(self, params, aux, batch, rng, step):
        mask_rng, dropout_rng, gumbel_rng, negatives_rng = jax.random.split(rng, 4)
        span_mask = self._span_mask(mask_rng, batch["valid"])
        temperature = gumbel_temperature(step, self.gumbel_max_temp, self.gumbel_min_temp, self.gumbel_decay)
        context, targets, encoded = self.model.apply(
            {"params": params},
            batch["features"],
            batch["valid"],
            span_mask,
            temperature,
            deterministic=False,
            rngs={"dropout": dropout_rng, "gumbel": gumbel_rng},
        )
        valid = encoded["valid"]
        masked = span_mask & valid
        candidates = masked if self.negatives_from == "masked" else valid

        negative_indices = sample_negative_indices(negatives_rng, candidates, self.num_negatives)
        codes = targets["codes"]
        negative_codes = jax.vmap(lambda c, i: c[i])(codes, negative_indices)  # [B, T, K, G]
        same_as_positive = jnp.all(negative_codes == codes[:, :, None, :], axis=-1)
        negative_mask = has_negatives(candidates) & ~same_as_positive
        logits = contrastive_logits(
            context, targets["quantized"], negative_indices, negative_mask, self.logit_temperature
        )
        if self.cross_sample_negatives:
            clip, frame, ok = sample_cross_negative_indices(
                jax.random.fold_in(negatives_rng, 1), candidates, self.cross_sample_negatives
            )
            ok = ok & ~jnp.all(codes[clip, frame] == codes[:, :, None, :], axis=-1)
            logits = jnp.concatenate(
                [
                    logits,
                    cross_contrastive_logits(context, targets["quantized"], clip, frame, ok, self.logit_temperature),
                ],
                axis=-1,
            )
        contrastive, accuracy = contrastive_loss(logits, masked)

        num_codes = self.model.quantizer.num_groups * self.model.quantizer.num_vars
        diversity = (num_codes - targets["prob_perplexity"]) / num_codes
        penalty = encoded["latent_penalty"]
        loss = contrastive + self.diversity_weight * diversity + self.feature_penalty_weight * penalty
        metrics = {
            "loss": loss,
            "contrastive_loss": contrastive,
            "diversity_loss": diversity,
            "feature_penalty": penalty,
            "contrastive_accuracy": accuracy,
            "code_perplexity": targets["code_perplexity"],
            "prob_perplexity": targets["prob_perplexity"],
            "gumbel_temperature": temperature,
            "mask_fraction": jnp.sum(masked) / jnp.maximum(jnp.sum(valid), 1),
        }
        return loss, (metrics, aux)

    def update_aux(self, params, aux, carry, step):
        return aux

    def embed(self, params, aux, features, valid):
        """`clip`: time mean (valid frames) of the last block's output, or of the average of every
        block's output (`embed_layers="average"`). The last layers of a wav2vec 2.0 encoder specialise
        in the contrastive task; on the demo the layer average probed better (docs/methods)."""
        if self.embed_layers == "last":
            out = self.model.apply({"params": params}, features, valid, method=Wav2Vec2Model.embed)
            return {"frames": out["frames"], "clip": out["clip"], "valid": out["valid"]}
        out, state = self.model.apply(
            {"params": params},
            features,
            valid,
            method=Wav2Vec2Model.embed,
            capture_intermediates=lambda module, name: isinstance(module, ConformerBlock) and name == "__call__",
        )
        blocks = [
            x
            for leaf in jax.tree.leaves(state["intermediates"])  # scanned blocks: [layers, B, T, d]
            for x in (leaf if leaf.ndim == 4 else leaf[None])
        ]
        average = sum(blocks) / len(blocks)
        return {"frames": out["frames"], "clip": masked_mean(average, out["valid"]), "valid": out["valid"]}

    # -- fine-tuning (objectives/finetune.py)
    def encoder_variables(self, params, aux):
        """The variables of the encoder that fine-tuning starts from: the Conformer's params."""
        return {"params": params["encoder"]}

    def encode(self, variables, features, valid, *, train=False, rng=None):
        """(Conformer outputs {frames [B, T/stack, D], valid, clip}, no state); no span mask."""
        encoder = self.model.encoder.clone(parent=None)
        out = encoder.apply(variables, features, valid, train=train, rngs={"dropout": rng} if train else {})
        return {k: out[k] for k in ("frames", "valid", "clip")}, {}


def build(config) -> Wav2Vec2Objective:
    """Builds the objective from a configs/wav2vec2_conformer.py config."""
    m, o = config.model, config.objective
    embed_layers = o.get("embed_layers", "average")  # configs saved before the field existed
    if embed_layers not in ("average", "last"):
        raise ValueError(f"config.objective.embed_layers={embed_layers!r} is not 'average' or 'last'")
    if o.negatives_from not in NEGATIVES_FROM:
        raise ValueError(f"config.objective.negatives_from={o.negatives_from!r} is not one of {NEGATIVES_FROM}")
    dtype = compute_dtype(config)
    encoder = build_encoder(m, dtype, default="conformer", choices=("conformer",), matmul_dtype=matmul_dtype(config))
    quantizer_input = m.get("quantizer_input", "latent")  # configs saved before the field existed
    if quantizer_input not in QUANTIZER_INPUTS:
        raise ValueError(f"config.model.quantizer_input={quantizer_input!r} is not one of {QUANTIZER_INPUTS}")
    quantizer = GumbelQuantizer(
        num_groups=m.quantizer_groups,
        num_vars=m.quantizer_vars,
        code_dim=m.quantizer_dim,
        out_dim=m.final_dim,
        dtype=dtype,
        frozen_assignment=quantizer_input == "input",
    )
    model = Wav2Vec2Model(
        encoder=encoder,
        quantizer=quantizer,
        final_dim=m.final_dim,
        feature_dropout_rate=m.feature_dropout_rate,
        quantizer_input=quantizer_input,
        dtype=dtype,
    )
    return Wav2Vec2Objective(
        model=model,
        stack=encoder.stack,
        mask_prob=o.mask_prob,
        mask_span=o.mask_span,
        min_masks=o.min_masks,
        num_negatives=o.num_negatives,
        negatives_from=o.negatives_from,
        cross_sample_negatives=int(o.get("cross_sample_negatives", 0)),  # configs saved before it
        logit_temperature=o.logit_temperature,
        diversity_weight=o.diversity_weight,
        feature_penalty_weight=o.feature_penalty_weight,
        gumbel_max_temp=o.gumbel_max_temp,
        gumbel_min_temp=o.gumbel_min_temp,
        gumbel_decay=o.gumbel_decay,
        embed_layers=embed_layers,
    )
