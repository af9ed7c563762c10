"""Fine-tuning as an objective: a pre-trained method's encoder + a classifier head.

`config.method = "finetune"` runs in the pre-training loop (`train/loop.py`) like any method, so
fine-tuning gets its sharded, donated step, async metrics, orbax keep-N checkpoints, resume,
preemption and in-loop evaluation. `audiossl finetune` (`evaluate/finetune.py`) writes such a config
from a pre-training run; `config.finetune` holds the recipe (`objectives/finetune_recipe.py`; the
augmentations are `data/augment.py`'s):

* the encoder is the one of `config.finetune.base_method` (wav2vec2, eat, slicer), built from the
  same `config.model` (with `finetune.drop_path` and `finetune.model` applied); the method supplies
  `encoder_variables(params, aux)` (what of its state the encoder reads) and
  `encode(variables, features, valid, train=, rng=)` (the encoder forward);
* params = {"encoder": ..., "fc_norm"?, "head"}; aux = the encoder's other collections (SLICER's
  BatchNorm statistics, updated in train mode);
* loss: label smoothing (multi-class), batch mixup, SpecAugment, the encoder in train mode (dropout,
  drop path), pooling, head, EAT's BCE / soft-target cross-entropy;
* `lr_scales`: layer-wise LR decay, applied by the loop's optimizer;
* `warm_start`: at step 0 of a new run (no checkpoint), the encoder's variables are restored from
  the latest checkpoint of the pre-training workdir `finetune.init_from` (params and aux only, no
  optimizer); an empty `init_from` keeps the random init;
* `logits`: the loop scores it as a classifier (`evaluate/classifier_eval.py`): mAP, AUC, d' or top-1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from audiossl_jax.data import augment
from audiossl_jax.objectives import finetune_recipe as recipe
from audiossl_jax.objectives import registry as objectives
from audiossl_jax.train.precision import compute_dtype

BASE_METHODS = ("wav2vec2", "eat", "slicer")


@dataclasses.dataclass(frozen=True)
class Finetune:
    """A classifier on a pre-trained method's encoder, as an `Objective` (module docstring)."""

    base: Any  # the pre-training objective whose encoder is fine-tuned
    base_config: ml_collections.ConfigDict  # its config (for the partial restore's shapes)
    head: recipe.ClassifierHead
    pooling: str = "cls"
    multilabel: bool = True
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.8
    mixup_prob: float = 0.0
    specaug_freq: float = 0.0
    specaug_time: float = 0.0
    layer_decay: float = 1.0
    decay_embeddings: bool = False
    init_from: str = ""  # pre-training workdir whose latest checkpoint the encoder starts from
    mel_bins: int = 128
    name: str = "finetune"
    progress_keys: tuple[str, ...] = ()

    # -- state
    def init(self, rng, batch):
        base_rng, head_rng = jax.random.split(rng)
        base = self.base.init(base_rng, batch)
        variables = self.base.encoder_variables(base["params"], base.get("aux", {}))
        out, _ = self.base.encode(variables, batch["features"][:1], batch["valid"][:1], train=False)
        head = self.head.init(head_rng, recipe.pool(out, self.pooling))["params"]
        return {
            "params": {"encoder": variables["params"], **head},
            "aux": {k: v for k, v in variables.items() if k != "params"},
        }

    def warm_start(self, state, shardings, mesh):
        """The state with the encoder's variables of the latest checkpoint of `init_from` (a new run)."""
        if not self.init_from:
            return state
        from audiossl_jax.train import restore

        params, aux, step = restore.restore_variables(
            self.base_config, self.init_from, self.base, mesh, self.mel_bins, int(self.head.num_classes)
        )
        variables = self.base.encoder_variables(params, aux)
        new = {
            **state,
            "params": {**state["params"], "encoder": variables["params"]},
            "aux": {k: v for k, v in variables.items() if k != "params"},
        }
        for part in ("params", "aux"):
            want = jax.tree.map(lambda x: (x.shape, x.dtype), state[part])
            got = jax.tree.map(lambda x: (x.shape, x.dtype), new[part])
            if want != got:
                raise ValueError(
                    f"config.finetune.init_from={self.init_from!r} (step {step}): its encoder's "
                    f"{part} do not match the fine-tuning encoder's (config.model or "
                    "config.finetune.crop_frames changed the shapes?)"
                )
        return jax.device_put(new, shardings)

    # -- forward
    def _logits(self, params, aux, features, valid, *, train: bool, rng=None):
        out, state = self.base.encode({"params": params["encoder"], **aux}, features, valid, train=train, rng=rng)
        head = {k: v for k, v in params.items() if k != "encoder"}
        return self.head.apply({"params": head}, recipe.pool(out, self.pooling)), state

    def logits(self, params, aux, features, valid) -> jax.Array:
        """Class logits [B, classes] with the encoder in inference mode."""
        return self._logits(params, aux, features, valid, train=False)[0]

    def loss(self, params, aux, batch, rng, step):
        aug_rng, mix_rng, drop_rng = jax.random.split(rng, 3)
        features, valid, labels = batch["features"], batch["valid"], batch["labels"].astype(jnp.float32)
        if not self.multilabel and self.label_smoothing > 0:
            labels = recipe.smooth_labels(labels, self.label_smoothing)
        if self.mixup_prob > 0:
            features, valid, labels = augment.batch_mixup(
                mix_rng, features, valid, labels, alpha=self.mixup_alpha, prob=self.mixup_prob
            )
        if self.specaug_freq > 0 or self.specaug_time > 0:
            features = augment.spec_augment(
                aug_rng, features, freq_param=self.specaug_freq, time_param=self.specaug_time
            )
        logits, state = self._logits(params, aux, features, valid, train=True, rng=drop_rng)
        loss = recipe.classification_loss(logits, labels, multilabel=self.multilabel)
        return loss, ({}, {**aux, **state})

    def update_aux(self, params, aux, carry, step):
        return aux

    def lr_scales(self, params):
        """Layer-wise LR decay multipliers of a params-shaped tree (the optimizer's last stage)."""
        layers = recipe.count_blocks(params["encoder"])
        return recipe.layerwise_lr_scales(params, layers, self.layer_decay, decay_embeddings=self.decay_embeddings)

    def embed(self, params, aux, features, valid):
        """The fine-tuned encoder's frames and pooled clip vector (the head's input)."""
        out, _ = self.base.encode({"params": params["encoder"], **aux}, features, valid, train=False)
        return {"frames": out["frames"], "clip": recipe.pool(out, self.pooling), "valid": out["valid"]}


