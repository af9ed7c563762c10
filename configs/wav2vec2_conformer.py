"""wav2vec 2.0 pre-training of a Conformer (Srivastava et al., ICASSP 2022).

    audiossl pretrain --config configs/wav2vec2_conformer.py:S      # the paper's Conformer-S
    audiossl pretrain --config configs/wav2vec2_conformer.py:local  # CPU smoke run on the demo data

Variants: S (paper), L, local (small model, a few minutes on 2 CPU cores), tiny (tests). Where each
value comes from (seed paper vs wav2vec 2.0 default vs our choice): docs/methods/wav2vec2_conformer.md.
"""

import ml_collections

from audiossl_jax.config_loader import parse_arg
from audiossl_jax.models.conformer import SIZES
from audiossl_jax.train.config_defaults import base_config, finetune_defaults

VARIANTS = ("S", "L", "local", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, name="configs/wav2vec2_conformer.py", variant="S", choices={"variant": VARIANTS}).variant
    c = base_config()
    c.method = "wav2vec2"

    m = c.model
    size = {"S": "S", "L": "L", "local": "S", "tiny": "tiny"}[variant]
    m.update(SIZES[size])
    m.stack = 4  # 4 log-mel frames (10 ms hop) -> one 40 ms token
    m.conv_first = True  # convolution module before self-attention
    m.conv_norm = "layer"  # "layer" | "group": no batch statistics (models/conformer.py)
    m.rotary = True  # rotary position embedding in self-attention
    m.dropout_rate = 0.1
    m.attention_dropout_rate = 0.1
    m.activation_dropout_rate = 0.0  # FFN hidden (wav2vec 2.0 activation_dropout)
    m.input_dropout_rate = 0.1  # wav2vec 2.0 dropout_input
    m.feature_dropout_rate = 0.1  # wav2vec 2.0 dropout_features (quantizer input)
    m.input_norm = "none"  # "frame_mean": remove each frame's mean over mel bins (models/conformer.py)
    m.conv_custom_vjp = True
    m.scan = False  # Python loop over blocks: faster steps on CPU
    m.remat = False
    m.quantizer_groups = 2  # G
    m.quantizer_vars = 320  # V
    m.final_dim = 256  # context/target width (wav2vec 2.0 BASE final_dim)
    m.quantizer_dim = 256  # concatenated codeword width (wav2vec 2.0: latent_dim 0 -> final_dim)
    # "latent": the quantizer codes the learned latent (wav2vec 2.0); "input": it codes the stacked
    # input frames with a frozen assignment (BEST-RQ-style fixed targets; models/quantizer.py)
    m.quantizer_input = "latent"

    o = c.objective
    o.mask_prob = 0.65
    o.mask_span = 10  # encoder frames (40 ms each: 400 ms spans)
    o.min_masks = 2
    o.num_negatives = 100  # K distractors
    o.negatives_from = "masked"  # "masked" (wav2vec 2.0) | "valid"
    o.cross_sample_negatives = 0  # extra distractors from other clips of the batch (fairseq's option)
    o.logit_temperature = 0.1
    o.diversity_weight = 0.1
    # wav2vec 2.0 BASE uses 10 on its CNN features; on our linear + LayerNorm front end it only shrinks
    # the scale-invariant projection and stalled the contrastive loss at chance (see the method doc).
    o.feature_penalty_weight = 0.0
    o.gumbel_max_temp = 2.0
    o.gumbel_min_temp = 0.5
    o.gumbel_decay = 0.999995  # per update
    o.embed_layers = "average"  # probe/embed: time mean of the average of all block outputs | "last"

    c.data.frontend = ml_collections.ConfigDict(dict(name="librosa_mel", num_mel_bins=64))  # `audiossl prep --config`
    c.data.crop_frames = 1000  # 10 s of 64-bin log-mel at a 10 ms hop
    c.optimizer.lr = 5e-4  # wav2vec 2.0 BASE
    c.optimizer.warmup_steps = 32_000  # 8% of 400k
    c.optimizer.decay = "linear"
    c.optimizer.weight_decay = 0.01
    c.train.steps = 400_000

    if variant == "L":
        m.final_dim = 768  # wav2vec 2.0 LARGE
        m.quantizer_dim = 768
    elif variant == "local":
        m.update(d_model=144, num_layers=4, num_heads=4, mlp_dim=576, first_kernel_size=15, kernel_size=15)
        m.quantizer_dim = m.final_dim = 128
        m.dropout_rate = m.attention_dropout_rate = 0.0  # tiny data, few steps: no regularisation
        c.data.batch_size = 8
        c.data.crop_frames = 400  # 4 s -> 100 encoder frames
        c.data.shuffle_buffer = 256
        c.optimizer.lr = 1e-3
        c.optimizer.warmup_steps = 50
        c.optimizer.decay = "cosine"
        c.objective.gumbel_decay = 0.995  # reach the minimum temperature within the run (~280 steps)
        c.train.steps = 400
        c.eval.every = 200  # in-training probe (demo: its labelled eval split; or --config.eval.suite)
        c.train.log_every = 20
        c.train.ckpt_every = 200
    elif variant == "tiny":
        m.quantizer_vars = 16
        m.quantizer_dim = m.final_dim = 16
        o.num_negatives = 5
        o.mask_span = 3
        c.data.batch_size = 2
        c.data.crop_frames = 64
        c.optimizer.warmup_steps = 2
        c.train.steps = 4
        c.train.log_every = 1
        c.train.ckpt_every = 2
    c.finetune = finetune_settings(variant, c.data.crop_frames)
    return c


def finetune_settings(variant: str, crop_frames: int) -> ml_collections.ConfigDict:
    """`config.finetune` of a conformer run (`audiossl finetune`). Srivastava et al. fine-tune the
    conformer on AudioSet with mixup, SpecAugment and layer-wise LR decay over a mean-pooled linear
    head; their values are not recorded in this repository, so the rates are EAT's AS-20K recipe
    (configs/eat.py `finetune_settings`), with SpecAugment's masks scaled to this input (20% of the
    mel bins and frames), mean pooling, no LayerNorm before the head and no stochastic depth (the
    conformer has none: dropout stays config.model's)."""
    f = finetune_defaults()
    f.update(
        batch_size=48,
        steps=40_000,
        lr=5e-5,
        warmup_steps=4000,
        end_lr=1e-6,
        b1=0.9,
        b2=0.95,
        weight_decay=0.05,
        layer_decay=0.65,
        mixup_alpha=0.8,
        mixup_prob=0.9,  # EAT's AS-20K values
        pooling="mean",
        head_norm=False,
        specaug_freq=0.2 * 64,
        specaug_time=0.2 * crop_frames,
    )
    if variant == "local":  # the demo's 400 clips: as configs/eat.py:local
        f.update(
            batch_size=8,
            steps=1200,
            lr=5e-4,
            warmup_steps=100,
            log_every=20,
            eval_every=300,
            ckpt_every=300,
            mixup_prob=0.0,
            specaug_freq=0.0,
            specaug_time=0.0,
        )
    elif variant == "tiny":
        f.update(batch_size=2, steps=4, warmup_steps=1, log_every=1, eval_every=2, ckpt_every=2)
    return f
