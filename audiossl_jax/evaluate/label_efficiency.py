"""`audiossl label-efficiency`: how the linear probe's (or the fine-tuned classifier's) score grows with
the fraction of train labels, for the pre-trained encoder, the same encoder at random init and any
other run.

    audiossl label-efficiency --workdir runs/mine --fractions 0.1,0.33,1.0 --seeds 3 [--mode finetune]

Each encoder embeds the labelled train split and the eval split once (the probe's embedding:
`objective.embed(...)["clip"]` of the probe window, the run's normalisation); then, for every
fraction and seed, the linear probe and k-NN of `evaluate/scoring.py` (the code of `audiossl probe`)
are fitted on a stratified subset of the train embeddings (`stratified_subset`) and scored on the whole
eval split. Writes `label_efficiency.json` (every fit, mean / std / min / max per encoder and
fraction, the provenance of each encoder and split) and `label_efficiency.png` (metric vs fraction,
error bars = standard deviation over seeds) to the output folder.

`--mode finetune` fine-tunes each encoder (`audiossl finetune`'s recipe, `evaluate/finetune.py`) on
every subset instead: the subset is written as a prepared split (`data/subset.py`, under
`<out>/subsets/`), each fine-tuning runs in `<out>/finetune/<encoder>/<fraction>_seed<seed>` (so an
interrupted command resumes where it stopped) with `config.seed` = the run's seed + the subset's seed,
and its last evaluation of the eval split is the result.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from audiossl_jax.data import provenance
from audiossl_jax.evaluate import embed, evaluator, scoring

OUT_DIR = "label_efficiency"
JSON_FILE = "label_efficiency.json"
PNG_FILE = "label_efficiency.png"
MODES = ("probe", "finetune")
SUMMARY_METRICS = ("mAP", "top1", "top5", "knn_mAP", "knn_top1", "knn_top5", "mean_AUC", "d_prime")


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of about `fraction` of the examples, stratified by class.

    Every example is assigned to its rarest positive class (examples without a label form one more
    group); each group keeps round(fraction x its size) examples, at least one for a labelled group,
    drawn with `np.random.default_rng(seed)`. Then any class that has positives in the split but not
    in the subset (possible for multi-label data) gets one of its examples added. So every class is
    present whenever the split has it, and the same (labels, fraction, seed) give the same subset."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    if fraction == 1.0 or n == 0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    positive = labels > 0.5
    counts = positive.sum(0)
    rarity = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
    group = np.where(positive.any(1), rarity.argmin(1), -1)
    chosen: set[int] = set()
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        k = int(round(fraction * len(members)))
        if g >= 0:
            k = max(k, 1)
        chosen.update(int(i) for i in rng.permutation(members)[:k])
    for c in np.argsort(counts, kind="stable"):
        if counts[c] and not positive[sorted(chosen), c].any():
            chosen.add(int(rng.choice(np.flatnonzero(positive[:, c]))))
    return np.array(sorted(chosen), dtype=np.int64)


def _embed_splits(workdir: str, *, random_init: bool, train_dir: str, eval_dir: str, progress: bool):
    """(encoder record, x_train, y_train, x_eval, y_eval) of one encoder, embedded as the probe does."""
    from audiossl_jax.data import pipeline
    from audiossl_jax.evaluate import encoder as encoder_lib
    from audiossl_jax.train.run_files import load_data_stats

    enc = encoder_lib.FrozenEncoder.load(workdir, random_init=random_init)
    config = enc.config
    kwargs = dict(
        stats_dir=load_data_stats(workdir, config)[1],
        crop_frames=evaluator.probe_window(config),
        batch_size=int(config.probe.embed_batch_size),
        mesh=enc.mesh,
        rules=config.rules,
        normalization=pipeline.normalization_kwargs(config.data),
        embed_fn=enc.embed_fn(),
        progress=progress,
    )
    with jax.set_mesh(enc.mesh):
        x_train, y_train = embed.extract(enc.objective, enc.params, enc.aux, train_dir, desc="embed train", **kwargs)
        x_eval, y_eval = embed.extract(enc.objective, enc.params, enc.aux, eval_dir, desc="embed eval", **kwargs)
    record = {
        "workdir": workdir,
        "random_init": random_init,
        "checkpoint_step": enc.step,
        "crop_frames": kwargs["crop_frames"],
        "embedding_dim": int(x_train.shape[1]),
        "config": provenance.config_dict(config),
    }
    return enc, record, x_train, y_train, x_eval, y_eval


def _summary(rows: list[dict]) -> dict:
    out = {"fits": len(rows), "train_clips": float(np.mean([r["train_clips"] for r in rows]))}
    for key in SUMMARY_METRICS:
        values = [r[key] for r in rows if key in r]
        if values:
            v = np.asarray(values, np.float64)
            out[key] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()),
                "max": float(v.max()),
            }
    return out


def _encoder_name(i: int, workdir: str, random_init: bool, step: int, names: list[str]) -> str:
    if random_init:
        name = "random-init"
    elif i == 0:
        name = f"pre-trained (step {step})"
    else:
        name = f"{os.path.basename(os.path.normpath(workdir))} (step {step})"
    while name in names:
        name += "'"
    return name


def _probe_fits(variants, fractions, seeds, *, train_dir, eval_dir, probe_config, knn_k, class_names, progress, log):
    """(encoder records, rows, names): the linear probe and k-NN of every (encoder, fraction, seed)."""
    encoders, rows, names = [], [], []
    for i, (w, rand) in enumerate(variants):
        enc, record, x_train, y_train, x_eval, y_eval = _embed_splits(
            w, random_init=rand, train_dir=train_dir, eval_dir=eval_dir, progress=progress
        )
        if not y_train.any():
            raise ValueError(f"{train_dir}: the train split has no labels (prepare it from a CSV with labels)")
        name = _encoder_name(i, w, rand, enc.step, names)
        names.append(name)
        record["name"] = name
        encoders.append(record)
        task_type = scoring.infer_task_type(y_train)
        for fraction in fractions:
            for seed in range(seeds):
                idx = stratified_subset(y_train, fraction, seed)
                result = scoring.score_task(
                    x_train[idx],
                    y_train[idx],
                    x_eval,
                    y_eval,
                    probe_config=probe_config,
                    seed=seed,
                    class_names=class_names,
                    task_type=task_type,
                    knn_k=knn_k,
                )
                result.update(
                    encoder=name,
                    fraction=fraction,
                    seed=seed,
                    train_clips=int(len(idx)),
                    train_classes_present=int((y_train[idx] > 0.5).any(0).sum()),
                    eval_clips=int(len(x_eval)),
                )
                rows.append(result)
        log(f"label-efficiency: {name}: {len(fractions) * seeds} probes fitted")
    return encoders, rows, names


FINETUNE_KEYS = ("mAP", "mean_AUC", "d_prime", "top1", "top5", "per_class_AP", "first_loss", "last_loss", "step")


def _finetune_fits(variants, fractions, seeds, *, train_dir, eval_dir, out, overrides, log):
    """(encoder records, rows, names, preempted): one fine-tuning per (encoder, fraction, seed), each on
    its stratified subset of the train split written as a prepared split."""
    from audiossl_jax.data import subset as subset_lib
    from audiossl_jax.evaluate import finetune
    from audiossl_jax.train import restore, run_files

    _, y_train = subset_lib.read_labels(train_dir)
    if not y_train.any():
        raise ValueError(f"{train_dir}: the train split has no labels (prepare it from a CSV with labels)")
    task_type = scoring.infer_task_type(y_train)
    overrides = dict(overrides or {})
    if overrides.get("multilabel") is None:
        overrides["multilabel"] = task_type == "multilabel"
    subsets = {}
    for fraction in fractions:
        for seed in range(seeds):
            idx = stratified_subset(y_train, fraction, seed)
            if fraction == 1.0:
                subsets[fraction, seed] = (train_dir, idx)
                continue
            subset_dir = os.path.join(out, "subsets", f"{fraction:g}_seed{seed}")
            how = {"fraction": fraction, "seed": seed, "drawn_by": "label_efficiency.stratified_subset"}
            subset_lib.write_subset(train_dir, idx, subset_dir, how=how)
            subsets[fraction, seed] = (subset_dir, idx)
    encoders, rows, names = [], [], []
    for i, (w, rand) in enumerate(variants):
        config = run_files.load_run_config(w)
        ft = finetune.settings(config, overrides)
        for (fraction, seed), (_, idx) in subsets.items():
            if len(idx) < int(ft.batch_size):
                raise ValueError(
                    f"--fractions {fraction:g} (seed {seed}) keeps {len(idx)} clips of {train_dir}, fewer than "
                    f"the fine-tuning batch of {ft.batch_size}: pass a smaller --batch-size or larger fractions"
                )
        step = 0 if rand else restore.latest_checkpoint(w, random_flag="--no-random-init")[0]
        name = _encoder_name(i, w, rand, step, names)
        names.append(name)
        slug = "random-init" if rand else f"encoder{i}-step{step}"
        encoders.append(
            {
                "name": name,
                "workdir": w,
                "random_init": rand,
                "checkpoint_step": None if rand else step,
                "finetune": ft.to_dict(),
                "finetune_dir": os.path.join(out, "finetune", slug),
                "config": provenance.config_dict(config),
            }
        )
        for (fraction, seed), (subset_dir, idx) in subsets.items():
            row = finetune.finetune_encoder(
                config,
                w,
                os.path.join(out, "finetune", slug),
                random_init=rand,
                train_dir=subset_dir,
                eval_dir=eval_dir,
                ft=ft,
                run_name=f"{fraction:g}_seed{seed}",
                seed=int(config.seed) + seed,
            )
            if row["preempted"]:
                return encoders, rows, names, True
            result = {k: row[k] for k in FINETUNE_KEYS if row.get(k) is not None}
            result.update(
                encoder=name,
                fraction=fraction,
                seed=seed,
                finetune_seed=row["seed"],
                train_dir=subset_dir,
                train_clips=int(len(idx)),
                train_classes_present=int((y_train[idx] > 0.5).any(0).sum()),
                eval_clips=row.get("eval_clips"),
                workdir=row["workdir"],
            )
            rows.append(result)
            log(f"label-efficiency: {name}: {fraction:.0%} of the labels, seed {seed}: fine-tuned ({row['workdir']})")
    return encoders, rows, names, False


def run(
    workdir: str,
    *,
    other_workdirs=(),
    fractions=(0.1, 0.33, 1.0),
    seeds: int = 3,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    out: str | None = None,
    metric: str | None = None,
    random_init: bool = True,
    epochs: int | None = None,
    mode: str = "probe",
    finetune_overrides: dict | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Label-efficiency curves of the run in `workdir` (see the module docstring); returns the report
    written to `<out>/label_efficiency.json` (with `preempted: True` and nothing written when a
    fine-tuning was preempted: run the same command again to resume). `metric`: default mAP for
    multi-label data, top1 for a multi-class fine-tuning. `finetune_overrides`: `audiossl finetune`'s
    settings (steps, lr, warmup_steps, batch_size, ...) for `mode="finetune"`."""
    from audiossl_jax.data import pipeline
    from audiossl_jax.train import run_files

    fractions = sorted({float(f) for f in fractions})
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {fractions}")
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is not one of {MODES}")
    if metric is not None and metric not in SUMMARY_METRICS:
        raise ValueError(f"--metric {metric!r} is not one of {SUMMARY_METRICS}")
    if mode == "finetune" and metric is not None and metric.startswith("knn_"):
        raise ValueError(f"--metric {metric}: a fine-tuned classifier has no k-NN score")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if mode == "finetune" and epochs is not None:
        raise ValueError("--epochs sets the linear probe; with --mode finetune use --steps")
    config = run_files.load_run_config(workdir)
    train_dir = train_dir or config.data.train_dir
    eval_dir = eval_dir or config.data.eval_dir
    out = out or os.path.join(workdir, OUT_DIR)
    probe_config = config.probe
    if epochs is not None:
        probe_config = probe_config.copy_and_resolve_references()
        probe_config.epochs = int(epochs)
    ev = config.get("eval") or {}
    knn_k = int(ev.get("knn_k", 10))

    variants = [(workdir, False)] + ([(workdir, True)] if random_init else [])
    variants += [(w, False) for w in other_workdirs]
    if mode == "probe":
        encoders, rows, names = _probe_fits(
            variants,
            fractions,
            seeds,
            train_dir=train_dir,
            eval_dir=eval_dir,
            probe_config=probe_config,
            knn_k=knn_k,
            class_names=pipeline.class_names(eval_dir),
            progress=progress,
            log=log,
        )
    else:
        encoders, rows, names, preempted = _finetune_fits(
            variants,
            fractions,
            seeds,
            train_dir=train_dir,
            eval_dir=eval_dir,
            out=out,
            overrides=finetune_overrides,
            log=log,
        )
        if preempted:
            return {"preempted": True, "mode": mode, "results": rows}
    if metric is None:
        metric = "mAP" if any("mAP" in r for r in rows) else "top1"
    if not any(metric in r for r in rows):
        raise ValueError(f"--metric {metric}: not among the results' metrics {sorted(set().union(*rows))}")

    summary = {
        name: {str(f): _summary([r for r in rows if r["encoder"] == name and r["fraction"] == f]) for f in fractions}
        for name in names
    }
    report = {
        "mode": mode,
        "metric": metric,
        "fractions": fractions,
        "seeds": seeds,
        "subsets": "stratified_subset(train labels, fraction, seed): seeded, every class present when "
        "the split has it (audiossl_jax/evaluate/label_efficiency.py)",
        "train_set": provenance.split_record(train_dir),
        "eval_set": provenance.split_record(eval_dir),
        "train_classes": int(max(r["train_classes_present"] for r in rows)),
        "encoders": encoders,
        "summary": summary,
        "results": rows,
    }
    if mode == "probe":
        report["probe"] = {
            "epochs": int(probe_config.epochs),
            "lr": float(probe_config.lr),
            "weight_decay": float(probe_config.weight_decay),
            "batch_size": int(probe_config.batch_size),
            "knn_k": knn_k,
        }
    report["comparison"] = _comparison(report, names, random_init)
    os.makedirs(out, exist_ok=True)
    report["paths"] = {"json": os.path.join(out, JSON_FILE), "png": os.path.join(out, PNG_FILE)}
    if jax.process_index() == 0:
        with open(report["paths"]["json"], "w") as f:
            json.dump(report, f, indent=1)
        plot(report, report["paths"]["png"])
    return report


