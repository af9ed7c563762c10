"""SLICER (Seth et al., ICASSP 2023): symmetric instance- and cluster-level contrastive learning.

Two augmented views of every clip (BYOL-A mixup -> random-resize-crop -> k-mix) go through a student
(encoder + instance head + cluster head) and an EMA teacher (momentum 0.999, in `aux`, no gradient):
  loss = InfoNCE(student q(v1), teacher k(v2), queue) + InfoNCE(q(v2), k(v1), queue)    [tau 0.07]
       + cluster-level contrastive(student c(v1), student c(v2))                        [tau 1.0]
The teacher keys of both views are enqueued after the step (FIFO queue of negatives in `aux`).
This follows the authors' released code (github.com/Sreyan88/LAPE, src/upstream/slicer); the
differences are listed in docs/methods/slicer.md.

`embed` uses the student encoder with its running BatchNorm statistics (the released code loads
`encoder_q`, the student, for downstream tasks); clip = max + mean pooled frames, followed by the
max + mean pooled outputs of the conv blocks in `objective.embed_conv_blocks` (CNN encoder).

aux = {"teacher": params, "batch_stats": {"student", "teacher"}, "queue": {"keys", "ptr"},
       "bank": k-mix memory bank (see audiossl_jax/objectives/kmix.py)}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.data import augment
from audiossl_jax.models import cnn_encoder, factory, heads, layers
from audiossl_jax.objectives import contrastive, ema, kmix
from audiossl_jax.objectives import queue as key_queue
from audiossl_jax.train import precision

BN_STATS_FROM = ("views", "clean")
KMEANS_SEED_SALT = 0x6B6D  # separates the k-means init stream from the config seed's other uses


# ----------------------------------------------------------------------------- views
@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Augmentations of each view: BYOL-A mixup -> random-resize-crop -> k-mix (LAPE's order)."""

    mixup_ratio: float  # BYOL-A mixup weight ~ U(0, ratio) with a random bank clip; 0 = off
    rrc: bool  # BYOL-A random-resize-crop
    rrc_virtual_scale: tuple[float, float]  # (mel, time) canvas size relative to the input
    rrc_freq_scale: tuple[float, float]  # crop height range relative to the mel bins
    rrc_time_scale: tuple[float, float]  # crop width range relative to the frames
    kmix_ratio: float  # k-mix weight ~ U(0, ratio) with a farthest-cluster bank clip; 0 = off
    kmix_clusters: int  # k-means clusters
    kmix_min_bank: int  # bank clips needed before partners come from clusters (else uniform)
    kmix_fit_examples: int  # bank clips the k-means is fitted on (once, when the bank has them)
    kmeans_iters: int
    bank_size: int  # memory bank of clean clips shared by mixup and k-mix

    @property
    def uses_bank(self) -> bool:
        return self.mixup_ratio > 0 or self.kmix_ratio > 0

    @classmethod
    def from_config(cls, c, batch_size: int) -> ViewConfig:
        view = cls(
            mixup_ratio=float(c.mixup_ratio),
            rrc=bool(c.rrc),
            rrc_virtual_scale=tuple(c.rrc_virtual_scale),
            rrc_freq_scale=tuple(c.rrc_freq_scale),
            rrc_time_scale=tuple(c.rrc_time_scale),
            kmix_ratio=float(c.kmix_ratio),
            kmix_clusters=int(c.kmix_clusters),
            kmix_min_bank=int(c.kmix_min_bank),
            kmix_fit_examples=int(c.kmix_fit_examples),
            kmeans_iters=int(c.kmeans_iters),
            bank_size=int(c.bank_size),
        )
        if view.uses_bank and not batch_size <= view.bank_size:
            raise ValueError(
                f"config.objective.augment.bank_size={view.bank_size} must be >= "
                f"config.data.batch_size={batch_size} (a batch is pushed every step)"
            )
        if view.kmix_ratio > 0 and not view.kmix_clusters <= view.kmix_fit_examples <= view.bank_size:
            raise ValueError(
                f"config.objective.augment.kmix_fit_examples={view.kmix_fit_examples} must "
                f"lie between kmix_clusters={view.kmix_clusters} and bank_size={view.bank_size}"
            )
        if view.rrc and (view.rrc_freq_scale[1] < 1.0 or view.rrc_time_scale[1] < 1.0):
            raise ValueError(
                "config.objective.augment.rrc_freq_scale/rrc_time_scale must reach >= 1.0 (BYOL-A's assertion)"
            )
        return view


