"""SLICER (Seth et al., ICASSP 2023) pre-training configs.

`get_config(arg)`, arg = "<variant>[,encoder=<cnn|conformer|vit>]":
  paper  the paper / released code values (github.com/Sreyan88/LAPE, src/upstream/slicer/config.yaml)
  local  a few-minute CPU run on the built-in demo data (`audiossl demo-data`)
  cpu    `local` retuned on the real-audio benchmark (`make real-audio`; docs/methods/slicer.md)
  tiny   unit tests and smoke runs (seconds)
Example: `audiossl pretrain --config configs/slicer.py:local --workdir runs/slicer_local`.
"""

import ml_collections
from ml_collections import config_dict

from audiossl_jax.config_loader import parse_arg
from audiossl_jax.train.config_defaults import base_config, finetune_defaults

VARIANTS = ("paper", "local", "cpu", "tiny")
ENCODERS = ("cnn", "conformer", "vit")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg,
        name="configs/slicer.py",
        variant="paper",
        encoder="cnn",
        choices={"variant": VARIANTS, "encoder": ENCODERS},
    )
    c = base_config()
    c.method = "slicer"

    # Input: 64-bin librosa log-mel (prep with the `librosa_mel` front end), 0.95 s crops = 96 frames.
    c.data.frontend = ml_collections.ConfigDict(dict(name="librosa_mel", num_mel_bins=64))  # `audiossl prep --config`
    c.data.crop_frames = 96
    c.data.batch_size = 512  # LAPE: 128 per GPU x 4 GPUs
    c.probe.crop_frames = 1001  # the probe embeds whole 10 s clips (BYOL-A / LAPE evaluate whole clips)

    m = c.model
    m.encoder = args.encoder  # cnn = BYOL-A AudioNTT2020 (the paper's); or conformer / vit below
    # The other encoders' settings (models/factory.py): size = models/conformer.py SIZES; the ViT is ViT-B (EAT)
    m.conformer = ml_collections.ConfigDict(
        dict(size="S", stack=4, rotary=True, dropout_rate=0.1, attention_dropout_rate=0.1, input_dropout_rate=0.1)
    )
    m.vit = ml_collections.ConfigDict(dict(dim=768, depth=12, num_heads=12, patch_size=16))
    m.num_mel_bins = 64
    m.channels = 64  # conv channels of each of the 3 blocks
    m.blocks = 3
    m.dim = 2048  # FC width = embedding size
    m.dropout = 0.3
    m.instance_dim = 128  # instance head output
    m.instance_hidden = 0  # 0: linear instance head (SLICER, MoCo v1); > 0: MLP with this hidden width (MoCo v2)
    m.clusters = 128  # cluster head output K
    m.cluster_hidden = 2048

    o = c.objective
    o.temperature = 0.07
    o.queue_size = 65536
    o.cluster_temperature = 1.0
    o.cluster_entropy_weight = 0.0  # LAPE's ClusterLoss leaves it out; Contrastive Clustering uses 1.0
    o.instance_weight = 1.0
    o.cluster_weight = 1.0
    o.momentum = 0.999
    o.bn_stats_from = "views"  # student BatchNorm running stats from the augmented views or the "clean" batch
    o.embed_conv_blocks = ()  # conv blocks whose pooled outputs join the embedding (CNN; () = FC only)
    # With "clean": that pass's running-stats momentum (None: the encoder's 0.9).
    o.clean_bn_momentum = config_dict.placeholder(float)

    a = o.augment = ml_collections.ConfigDict()
    a.mixup_ratio = 0.4  # BYOL-A mixup (0 = off)
    a.rrc = True  # BYOL-A random-resize-crop
    a.rrc_virtual_scale = (1.0, 1.5)  # (mel, time)
    a.rrc_freq_scale = (0.6, 1.5)
    a.rrc_time_scale = (0.6, 1.5)
    a.kmix_ratio = 0.4  # k-mix (0 = off)
    a.kmix_clusters = 4  # LAPE config: cluster 4
    a.kmix_min_bank = 128  # LAPE: farthest-cluster partners once the bank holds 128 clips
    a.kmix_fit_examples = 2048  # k-means sample: the first full bank of the shuffled stream
    a.kmeans_iters = 20  # LAPE: faiss niter 20
    a.bank_size = 2048  # BYOL-A / LAPE memory bank

    # LAPE trains with SGD (lr 0.03, momentum 0.9, wd 1e-4); the project's optimizer is AdamW, so
    # this uses BYOL-A's Adam learning rate 3e-4 with LAPE's weight decay.
    c.optimizer.lr = 3e-4
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 500
    # 50 epochs (LAPE's max_epochs) of a ~0.2 M clip pre-training set (10% of AudioSet, an
    # assumption about the low-resource setting) at batch 512.
    c.train.steps = 50 * 200_000 // 512
    c.train.log_every = 100
    c.train.ckpt_every = 2000

    if args.variant in ("local", "cpu"):
        # A few-minute CPU run on the built-in demo data (4 s clips of sparse synthetic events); the
        # choices below and the measurements behind them are in docs/methods/slicer.md.
        c.data.batch_size = 16
        c.data.crop_frames = 400  # the whole 4 s demo clip (401 frames); the probe embeds the same window
        c.probe.crop_frames = 400
        c.data.shuffle_buffer = 400
        m.channels = 32  # half BYOL-A's 64: 0.86 s per step on 4 s crops on the 2-core CPU (bench/RESULTS.md)
        m.dim = 512  # BYOL-A's default width
        m.cluster_hidden = 512
        m.clusters = 16  # K <= batch: the cluster loss contrasts the K columns of a [batch, K] matrix
        o.queue_size = 256  # 8 steps of keys, well under one epoch (2 x 400): else every query's own
        #                     older keys sit in the queue as negatives
        o.momentum = 0.99  # 0.999 would leave the teacher 67% random-init after 400 steps
        # No BYOL-A mixup, no k-mix: on the demo's sparse events a mixed-in partner adds salient events
        # to one view, and the probe (which events are present) got worse with them (k-mix 0.2:
        # -0.02 to -0.03 mAP). The bank sizes below apply when they are turned back on.
        a.mixup_ratio = 0.0
        a.kmix_ratio = 0.0
        a.bank_size = 256
        a.kmix_fit_examples = 256
        a.kmix_min_bank = 64
        c.optimizer.lr = 5e-4  # 1e-3 and 2e-3 probed worse
        c.optimizer.warmup_steps = 20
        c.train.steps = 400
        c.eval.every = 200  # in-training probe (demo: its labelled eval split; or --config.eval.suite)
        c.train.log_every = 10
        c.train.ckpt_every = 100
    if args.variant == "cpu":
        # `local` on real audio (the benchmark of `make real-audio`, 73 min of 4 s clips): 1.9 s
        # training crops (twice the views per clip, half the step time), whole clips probed, and
        # BYOL-A's mixup back on. The random-resize-crop without its time stretch and with a mild
        # frequency warp (0.9-1.11): the wide warp taught the encoder to ignore what the drum-type
        # probe needs. The embedding adds conv blocks 1 and 2 to the FC output (the FC output alone
        # is the most augmentation-invariant layer). 600 steps (~0.45 s each on 2 idle cores before the
        # clean-batch BatchNorm pass was added; not re-timed). What
        # each choice measured: docs/methods/slicer.md, "Real-audio benchmark".
        c.data.train_dir = "runs/real_audio/data/librosa_mel/unlabelled"
        c.eval.suite = "runs/real_audio/data/librosa_mel/suite.json"
        c.data.crop_frames = 192
        c.probe.crop_frames = 400
        a.mixup_ratio = 0.4
        a.rrc_freq_scale = (0.9, 1.11)
        a.rrc_time_scale = (1.0, 1.0)
        o.embed_conv_blocks = (1, 2)
        # BatchNorm statistics for embedding from the clean batches, averaged over ~100 steps: the
        # views' 10-step average made the drum probe swing by up to 0.05 between evaluations.
        o.bn_stats_from = "clean"
        o.clean_bn_momentum = 0.99
        c.train.steps = 600
        c.eval.every = 300
    elif args.variant == "tiny":
        c.data.batch_size = 4
        c.data.crop_frames = 32
        c.probe.crop_frames = None  # the pre-training crop
        c.data.shuffle_buffer = 16
        m.channels = 4
        m.dim = 32
        m.instance_dim = 8
        m.clusters = 6
        m.cluster_hidden = 16
        m.conformer.size = "tiny"
        m.vit.update(dim=32, depth=2, num_heads=2)
        o.queue_size = 32
        a.bank_size = 12
        a.kmix_clusters = 2
        a.kmix_fit_examples = 8
        a.kmix_min_bank = 4
        a.kmeans_iters = 3
        c.optimizer.warmup_steps = 1
        c.train.steps = 4
        c.train.log_every = 2
        c.train.ckpt_every = 2
    c.finetune = finetune_settings(args.variant, c.probe.crop_frames)
    return c


def finetune_settings(variant: str, probe_crop_frames: int | None) -> ml_collections.ConfigDict:
    """`config.finetune` of a SLICER run (`audiossl finetune`): the CNN fine-tuned on the probe's
    window (whole clips) with its own clip embedding (max + mean over time) and a linear head. SLICER
    reports linear evaluation only; the rates are EAT's AS-20K recipe (configs/eat.py) with
    SpecAugment's masks scaled to 64 mel bins, no layer-wise decay (the CNN has no block stack) and
    no stochastic depth (dropout stays config.model.dropout)."""
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
        mixup_alpha=0.8,
        mixup_prob=0.9,  # EAT's AS-20K values
        pooling="max_mean",
        head_norm=False,
        crop_frames=probe_crop_frames,
        specaug_freq=0.2 * 64,
        specaug_time=0.2 * (probe_crop_frames or 96),
    )
    if variant in ("local", "cpu"):  # the demo's 400 clips: as configs/eat.py:local
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
        f.update(batch_size=2, steps=4, warmup_steps=1, log_every=1, eval_every=2, ckpt_every=2, specaug_time=0.2 * 32)
    return f
