"""Fields shared by every pre-training config; method configs in `configs/` fill in the rest."""
import ml_collections

from audiossl_jax.parallel import rules


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = ""  # one of audiossl_jax.objectives.base.OBJECTIVES
    c.model = ml_collections.ConfigDict()  # encoder fields, method specific
    c.objective = ml_collections.ConfigDict()  # loss/masking fields, method specific

    c.data = ml_collections.ConfigDict()
    c.data.train_dir = "runs/demo/data/train"  # output of `audiossl prep`
    c.data.eval_dir = "runs/demo/data/eval"
    c.data.batch_size = 8  # global batch (split over processes and devices)
    c.data.crop_frames = 1000  # random crop / pad-with-mask to this many frames
    c.data.shuffle_buffer = 1000

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
    return c