def one_view(rng: jax.Array, features: jax.Array, valid: jax.Array, bank, view: ViewConfig):
    mix_rng, crop_rng, kmix_rng = jax.random.split(rng, 3)
    x = features.astype(jnp.float32)
    if view.mixup_ratio > 0:
        x = kmix.random_mixup(mix_rng, x, bank, view.mixup_ratio)
    if view.rrc:
        x, valid = augment.byol_random_resize_crop(
            crop_rng,
            x,
            valid,
            virtual_scale=view.rrc_virtual_scale,
            freq_scale=view.rrc_freq_scale,
            time_scale=view.rrc_time_scale,
        )
    if view.kmix_ratio > 0:
        x = kmix.kmix(kmix_rng, x, valid, bank, view.kmix_ratio, view.kmix_min_bank)
    return x, valid


def two_views(rng: jax.Array, features: jax.Array, valid: jax.Array, bank, view: ViewConfig):
    """Two independently augmented views ((x1, valid1), (x2, valid2)) of a batch."""
    rng1, rng2 = jax.random.split(rng)
    return one_view(rng1, features, valid, bank, view), one_view(rng2, features, valid, bank, view)


# ----------------------------------------------------------------------------- model
class SlicerNet(nn.Module):
    """Encoder + instance head + cluster head; returns (instance [B, D], cluster assignment [B, K]).

    The heads see SLICER's clip embedding: max + mean of the encoder's frames over valid frames.
    """

    encoder: nn.Module  # any encoder of models/factory.py (CNNEncoder, Conformer, AudioViT)
    instance_dim: int = 128  # instance projection size
    instance_hidden: int = 0  # hidden width of an MLP instance head (MoCo v2); 0: linear (SLICER)
    clusters: int = 128  # K of the cluster head
    cluster_hidden: int = 2048  # hidden width of the cluster head
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    def setup(self):
        self.instance_head = heads.InstanceHead(self.instance_dim, self.dtype, self.param_dtype, self.instance_hidden)
        self.cluster_head = heads.ClusterHead(self.clusters, self.cluster_hidden, self.dtype, self.param_dtype)

    def encode(self, features, valid, train: bool = False) -> dict[str, jax.Array]:
        """The encoder's frames and valid, and SLICER's clip: max + mean of the valid frames (the
        ViT's frames are its patch tokens; its CLS output is not used)."""
        out = self.encoder(features, valid, train=train)
        clip = layers.masked_max_plus_mean(out["frames"], out["valid"])
        return {
            "frames": out["frames"],
            "clip": nn.with_logical_constraint(clip, ("batch", "embed")),
            "valid": out["valid"],
        }

    def __call__(self, features, valid, train: bool = True):
        clip = self.encode(features, valid, train)["clip"]
        return self.instance_head(clip), self.cluster_head(clip)


