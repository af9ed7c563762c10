"""A frozen encoder loaded from a pre-training workdir, for embedding raw audio.

`FrozenEncoder.load(workdir)` reads `<workdir>/config.json`, the front end and per-bin statistics of
the data the run was trained on from `<workdir>/data_stats.json` (a run made before that file: the
manifest of `config.data.train_dir`; `train/run_files.py`), and restores only `params` and
`aux` of the latest checkpoint (an orbax partial restore onto an abstract init: no optimizer is
built and no training data is read). `embed_waves` turns 16 kHz waveforms into clip embeddings and
frame embeddings with timestamps, exactly as `audiossl probe` sees prepared clips: the run's front
end, float16 rounding (prep stores float16), the run's normalisation, windows of the probe window.

Long inputs are cut into consecutive windows of `window` input frames (rounded down to a multiple of
the encoder's frame stride, so output frames never straddle two windows); every window is embedded
on its own and the frames are concatenated. The clip embedding of a multi-window input is the mean
of the windows' clip embeddings weighted by their real input frames; an input that fits one window
gets exactly that window's clip embedding (what the probe computes for the same clip).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.data import pipeline, records
from audiossl_jax.features import frontends
from audiossl_jax.train.restore import restore_variables

_STRIDE_PROBE_FRAMES = 1024  # a multiple of every frame stride in use (stack 4, CNN 8, patches 16)


@dataclasses.dataclass
class Embedded:
    """One input's embeddings: clip [D], frames [T', D], times [T'] (frame centres, seconds)."""

    clip: np.ndarray
    frames: np.ndarray
    times: np.ndarray


def _frame_valid(out: dict, valid: jax.Array, stride: int) -> jax.Array:
    """The output frames' validity: the objective's own `valid` (every built-in objective returns it;
    `frames_valid` is the older name a custom objective may still use), else (a custom objective that
    returns none) "any of the `stride` input frames it covers is real", the built-in encoders' rule."""
    for key in ("valid", "frames_valid"):
        if key in out:
            return out[key]
    t_out = out["frames"].shape[1]
    pad = max(t_out * stride - valid.shape[1], 0)
    padded = jnp.pad(valid, ((0, 0), (0, pad)))[:, : t_out * stride]
    return padded.reshape(valid.shape[0], t_out, stride).any(-1)


class FrozenEncoder:
    """Params + front end + normalisation of one run; see the module docstring."""

    def __init__(
        self,
        config,
        objective,
        params,
        aux,
        step: int,
        *,
        frontend: frontends.Frontend,
        mean: np.ndarray,
        std: np.ndarray,
        mesh,
        window: int | None = None,
        batch_size: int | None = None,
    ):
        from audiossl_jax.evaluate import evaluator
        from audiossl_jax.parallel import sharding as sharding_lib

        self.config, self.objective, self.params, self.aux, self.step = config, objective, params, aux, step
        self.frontend, self.mesh = frontend, mesh
        self._mean, self._inv_std = np.asarray(mean, np.float32), (1.0 / np.asarray(std, np.float32))
        self.mel_bins = frontend.num_mel_bins
        self.batch_size = int(batch_size or config.probe.embed_batch_size)
        self.stride = self._frame_stride()
        requested = int(window or evaluator.probe_window(config))
        self.window = max(self.stride, requested - requested % self.stride)
        self._batch_sharding = sharding_lib.batch_sharding(mesh, config.rules)
        stride = self.stride

        def embed(p, a, features, valid):
            out = objective.embed(p, a, features, valid)
            return {"clip": out["clip"], "frames": out["frames"], "valid": _frame_valid(out, valid, stride)}

        self._embed = jax.jit(sharding_lib.with_activation_rules(embed, mesh, config.rules))
        self._embed_clip = jax.jit(
            sharding_lib.with_activation_rules(
                lambda p, a, f, v: objective.embed(p, a, f, v)["clip"], mesh, config.rules
            )
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        workdir: str,
        *,
        random_init: bool = False,
        window_seconds: float | None = None,
        batch_size: int | None = None,
    ) -> FrozenEncoder:
        """The latest checkpoint of `workdir` (or its random init), ready to embed audio."""
        from audiossl_jax.objectives import registry as objectives
        from audiossl_jax.parallel import mesh as mesh_lib
        from audiossl_jax.train.run_files import load_data_stats, load_run_config

        config = load_run_config(workdir)
        stats, stats_dir = load_data_stats(workdir, config)
        frontend = frontends.frontend_from_params(stats["frontend"])
        mean, std = pipeline._normaliser(stats_dir, None, stats, **pipeline.normalization_kwargs(config.data))
        mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
        objective = objectives.build(config)
        with jax.set_mesh(mesh):
            params, aux, step = restore_variables(
                config,
                workdir,
                objective,
                mesh,
                int(stats["mel_bins"]),
                int(stats["num_classes"]),
                random_init=random_init,
            )
        window = None if window_seconds is None else max(1, int(round(window_seconds * frontend.frame_rate)))
        return cls(
            config,
            objective,
            params,
            aux,
            step,
            frontend=frontend,
            mean=mean,
            std=std,
            mesh=mesh,
            window=window,
            batch_size=batch_size,
        )

    def _frame_stride(self) -> int:
        """Input frames per output frame, from the shapes the encoder returns for a long input."""
        t = _STRIDE_PROBE_FRAMES
        shape = jax.eval_shape(
            lambda p, a, f, v: self.objective.embed(p, a, f, v)["frames"],
            self.params,
            self.aux,
            jax.ShapeDtypeStruct((1, t, self.mel_bins), jnp.float32),
            jax.ShapeDtypeStruct((1, t), jnp.bool_),
        )
        return max(1, int(round(t / shape.shape[1])))

    # ------------------------------------------------------------------ features
    def features(self, wave: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 [samples] -> normalised features [frames, mel], as the probe reads them
        from prepared shards (front end -> float16 -> (x - mean) / std)."""
        wave = np.asarray(wave, np.float32)
        if wave.shape[0] < self.frontend.min_samples():
            wave = np.pad(wave, (0, self.frontend.min_samples() - wave.shape[0]))
        feats = self.frontend(wave).astype(records.FEATURE_DTYPE).astype(np.float32)
        return (feats - self._mean) * self._inv_std

    def frame_times(self, num_frames: int) -> np.ndarray:
        """Centre (seconds) of each of the `num_frames` input frames of the front end."""
        o = dict(self.frontend.options)
        offset = 0.0  # librosa_mel: centred frames
        if self.frontend.name == "kaldi_fbank":  # snip_edges: frame j spans [j * shift, j * shift + size)
            size = int(frontends.SAMPLE_RATE * o["frame_length_ms"] / 1000)
            offset = size / 2 / frontends.SAMPLE_RATE
        return offset + np.arange(num_frames) / self.frontend.frame_rate

    # ------------------------------------------------------------------ embedding
    def embed_features(self, items: Iterable[np.ndarray], progress=None) -> Iterator[Embedded]:
        """Normalised features [frames, mel] per input -> `Embedded` per input, in order, batched
        over windows of all inputs. `progress`: a tqdm bar advanced by one per input."""
        pending: list[tuple[int, int, np.ndarray]] = []  # (input index, window index, window)
        windows_of: dict[int, int] = {}
        lengths: dict[int, int] = {}
        done: dict[int, list] = {}
        next_out = 0
        for i, feats in enumerate(items):
            lengths[i] = feats.shape[0]
            n = max(1, -(-feats.shape[0] // self.window))
            windows_of[i] = n
            done[i] = [None] * n
            for w in range(n):
                pending.append((i, w, feats[w * self.window : (w + 1) * self.window]))
                if len(pending) == self.batch_size:
                    self._run(pending, done)
                    pending = []
                    while next_out < i + 1 and all(x is not None for x in done[next_out]):
                        yield self._assemble(done.pop(next_out), lengths.pop(next_out))
                        if progress is not None:
                            progress.update(1)
                        next_out += 1
        if pending:
            self._run(pending, done)
        while done:
            yield self._assemble(done.pop(next_out), lengths.pop(next_out))
            if progress is not None:
                progress.update(1)
            next_out += 1

    def embed_waves(self, waves: Iterable[np.ndarray], progress=None) -> Iterator[Embedded]:
        """16 kHz mono waveforms -> `Embedded` per waveform (see `embed_features`)."""
        return self.embed_features((self.features(w) for w in waves), progress=progress)

    def _run(self, pending, done) -> None:
        from audiossl_jax.parallel import sharding as sharding_lib

        b, t = self.batch_size, self.window
        features = np.zeros((b, t, self.mel_bins), np.float32)
        valid = np.zeros((b, t), bool)
        for row, (_, _, x) in enumerate(pending):
            features[row, : len(x)] = x
            valid[row, : len(x)] = True
        batch = sharding_lib.global_batch({"features": features, "valid": valid}, self._batch_sharding)
        with jax.set_mesh(self.mesh):
            out = jax.device_get(self._embed(self.params, self.aux, batch["features"], batch["valid"]))
        for row, (i, w, x) in enumerate(pending):
            done[i][w] = (
                np.asarray(out["clip"][row], np.float32),
                np.asarray(out["frames"][row], np.float32),
                np.asarray(out["valid"][row], bool),
                len(x),
            )

    def _assemble(self, windows: list, length: int) -> Embedded:
        in_times = self.frame_times(len(windows) * self.window)
        frames, times, clips, weights = [], [], [], []
        for w, (clip, f, v, real) in enumerate(windows):
            k = np.arange(f.shape[0])
            centre = w * self.window + k * self.stride + (self.stride - 1) / 2  # in input frames
            frames.append(f[v])
            times.append(np.interp(centre[v], np.arange(len(in_times)), in_times))
            clips.append(clip)
            weights.append(real)
        weights = np.asarray(weights, np.float64)
        clip = clips[0] if len(clips) == 1 else (np.stack(clips) * (weights / weights.sum())[:, None]).sum(0)
        return Embedded(clip.astype(np.float32), np.concatenate(frames).astype(np.float32), np.concatenate(times))

    @property
    def embedding_size(self) -> int:
        return int(
            jax.eval_shape(
                self._embed_clip,
                self.params,
                self.aux,
                jax.ShapeDtypeStruct((1, self.window, self.mel_bins), jnp.float32),
                jax.ShapeDtypeStruct((1, self.window), jnp.bool_),
            ).shape[-1]
        )

    @property
    def frame_embedding_size(self) -> int:
        return int(
            jax.eval_shape(
                lambda p, a, f, v: self.objective.embed(p, a, f, v)["frames"],
                self.params,
                self.aux,
                jax.ShapeDtypeStruct((1, self.window, self.mel_bins), jnp.float32),
                jax.ShapeDtypeStruct((1, self.window), jnp.bool_),
            ).shape[-1]
        )

    def embed_fn(self):
        """(params, aux, features, valid) -> clip embeddings, jitted: for `embed.extract` on prepared splits."""
        return self._embed_clip
