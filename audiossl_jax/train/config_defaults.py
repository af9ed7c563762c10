"""Fields shared by every pre-training config; method configs in `configs/` fill in the rest."""

import ml_collections

from audiossl_jax.parallel import rules


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = ""  # one of audiossl_jax.objectives.registry.OBJECTIVES
    c.model = ml_collections.ConfigDict()  # encoder fields, method specific
    c.objective = ml_collections.ConfigDict()  # loss/masking fields, method specific

    c.data = ml_collections.ConfigDict()
    c.data.train_dir = "runs/demo/data/train"  # output of `audiossl prep`
    c.data.eval_dir = "runs/demo/data/eval"
    c.data.batch_size = 8  # global batch (split over processes and devices)
    c.data.crop_frames = 1000  # random crop / pad-with-mask to this many frames
    c.data.shuffle_buffer = 1000
    c.data.normalization = "per_bin"  # per_bin: the train manifest's mean/std | global: norm_mean/std | none
    c.data.norm_mean = ml_collections.config_dict.placeholder(float)  # for "global"
    c.data.norm_std = ml_collections.config_dict.placeholder(float)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.decay = "cosine"  # cosine | linear | constant
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.clip_norm = 10.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100_000
    c.train.log_every = 50
    c.train.ckpt_every = 5000
    c.train.keep_ckpts = 3
    c.train.compute_dtype = "float32"  # bfloat16 on TPU/GPU
    # "bfloat16": the encoders' and decoder's matmuls take bf16 operands with float32 results when the
    # compute dtype is float32 (~1.8x matmul throughput on CPUs with AVX512-BF16 / AMX; train/precision.py)
    c.train.matmul_dtype = "float32"
    # A step whose loss, gradient norm or updated params are not finite: "stop" raises naming the step
    # (nothing of it is saved); "skip" discards its update inside the step and goes on (docs/operating.md).
    c.train.on_nonfinite = "stop"
    # Trace steps profile_start .. profile_start + profile_steps - 1 with jax.profiler into
    # <workdir>/profile, with op_profile.txt / .json: op time per step by category and module
    # (train/op_profile.py; docs/training.md). 0: no profile.
    c.train.profile_start = 0
    c.train.profile_steps = 3

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # sizes of (data, fsdp, tensor); one may be -1
    c.mesh.axes = rules.MESH_AXES
    c.rules = rules.DEFAULT_RULES

    c.probe = ml_collections.ConfigDict()
    c.probe.epochs = 100
    c.probe.lr = 1e-3
    c.probe.weight_decay = 1e-4
    c.probe.batch_size = 64
    c.probe.embed_batch_size = 16
    # Frames embedded per clip (the first N, padded and masked if shorter); None: config.data.crop_frames.
    # Set it when pre-training crops are shorter than the clips the probe should see (SLICER: 0.95 s).
    c.probe.crop_frames = ml_collections.config_dict.placeholder(int)

    # Evaluation inside pre-training (audiossl_jax/evaluate/evaluator.py): every `every` steps the
    # frozen encoder's clip embeddings are probed (config.probe's linear probe + a k-NN) on labelled
    # tasks; at step 0 of a new run the random-init encoder gives the baseline series `random_init/*`.
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # steps between evaluations; 0: off
    c.eval.suite = ""  # JSON file of tasks ({"tasks": [{name, train_dir, test_dir, type}]});
    #                    "": one task "eval" = (data.train_dir, data.eval_dir)
    c.eval.knn_k = 10
    c.eval.random_init_baseline = True
    c.eval.plot = True  # <workdir>/eval_curves.png at the end of `audiossl pretrain`
    return c


FINETUNE_RECIPE = ("batch_size", "steps", "lr", "warmup_steps")  # set by each method's config file


def finetune_defaults() -> ml_collections.ConfigDict:
    """The fields of `config.finetune` (`audiossl finetune`, objectives/finetune.py) with neutral values:
    AdamW's own defaults, no augmentation, no layer-wise decay, no stochastic depth, mean pooling
    and a LayerNorm before the linear head. The recipe
    (`FINETUNE_RECIPE` and whatever else differs) is set by each method's config file
    (`finetune_settings` in configs/eat.py, configs/wav2vec2_conformer.py, configs/slicer.py)."""
    f = ml_collections.ConfigDict()
    placeholder = ml_collections.config_dict.placeholder
    f.batch_size = placeholder(int)
    f.steps = placeholder(int)
    f.lr = placeholder(float)  # peak learning rate
    f.warmup_steps = placeholder(int)  # linear warm-up, then cosine decay to end_lr
    f.end_lr = 0.0
    f.b1, f.b2 = 0.9, 0.999
    f.eps = 1e-8
    f.weight_decay = 0.0  # on tensors of rank > 1
    f.clip_norm = 0.0  # global-norm clipping (0: none)
    f.layer_decay = 1.0  # block i of L gets lr * layer_decay ** (L - i) (1: none)
    f.decay_embeddings = False  # True: the non-block encoder params get layer_decay ** (L + 1) (BEiT)
    f.drop_path = 0.0  # stochastic depth of the encoder (config.model.drop_path; ViT only)
    f.model = ml_collections.ConfigDict()  # other config.model overrides for fine-tuning (dropout rates)
    f.pooling = "mean"  # "cls" | "mean" (valid frames) | "max_mean" (SLICER's clip embedding)
    f.head_norm = True  # LayerNorm (EAT's fc_norm, timm's default) before the linear head
    f.multilabel = True  # sigmoid BCE, mAP (AudioSet); False: softmax CE, top-1 accuracy (ESC-50)
    f.label_smoothing = 0.0  # multi-class only
    f.mixup_alpha = 0.8
    f.mixup_prob = 0.0  # batch mixup with probability mixup_prob (0: off)
    f.specaug_freq = 0.0  # torchaudio FrequencyMasking param (0: off)
    f.specaug_time = 0.0  # TimeMasking param (0: off)
    f.crop_frames = placeholder(int)  # None: the pre-training crop
    f.class_balanced = False  # AS-2M draws clips by AST's label-frequency weights: not in `audiossl finetune` yet
    f.log_every = 100
    f.eval_every = 0  # score the eval split every N steps (0: only at the end)
    f.ckpt_every = 1000
    return f