# ----------------------------------------------------------------------------- objective
@dataclasses.dataclass(frozen=True)
class Slicer:
    """The SLICER objective (see module docstring); build it with `build(config)`."""

    net: SlicerNet
    temperature: float  # instance-level InfoNCE temperature
    queue_size: int  # number of negative keys
    cluster_temperature: float
    cluster_entropy_weight: float  # Contrastive Clustering's entropy regulariser (0 = off)
    instance_weight: float
    cluster_weight: float
    momentum: float  # EMA decay of the teacher
    augment: ViewConfig
    seed: int
    # Where the student's BatchNorm running statistics (what `embed` normalises with) come from: the
    # augmented "views" the loss sees, or the "clean" batch (one extra forward pass of the encoder, no
    # gradient). The views are mixed and warped; the clips embedded later are not.
    bn_stats_from: str = "views"
    # "clean": the running statistics' momentum of that pass (None: the encoder's own, 0.9). Closer
    # to 1 averages over more batches: a population estimate rather than the last ~10 batches.
    clean_bn_momentum: float | None = None
    # Conv blocks (CNN encoder) whose max + mean pooled outputs join the clip embedding of `embed`,
    # after the FC output's; () = the FC output only (BYOL-A / LAPE). Training is unchanged.
    embed_conv_blocks: tuple[int, ...] = ()
    name: str = "slicer"
    progress_keys: tuple[str, ...] = ("instance_loss", "cluster_loss", "instance_accuracy")

    # -- state
    def init(self, rng, batch):
        features, valid = batch["features"], batch["valid"]
        params_rng, dropout_rng, queue_rng = jax.random.split(rng, 3)
        variables = self.net.init({"params": params_rng, "dropout": dropout_rng}, features, valid, train=False)
        params = variables["params"]
        stats = variables.get("batch_stats", {})
        aux = {
            "teacher": jax.tree.map(lambda x: x, params),
            "batch_stats": {"student": stats, "teacher": jax.tree.map(lambda x: x, stats)},
            "queue": key_queue.init_key_queue(queue_rng, self.queue_size, self.net.instance_dim),
        }
        if self.augment.uses_bank:
            aux["bank"] = kmix.init_bank(
                self.augment.bank_size, features.shape[1], features.shape[2], self.augment.kmix_clusters
            )
        return {"params": params, "aux": aux}

    def _forward(self, params, stats, features, valid, rng):
        variables = {"params": params, **({"batch_stats": stats} if stats else {})}
        (instance, cluster), updates = self.net.apply(
            variables, features, valid, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        return instance, cluster, updates.get("batch_stats", stats)

    # -- loss
    def loss(self, params, aux, batch, rng, step):
        view_rng, s1_rng, s2_rng, t1_rng, t2_rng = jax.random.split(rng, 5)
        (v1, valid1), (v2, valid2) = two_views(
            view_rng, batch["features"], batch["valid"], aux.get("bank"), self.augment
        )
        s_stats, t_stats = aux["batch_stats"]["student"], aux["batch_stats"]["teacher"]
        q1, c1, s_stats = self._forward(params, s_stats, v1, valid1, s1_rng)
        q2, c2, s_stats = self._forward(params, s_stats, v2, valid2, s2_rng)
        teacher = jax.lax.stop_gradient(aux["teacher"])
        k1, _, t_stats = self._forward(teacher, t_stats, v1, valid1, t1_rng)
        k2, _, t_stats = self._forward(teacher, t_stats, v2, valid2, t2_rng)
        k1, k2 = jax.lax.stop_gradient(k1), jax.lax.stop_gradient(k2)

        instance_loss, accuracy = contrastive.symmetric_infonce(q1, k1, q2, k2, aux["queue"]["keys"], self.temperature)
        cluster_loss, entropy = contrastive.cluster_contrastive(
            c1, c2, self.cluster_temperature, self.cluster_entropy_weight
        )
        loss = self.instance_weight * instance_loss + self.cluster_weight * cluster_loss
        metrics = {
            "loss": loss,
            "instance_loss": instance_loss,
            "cluster_loss": cluster_loss,
            "instance_accuracy": accuracy,
            "cluster_entropy": entropy,
            "momentum": jnp.asarray(self.momentum, jnp.float32),
            "_carry": {
                "keys": jnp.concatenate([k1, k2], axis=0),
                "features": batch["features"],
                "valid": batch["valid"],
            },
        }
        if "bank" in aux:
            metrics["kmix_fitted"] = aux["bank"]["fitted"].astype(jnp.float32)
        if self.bn_stats_from == "clean" and s_stats:
            s_stats = self._clean_stats(
                jax.lax.stop_gradient(params), aux["batch_stats"]["student"], batch["features"], batch["valid"], s1_rng
            )
        new_aux = {**aux, "batch_stats": {"student": s_stats, "teacher": t_stats}}
        return loss, (metrics, new_aux)

    def _clean_stats(self, params, stats, features, valid, rng):
        """The student's running statistics updated by one train-mode encoder pass on the clean batch."""
        net = self.net
        if self.clean_bn_momentum is not None:
            net = net.clone(encoder=net.encoder.clone(bn_momentum=self.clean_bn_momentum))
        _, updates = net.apply(
            {"params": params, "batch_stats": stats},
            features,
            valid,
            True,
            method=SlicerNet.encode,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        return jax.lax.stop_gradient(updates["batch_stats"])

    # -- after the optimizer step
    def update_aux(self, params, aux, carry, step):
        aux = dict(aux)
        aux["teacher"] = ema.ema_update(aux["teacher"], params, self.momentum)
        aux["queue"] = key_queue.enqueue(aux["queue"], carry["keys"])
        if "bank" in aux:
            bank = kmix.push(aux["bank"], carry["features"], carry["valid"])
            kmeans_rng = jax.random.fold_in(jax.random.key(self.seed ^ KMEANS_SEED_SALT), step)
            aux["bank"] = kmix.maybe_fit(bank, kmeans_rng, self.augment.kmix_fit_examples, self.augment.kmeans_iters)
        return aux

    # -- downstream
    def embed(self, params, aux, features, valid):
        stats = aux["batch_stats"]["student"]
        variables = {"params": params, **({"batch_stats": stats} if stats else {})}
        if not self.embed_conv_blocks:
            out = self.net.apply(variables, features, valid, method=SlicerNet.encode)
            return {"frames": out["frames"], "clip": out["clip"], "valid": out["valid"]}
        out, state = self.net.apply(
            variables,
            features,
            valid,
            method=SlicerNet.encode,
            capture_intermediates=lambda module, _: isinstance(module, cnn_encoder.ConvBlock),
        )
        captured = state["intermediates"]["encoder"]
        blocks = [captured[f"block{i}"]["__call__"][0] for i in range(max(self.embed_conv_blocks) + 1)]
        conv_clips = cnn_encoder.conv_block_clips(blocks, valid)
        clip = jnp.concatenate([out["clip"]] + [conv_clips[i] for i in self.embed_conv_blocks], axis=-1)
        return {"frames": out["frames"], "clip": clip, "valid": out["valid"]}

    # -- fine-tuning (objectives/finetune.py)
    def encoder_variables(self, params, aux):
        """The variables of the encoder that fine-tuning starts from: the student encoder's params and
        running BatchNorm statistics."""
        stats = aux["batch_stats"]["student"]
        variables = {"params": {"encoder": params["encoder"]}}
        if stats and "encoder" in stats:
            variables["batch_stats"] = {"encoder": stats["encoder"]}
        return variables

    def encode(self, variables, features, valid, *, train=False, rng=None):
        """(student encoder outputs {frames, valid, clip}, updated {"batch_stats"} in train mode)."""
        rngs = {"dropout": rng} if train else {}
        if train and "batch_stats" in variables:
            out, updates = self.net.apply(
                variables, features, valid, True, method=SlicerNet.encode, rngs=rngs, mutable=["batch_stats"]
            )
            return out, {"batch_stats": updates["batch_stats"]}
        return self.net.apply(variables, features, valid, train, method=SlicerNet.encode, rngs=rngs), {}


def _clean_bn_momentum(config, bn_stats_from: str) -> float | None:
    momentum = config.objective.get("clean_bn_momentum", None)  # configs saved before the field existed
    if momentum is None:
        return None
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"config.objective.clean_bn_momentum={momentum!r} must be in [0, 1)")
    if bn_stats_from != "clean" or config.model.encoder != "cnn":
        raise ValueError(
            "config.objective.clean_bn_momentum needs objective.bn_stats_from='clean' and "
            f"model.encoder='cnn' (got {bn_stats_from!r}, {config.model.encoder!r})"
        )
    return float(momentum)


def _embed_conv_blocks(config) -> tuple[int, ...]:
    blocks = tuple(int(b) for b in config.objective.get("embed_conv_blocks", ()))  # older configs: none
    if not blocks:
        return ()
    if config.model.encoder != "cnn":
        raise ValueError(
            f"config.objective.embed_conv_blocks={blocks} needs model.encoder='cnn' (got {config.model.encoder!r})"
        )
    if len(set(blocks)) != len(blocks) or not all(0 <= b < config.model.blocks for b in blocks):
        raise ValueError(
            f"config.objective.embed_conv_blocks={blocks}: distinct block indices in "
            f"[0, model.blocks={config.model.blocks}) expected"
        )
    return blocks


def build(config) -> Slicer:
    """Builds SLICER from `config.model` (encoder, heads) and `config.objective` (loss, views)."""
    m, o = config.model, config.objective
    dtype = precision.compute_dtype(config)
    encoder = factory.build_encoder(
        m, dtype, default="cnn", matmul_dtype=precision.matmul_dtype(config)
    )  # cnn: the paper's BYOL-A AudioNTT2020
    instance_hidden = int(m.get("instance_hidden", 0))  # configs saved before the field existed
    if instance_hidden < 0:
        raise ValueError(f"config.model.instance_hidden={instance_hidden} must be >= 0 (0: a linear instance head)")
    net = SlicerNet(
        encoder=encoder,
        instance_dim=m.instance_dim,
        instance_hidden=instance_hidden,
        clusters=m.clusters,
        cluster_hidden=m.cluster_hidden,
        dtype=dtype,
    )
    bn_stats_from = o.get("bn_stats_from", "views")  # configs saved before the field existed
    if bn_stats_from not in BN_STATS_FROM:
        raise ValueError(f"config.objective.bn_stats_from={bn_stats_from!r} is not one of {BN_STATS_FROM}")
    pushed = 2 * config.data.batch_size
    if o.queue_size < pushed:
        raise ValueError(
            f"config.objective.queue_size={o.queue_size} must be >= the keys pushed per "
            f"step (2 x config.data.batch_size = {pushed})"
        )
    return Slicer(
        net=net,
        temperature=o.temperature,
        queue_size=o.queue_size,
        cluster_temperature=o.cluster_temperature,
        cluster_entropy_weight=o.cluster_entropy_weight,
        instance_weight=o.instance_weight,
        cluster_weight=o.cluster_weight,
        momentum=o.momentum,
        augment=ViewConfig.from_config(o.augment, config.data.batch_size),
        seed=int(config.seed),
        bn_stats_from=bn_stats_from,
        clean_bn_momentum=_clean_bn_momentum(config, bn_stats_from),
        embed_conv_blocks=_embed_conv_blocks(config),
    )
