"""audiossl-jax: self-supervised pre-training of audio encoders in JAX/Flax."""

import setuptools

# Direct dependencies, pinned. `constraints.txt` pins the full resolved set.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "numpy==2.4.6",
    "ml-collections==1.1.0",
    "einops==0.8.2",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "scikit-learn==1.9.1",
    "threadpoolctl==3.8.0",
    "matplotlib==3.11.2",  # learning-curve PNGs
    "safetensors==0.7.0",  # `audiossl export` (its numpy API: no torch)
]
# ruff: lint + format (ruff.toml); pytest-xdist: `make test` runs the suite on 2 worker processes
DEV_REQUIRES = ["pytest==9.2.0", "pytest-xdist==3.8.0", "chex==0.1.92", "ruff==0.17.6"]
# `audiossl prep --runner direct|dataflow|flink|spark` (data/beam_prep.py); Dataflow also needs
# `apache-beam[gcp]` on the machine that submits the job.
BEAM_REQUIRES = ["apache-beam==2.77.0"]

setuptools.setup(
    name="audiossl-jax",
    version="0.1.0",
    description="Self-supervised pre-training of audio encoders (wav2vec 2.0 conformer, EAT, SLICER) in JAX/Flax",
    packages=setuptools.find_packages(include=["audiossl_jax", "audiossl_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES, "beam": BEAM_REQUIRES},
    entry_points={"console_scripts": ["audiossl=audiossl_jax.cli:main"]},
)