def _comparison(report: dict, names: list[str], random_init: bool) -> dict | None:
    """The fewest labels with which each encoder reaches random init with all the labels used."""
    metric, top = report["metric"], str(max(report["fractions"]))
    if not random_init or metric not in report["summary"]["random-init"][top]:
        return None
    target = report["summary"]["random-init"][top][metric]["mean"]
    reached = {}
    for name in names:
        if name == "random-init":
            continue
        hits = [f for f in report["fractions"] if report["summary"][name][str(f)][metric]["mean"] >= target]
        reached[name] = min(hits) if hits else None
    return {
        "metric": metric,
        "random_init_fraction": float(top),
        "random_init_mean": target,
        "fewest_labels_reaching_it": reached,
    }


_WHAT = {"probe": "linear probe", "finetune": "fine-tuned classifier"}


def format_table(report: dict) -> str:
    """Mean ± standard deviation over seeds [min-max] of the report's metric, one row per encoder."""
    metric, fractions = report["metric"], report["fractions"]
    first = next(iter(report["summary"].values()))
    heads = [f"{f:.0%} ({first[str(f)]['train_clips']:.0f} clips)" for f in fractions]
    names = list(report["summary"])
    cells = {}
    for name in names:
        for f in fractions:
            s = report["summary"][name][str(f)].get(metric)
            cells[name, f] = f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.3f}-{s['max']:.3f}]" if s else "-"
    width = max(len(c) for c in [*heads, *cells.values()])
    name_w = max(len("encoder"), *(len(n) for n in names))
    lines = [
        f"{metric} of the {_WHAT[report.get('mode', 'probe')]} vs fraction of the train labels "
        f"({report['seeds']} seeds: mean ± std [min-max]; eval clips: {report['eval_set']['clips']})",
        f"{'encoder':<{name_w}}  " + "  ".join(f"{h:>{width}}" for h in heads),
    ]
    lines.append("-" * len(lines[-1]))
    for name in names:
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{cells[name, f]:>{width}}" for f in fractions))
    comparison = report.get("comparison")
    if comparison:
        for name, f in comparison["fewest_labels_reaching_it"].items():
            target = (
                f"random init with {comparison['random_init_fraction']:.0%} of the labels "
                f"({metric} {comparison['random_init_mean']:.4f})"
            )
            lines.append(
                f"{name}: reaches {target} with {f:.0%} of the labels"
                if f is not None
                else f"{name}: does not reach {target} at any fraction"
            )
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Metric vs fraction of labels (log x), one line per encoder, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, fractions = report["metric"], report["fractions"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_fraction in report["summary"].items():
        points = [(f, by_fraction[str(f)][metric]) for f in fractions if metric in by_fraction[str(f)]]
        if not points:
            continue
        ax.errorbar(
            [f for f, _ in points],
            [s["mean"] for _, s in points],
            yerr=[s["std"] for _, s in points],
            marker="o",
            capsize=3,
            label=name,
            linestyle="--" if name == "random-init" else "-",
        )
    comparison = report.get("comparison")
    if comparison:
        ax.axhline(
            comparison["random_init_mean"],
            color="gray",
            linestyle=":",
            linewidth=1,
            label=f"random init, {comparison['random_init_fraction']:.0%} of the labels",
        )
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the train labels")
    ax.set_ylabel(f"{_WHAT[report.get('mode', 'probe')]} {metric} (eval split)")
    ax.set_title(f"label efficiency ({report['seeds']} seeds, {report['eval_set']['clips']} eval clips)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