def base_config(config) -> ml_collections.ConfigDict:
    """The pre-training method's config inside a fine-tuning config: `finetune.base_method`, the
    pre-training batch and crop (the shapes its checkpoint was saved with)."""
    ft = config.finetune
    base = ml_collections.ConfigDict(config.to_dict())
    base.method = ft.base_method
    base.data.batch_size = int(ft.base_batch_size)
    base.data.crop_frames = int(ft.base_crop_frames)
    return base


def build(config) -> Finetune:
    """The fine-tuning objective of a config written by `evaluate/finetune.py:finetune_config`."""
    ft = config.get("finetune")
    if ft is None or "base_method" not in ft:
        raise ValueError(
            "config.method='finetune' needs config.finetune.base_method (write the config with "
            "`audiossl finetune` / audiossl_jax.evaluate.finetune.finetune_config)"
        )
    if ft.base_method not in BASE_METHODS:
        raise ValueError(f"config.finetune.base_method={ft.base_method!r} is not one of {BASE_METHODS}")
    if ft.pooling not in recipe.POOLING:
        raise ValueError(f"config.finetune.pooling={ft.pooling!r} is not one of {recipe.POOLING}")
    if int(ft.num_classes) <= 0:
        raise ValueError(
            f"config.finetune.num_classes={ft.num_classes}: the train split {config.data.train_dir} has no labels"
        )
    bcfg = base_config(config)
    base = objectives.build(bcfg)
    head = recipe.ClassifierHead(num_classes=int(ft.num_classes), norm=bool(ft.head_norm), dtype=compute_dtype(config))
    return Finetune(
        base=base,
        base_config=bcfg,
        head=head,
        pooling=ft.pooling,
        multilabel=bool(ft.multilabel),
        label_smoothing=float(ft.label_smoothing),
        mixup_alpha=float(ft.mixup_alpha),
        mixup_prob=float(ft.mixup_prob),
        specaug_freq=float(ft.specaug_freq),
        specaug_time=float(ft.specaug_time),
        layer_decay=float(ft.layer_decay),
        decay_embeddings=bool(ft.decay_embeddings),
        init_from=str(ft.init_from or ""),
        mel_bins=int(ft.mel_bins),
    )
