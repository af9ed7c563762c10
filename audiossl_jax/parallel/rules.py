"""Logical axis names used by every module, and the default rules mapping them to mesh axes.

Modules annotate params with `nn.with_logical_partitioning(init, names)` and activations with
`nn.with_logical_constraint(x, names)`, using only the names below. The config's `rules` map
them onto the mesh axes `data`, `fsdp`, `tensor`; a name mapped to None is replicated.
"""

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXES = {
    "batch": "examples in a batch",
    "length": "time frames / tokens",
    "mel": "mel bins of the input features",
    "embed": "model width (d_model)",
    "mlp": "hidden width of feed-forward layers",
    "heads": "attention heads",
    "kv": "per-head width",
    "kernel": "convolution taps",
    "channels": "CNN channels",
    "codebook": "quantizer groups x codewords",
    "classes": "output classes",
    "queue": "entries of a queue of negatives",
    "layers": "stacked layers (scan)",
}

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("mel", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("kernel", None),
    ("channels", "tensor"),
    ("codebook", None),
    ("classes", None),
    ("queue", None),
    ("layers", None),
)
