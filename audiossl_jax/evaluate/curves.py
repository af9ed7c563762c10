"""Learning curves of the in-training evaluation: eval metric vs step, with the random-init line."""

from __future__ import annotations

import collections

from audiossl_jax.train import metrics_writer

BASELINES = {"random_init": ("--", "random init"), "logmel_stats": (":", "log-mel stats")}


def eval_series(records: list[dict]) -> tuple[dict[str, list[tuple[int, float]]], dict[str, dict[str, float]]]:
    """({"<task>/<metric>": [(step, value), ...]}, {baseline: {"<task>/<metric>": value}}) with the
    baselines "random_init" and "logmel_stats" logged at step 0."""
    series: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    baselines: dict[str, dict[str, float]] = {name: {} for name in BASELINES}
    for r in records:
        for key, value in r.items():
            prefix, _, name = key.partition("/")
            if key.endswith("/seconds") or not name:
                continue
            if prefix == "eval":
                series[name].append((int(r["step"]), float(value)))
            elif prefix in baselines:
                baselines[prefix][name] = float(value)
    return {k: sorted(v) for k, v in series.items()}, baselines


def plot_eval_curves(workdir: str, out_png: str, *, title: str = "in-training evaluation") -> str | None:
    """Writes one panel per task (linear-probe mAP and k-NN mAP: the pre-trained curve, the random-init
    encoder dashed, the model-free log-mel statistics dotted) from `<workdir>/metrics.jsonl` to
    `out_png`; returns its path, or None when the run logged no evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    series, baselines = eval_series(metrics_writer.read_records(workdir))
    if not series:
        return None
    tasks = sorted({k.split("/")[0] for k in series})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, metric in enumerate(("mAP", "knn_mAP")):
            key = f"{task}/{metric}"
            if key not in series:
                continue
            steps, values = zip(*series[key])
            color = f"C{i}"
            ax.plot(steps, values, marker="o", ms=3, color=color, label=f"pre-trained {metric}")
            for name, (style, label) in BASELINES.items():
                if key in baselines[name]:
                    ax.axhline(baselines[name][key], color=color, ls=style, lw=1, label=f"{label} {metric}")
        ax.set_title(task)
        ax.set_xlabel("pre-training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("linear probe / k-NN score")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    with tf.io.gfile.GFile(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_png
