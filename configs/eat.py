"""EAT pre-training of an audio ViT (Chen et al., 2024) and its fine-tuning recipe.

    audiossl pretrain --config configs/eat.py:base    # the paper's EAT-base on AudioSet-2M
    audiossl pretrain --config configs/eat.py:local   # CPU smoke run on the demo data (minutes)

Variants: base, large (the reference's pretraining_AS2M[_large].yaml), finetune_base (base with
drop path 0.1, as the reference's fine-tuning model), local (small ViT for 2 CPU cores), tiny (tests).
Every variant carries `config.finetune` (EAT's AS-20K fine-tuning; smaller for local/tiny), which
`audiossl finetune --workdir <pretrain run>` uses.
Where each value comes from: docs/methods/eat.md.
"""

import ml_collections
from ml_collections import config_dict

from audiossl_jax.config_loader import parse_arg
from audiossl_jax.train.config_defaults import base_config, finetune_defaults

VARIANTS = ("base", "large", "finetune_base", "local", "tiny")
EAT_GPU_BATCH = 12  # the reference's per-GPU batch (4 GPUs x 12 = 48 clips per update)


def _utterance_weight(cls_loss: float, clips_per_replica: int, clones: int) -> float:
    """The reference sums the CLS loss over a replica's clips x clones and divides both losses by the
    masked-patch count; our utterance loss is a mean, so its weight carries that factor."""
    return float(cls_loss * clips_per_replica * clones)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, name="configs/eat.py", variant="base", choices={"variant": VARIANTS}).variant
    c = base_config()
    c.method = "eat"

    m = c.model
    m.dim = 768
    m.depth = 12
    m.num_heads = 12
    m.mlp_ratio = 4.0
    m.patch_size = 16  # 16 frames x 16 mel bins: 1024 x 128 -> 64 x 8 = 512 patches
    m.pre_norm = False  # EAT's post-LN blocks (data2vec AltBlock, layer_norm_first=False)
    m.ln_eps = 1e-6
    m.drop_path = 0.0
    m.cls_init_std = 1.0
    m.scan = False  # Python loop over blocks: faster steps on CPU; True compiles faster
    m.remat = False
    m.decoder_dim = 768
    m.decoder_layers = 6
    m.decoder_kernel = 3
    m.decoder_groups = 16
    m.decoder_conv_impl = "auto"  # per_group on CPU, feature_group_count on GPU/TPU

    o = c.objective
    o.clone_batch = 16
    o.mask_prob = 0.8
    o.mask_prob_adjust = 0.07
    o.mask_block = 5  # visible 5x5-patch blocks
    o.average_top_k_layers = 12
    o.target_site = "ffn"  # per-layer teacher output: "ffn" (EAT, end_of_block_targets=False) | "block"
    o.instance_norm_target_layer = True
    o.layer_norm_targets = True
    o.frame_loss_weight = 1.0  # d2v_loss
    o.utterance_loss_weight = _utterance_weight(1.0, EAT_GPU_BATCH, o.clone_batch)  # cls_loss 1 -> 192
    o.loss_scale = config_dict.placeholder(float)  # None: 1/sqrt(dim)
    # Clip target of the utterance loss: "normed" (EAT: the mean of the instance-normed frame targets,
    # ~0 for every clip) | "raw" (the mean of the teacher layers before instance norm, layer-normed).
    o.utterance_target = "normed"
    o.mask_noise_std = 0.01  # masked decoder inputs ~ N(0, 0.01)
    o.ema_decay = 0.9998
    o.ema_end_decay = 0.99999
    o.ema_anneal_steps = 100_000
    # Clip embedding for `audiossl probe`: "mean" = time mean of the frames (patch tokens concatenated
    # over mel), or "cls". On the demo data the CLS stays near chance; the mean beats random init.
    # Fine-tuning pools with config.finetune.pooling ("cls", as EAT).
    o.embed_clip = "mean"

    # Input: 128-bin Kaldi fbank (hanning window, 25/10 ms, dither 0), 1024 frames, zero-padded then
    # normalised with one global pair: (x - norm_mean) / norm_std = (x + 4.268) / (2 * 4.569).
    c.data.frontend = ml_collections.ConfigDict(dict(name="kaldi_fbank", window_type="hanning", num_mel_bins=128))
    c.data.crop_frames = 1024
    c.data.batch_size = 4 * EAT_GPU_BATCH
    c.data.normalization = "global"  # "global": norm_mean/norm_std below | "per_bin": manifest mean/std
    c.data.norm_mean = -4.268  # AudioSet fbank mean (AST/EAT)
    c.data.norm_std = 2 * 4.569  # EAT divides by twice the AudioSet std

    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 53_333
    c.optimizer.decay = "cosine"
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.05
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8  # fairseq Adam default
    c.optimizer.clip_norm = 4.0
    c.train.steps = 400_000
    c.train.log_every = 200
    c.train.ckpt_every = 10_000
    c.finetune = finetune_settings()

    if variant == "large":
        m.update(dim=1024, depth=24, num_heads=16, decoder_dim=1024, decoder_kernel=5, decoder_layers=3)
        o.average_top_k_layers = 24
        o.mask_prob = 0.75
        o.mask_prob_adjust = 0.1
        o.ema_anneal_steps = 150_000
        c.optimizer.lr = 4e-4
    elif variant == "finetune_base":
        m.drop_path = 0.1
    elif variant == "local":
        m.update(dim=192, depth=4, num_heads=3, decoder_dim=192, decoder_layers=3)
        o.average_top_k_layers = 4
        o.clone_batch = 4  # ~0.5 s per step on 2 idle cores: 600 steps in ~5 minutes
        c.data.batch_size = 8
        c.data.crop_frames = 400  # 4 s demo clips -> 25 x mel/16 patches
        c.data.shuffle_buffer = 256
        c.data.normalization = "per_bin"  # the demo data's own statistics
        # Not the reference's cls_loss x clips x clones (32 here): at 600 steps that weight spends the
        # run shrinking the CLS and the probe falls below random init on the real-audio benchmark;
        # weight 1 beats random init on 2 of its 3 tasks (docs/methods/eat.md, "Real-audio benchmark").
        o.utterance_loss_weight = 1.0
        o.ema_decay, o.ema_end_decay, o.ema_anneal_steps = 0.999, 0.9999, 600
        c.optimizer.lr = 1e-3
        c.optimizer.warmup_steps = 60
        c.train.steps = 600
        c.eval.every = 300  # in-training probe (demo: its labelled eval split; or --config.eval.suite)
        c.train.log_every = 20
        c.train.ckpt_every = 200
        # 400 demo clips: with mixup + SpecAugment, 300 steps left both encoders at chance; without
        # them 1200 steps learn (docs/methods/eat.md, "Demo run").
        c.finetune.update(
            batch_size=8,
            steps=1200,
            lr=5e-4,
            warmup_steps=100,
            end_lr=1e-6,
            log_every=20,
            eval_every=300,
            pooling="mean",
            mixup_prob=0.0,
            specaug_freq=0.0,
            specaug_time=0.0,
        )
        c.finetune.ckpt_every = 300  # fine-tuning checkpoints (audiossl finetune resumes from them)
    elif variant == "tiny":
        m.update(dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_layers=2, decoder_groups=4)
        # tests: 64-bin fbank, any window (pretrain checks only the declared fields against the data)
        c.data.frontend = ml_collections.ConfigDict(dict(name="kaldi_fbank", num_mel_bins=64))
        o.average_top_k_layers = 2
        o.clone_batch = 2
        c.data.batch_size = 2
        c.data.crop_frames = 64
        c.data.shuffle_buffer = 16
        c.data.normalization = "per_bin"
        o.utterance_loss_weight = _utterance_weight(1.0, c.data.batch_size, o.clone_batch)
        o.ema_anneal_steps = 10
        c.optimizer.warmup_steps = 2
        c.train.steps = 4
        c.train.log_every = 1
        c.train.ckpt_every = 2
        c.finetune.update(
            batch_size=2,
            steps=4,
            warmup_steps=1,
            log_every=1,
            eval_every=2,
            specaug_freq=0.2 * 64,
            specaug_time=0.2 * c.data.crop_frames,
        )
        c.finetune.ckpt_every = 2  # fine-tuning checkpoints (audiossl finetune resumes from them)
    return c


def finetune_settings() -> ml_collections.ConfigDict:
    """`config.finetune`: EAT's AS-20K fine-tuning (the reference's config/finetuning.yaml +
    scripts/finetuning_AS20K.sh; docs/methods/eat.md). `local` and `tiny` shrink it in get_config."""
    f = finetune_defaults()
    f.update(
        batch_size=48,
        steps=40_000,
        lr=5e-5,
        warmup_steps=4000,
        end_lr=1e-6,  # cosine min_lr
        b1=0.9,
        b2=0.95,
        weight_decay=0.05,
        clip_norm=0.0,  # none in the reference fine-tuning config
        layer_decay=0.65,  # block i of L gets lr * 0.65 ** (L - i)
        drop_path=0.1,  # stochastic depth rising linearly over the blocks
        pooling="cls",  # CLS -> fc_norm (head_norm) -> linear
        mixup_alpha=0.8,
        mixup_prob=0.9,
        specaug_freq=0.2 * 128,
        specaug_time=0.2 * 1024,
    )  # torchaudio masks, mask_ratio 0.2
    return f
