"""Leave-one-group-out linear probe of a pre-training run on one task of the real-audio benchmark.

    .venv/bin/python -m tools.real_audio.group_folds --workdir runs/slicer_cpu --task drums

A task's test split holds out one group (drums: one soundfont), so its score rests on that group
alone: the drum test split is one soundfont on which the random-init CNN already scores 0.99 mAP.
Here the labelled clips of both splits are pooled and each group is held out in turn. The probe
(`config.probe`, the code of the in-training probe) is fit on the other groups and scored on the
held-out one. Groups are the first `--depth` parts of the `group` column of
`<benchmark>/audio/<task>/{train,test}_meta.csv` (drums, depth 1: the soundfont). Encoders: the
run's latest checkpoint, its random init and the model-free log-mel statistics. Prints a table and
writes `<workdir>/group_folds_<task>.json`. Single process (the benchmark is small).

`--family csound+timgm6mb` holds out groups that share their sources together: TimGM6mb's drum
samples are those of csound's GM bank (same names and lengths; its open hi-hat and crash are
resampled to 22,050 Hz), so holding out one of the two leaves near-copies of its clips in training
(docs/real_audio_benchmark.md). The report then goes to `group_folds_<task>_families.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import jax
import numpy as np

from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import embed, evaluator, scoring
from audiossl_jax.evaluate.probe import encoder_variables
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.train.run_files import load_data_stats, load_run_config

ENCODERS = ("pre-trained", "random init", "log-mel stats")


def read_groups(benchmark: str, task: str, depth: int = 1) -> dict[str, str]:
    """clip id (the CSV path, as `audiossl prep` stores it) -> group (its first `depth` parts)."""
    groups = {}
    for split in ("train", "test"):
        path = os.path.join(benchmark, "audio", task, f"{split}_meta.csv")
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                groups[row["path"]] = "/".join(row["group"].split("/")[:depth])
    return groups


def merge_families(groups_of: dict[str, str], families: list[str]) -> dict[str, str]:
    """Each family "a+b+..." becomes one group: clips of groups a, b, ... get the group "a+b+..."."""
    known = set(groups_of.values())
    rename = {}
    for family in families:
        members = family.split("+")
        unknown = [m for m in members if m not in known]
        if len(members) < 2 or unknown:
            raise SystemExit(
                f"--family {family}: need two or more of the task's groups joined by '+'"
                + (f"; unknown: {', '.join(unknown)} (groups: {', '.join(sorted(known))})" if unknown else "")
            )
        taken = [m for m in members if m in rename]
        if taken:
            raise SystemExit(f"--family {family}: {taken[0]} is already in --family {rename[taken[0]]}")
        rename.update({m: family for m in members})
    return {clip: rename.get(g, g) for clip, g in groups_of.items()}


def fold_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, probe_config, seed: int) -> dict[str, dict]:
    """For each group g (sorted): the probe fit on the clips of the other groups, scored on g's."""
    out = {}
    for g in sorted(set(groups.tolist())):
        test = groups == g
        r = scoring.score_task(
            x[~test], y[~test], x[test], y[test], probe_config=probe_config, seed=seed, task_type="multiclass"
        )
        out[g] = {"top1": float(r["top1"]), "mAP": float(r["mAP"]), "clips": int(test.sum())}
    return out


def summary(folds: dict[str, dict]) -> dict[str, float]:
    return {k: float(np.mean([f[k] for f in folds.values()])) for k in ("top1", "mAP")}


def _embed_clips(embed_fn, params, aux, data_dir: str, kwargs: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs, ys, ids = [], [], []
    for batch in pipeline.eval_iterator(data_dir, with_clip_id=True, **kwargs):
        keep = batch["_mask"].astype(bool)
        xs.append(np.asarray(embed_fn(params, aux, batch["features"], batch["valid"]))[keep])
        ys.append(batch["labels"][keep])
        ids += [c.decode() for c in batch["clip_id"][keep]]
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys), ids


def _encoder_folds(config, workdir, name, mesh, split_dirs, kwargs, groups_of) -> dict:
    objective, params, aux, step = encoder_variables(config, workdir, random_init=name != "pre-trained", mesh=mesh)
    if name == "log-mel stats":
        embed_fn = evaluator.logmel_stats_fn
    else:
        embed_fn = embed.make_embed_fn(objective, mesh, config.rules)
    parts = [_embed_clips(embed_fn, params, aux, d, kwargs) for d in split_dirs]
    missing = [c for p in parts for c in p[2] if c not in groups_of]
    if missing:
        raise SystemExit(f"{len(missing)} clips have no group in the meta CSVs, e.g. {missing[0]}")
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    groups = np.array([groups_of[c] for p in parts for c in p[2]])
    folds = fold_scores(x, y, groups, probe_config=config.probe, seed=int(config.seed))
    return {"step": int(step), "folds": folds, "mean": summary(folds)}


def run(workdir: str, task: str, benchmark: str, depth: int = 1, families: list[str] | None = None) -> dict:
    if jax.process_count() > 1:
        raise SystemExit("group_folds runs on one process")
    config = load_run_config(workdir)
    groups_of = merge_families(read_groups(benchmark, task, depth), families or [])
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    _, stats_dir = load_data_stats(workdir, config)
    kwargs = dict(
        batch_size=int(config.probe.embed_batch_size),
        crop_frames=evaluator.probe_window(config),
        stats_dir=stats_dir,
        **pipeline.normalization_kwargs(config.data),
    )
    split_dirs = [os.path.join(benchmark, "data", config.data.frontend.name, task, s) for s in ("train", "test")]
    report = {
        "workdir": workdir,
        "task": task,
        "benchmark": benchmark,
        "group_depth": depth,
        "families": families or [],
        "encoders": {},
    }
    with jax.set_mesh(mesh):
        for name in ENCODERS:
            report["encoders"][name] = _encoder_folds(config, workdir, name, mesh, split_dirs, kwargs, groups_of)
    return report


def format_table(report: dict) -> str:
    groups = list(next(iter(report["encoders"].values()))["folds"])
    head = f"{'encoder (top-1 / mAP)':<26}" + "".join(f"{g:>16}" for g in groups) + f"{'mean':>16}"
    rows = [head, "-" * len(head)]
    for name, e in report["encoders"].items():
        cells = [f"{f['top1']:.3f} / {f['mAP']:.3f}" for f in e["folds"].values()]
        label = f"{name} (step {e['step']})" if name == "pre-trained" else name
        rows.append(
            f"{label:<26}" + "".join(f"{c:>16}" for c in cells) + f"{e['mean']['top1']:>9.3f} / {e['mean']['mAP']:.3f}"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a pre-training run (its latest checkpoint is probed)")
    ap.add_argument("--task", default="drums", help="a labelled task of the benchmark (default: drums)")
    ap.add_argument("--benchmark", default="runs/real_audio", help="the benchmark's folder (make real-audio)")
    ap.add_argument("--depth", type=int, default=1, help="group = the first DEPTH parts of the group column")
    ap.add_argument(
        "--family",
        action="append",
        default=[],
        help="groups held out together, joined by '+' (e.g. csound+timgm6mb: shared samples); repeatable",
    )
    args = ap.parse_args(argv)
    report = run(args.workdir, args.task, args.benchmark, args.depth, args.family)
    print(format_table(report))
    suffix = "_families" if args.family else ""
    out = os.path.join(args.workdir, f"group_folds_{args.task}{suffix}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
