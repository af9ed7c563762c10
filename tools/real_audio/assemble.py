"""Assembly stage: catalog entries -> 16 kHz mono PCM-16 wav clips, prep CSVs, SHA256SUMS.

Pure function of the catalog and the source files: entries are processed sorted by id, audio is
decoded with soundfile, averaged to mono, resampled with soxr (HQ), cut, peak-normalised to 0.9
(labelled clips are zero-padded to their duration), written as PCM-16. Near-silent unlabelled
windows (RMS < 1e-4) are dropped. The same inputs give byte-identical files."""

from __future__ import annotations

import collections
import csv
import io
import os

import numpy as np
import soundfile as sf
import soxr

from . import checksums, tasks

RATE = 16000
PEAK = 0.9
SILENCE_RMS = 1e-4


def _load(path: str) -> np.ndarray:
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != RATE:
        x = soxr.resample(x, sr, RATE, quality="HQ")
    return np.asarray(x, dtype=np.float64)


def _cut(x: np.ndarray, start: float, dur: float, pad: bool) -> np.ndarray:
    a = int(round(start * RATE))
    b = a + int(round(dur * RATE))
    seg = x[a:b]
    if pad and len(seg) < b - a:
        seg = np.concatenate([seg, np.zeros(b - a - len(seg))])
    return seg


def _pcm16(seg: np.ndarray) -> np.ndarray | None:
    peak = float(np.max(np.abs(seg))) if len(seg) else 0.0
    if peak <= 0:
        return None
    y = seg * (PEAK / peak)
    return np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)


def _write_wav(path: str, pcm: np.ndarray) -> None:
    buf = io.BytesIO()
    sf.write(buf, pcm, RATE, subtype="PCM_16", format="WAV")
    data = buf.getvalue()
    if os.path.exists(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def assemble(entries: list[dict], out: str, split_of=tasks.split_of, log=print) -> dict:
    """Writes <out>/<task>/{train,test}/<label>/<id>.wav + train.csv/test.csv/meta.csv and
    <out>/unlabelled/clips/<id>.wav + unlabelled.csv, then <out>/SHA256SUMS. Returns a summary."""
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        dup = [k for k, v in collections.Counter(ids).items() if v > 1][:5]
        raise ValueError(f"duplicate clip ids: {dup}")
    by_src = collections.defaultdict(list)
    for e in entries:
        by_src[e["src"]].append(e)
    rows = collections.defaultdict(list)  # (task, split) -> rows
    written = []
    seconds = collections.Counter()
    for src in sorted(by_src):
        x = _load(src)
        for e in sorted(by_src[src], key=lambda e: e["id"]):
            labelled = e["task"] != "unlabelled"
            seg = _cut(x, e["start"], e["dur"], pad=labelled)
            if not labelled and (
                len(seg) < int(tasks.MIN_SECONDS * RATE) or float(np.sqrt(np.mean(seg**2))) < SILENCE_RMS
            ):
                continue
            pcm = _pcm16(seg)
            if pcm is None:
                if labelled:
                    raise ValueError(f"silent labelled clip {e['id']} from {src}")
                continue
            if labelled:
                split = split_of(e["task"], e["group"])
                rel = os.path.join(split, e["label"], e["id"] + ".wav")
                key = (e["task"], split)
            else:
                rel = os.path.join("clips", e["id"] + ".wav")
                key = ("unlabelled", "unlabelled")
            path = os.path.join(out, key[0], rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_wav(path, pcm)
            written.append(os.path.join(key[0], rel))
            seconds[key] += len(pcm) / RATE
            rows[key].append(
                {
                    "path": rel,
                    "labels": e["label"],
                    "id": e["id"],
                    "group": e["group"],
                    "source": e.get("source", os.path.basename(src)),
                    "start": f"{e['start']:.3f}",
                }
            )
    csvs = []
    for (task, split), rs in sorted(rows.items()):
        rs.sort(key=lambda r: r["path"])
        name = os.path.join(task, f"{split}.csv")
        _write_csv(os.path.join(out, name), ["path", "labels"], rs)
        csvs.append(name)
        if task != "unlabelled":
            meta = os.path.join(task, f"{split}_meta.csv")
            _write_csv(os.path.join(out, meta), ["path", "labels", "group", "source", "start"], rs)
            csvs.append(meta)
    # stale files from an earlier catalog
    keep = set(written) | set(csvs)
    for dirpath, _, files in os.walk(out):
        for n in files:
            rel = os.path.relpath(os.path.join(dirpath, n), out)
            if n.endswith(".wav") and rel not in keep:
                os.remove(os.path.join(dirpath, n))
    checksums.write_sha256sums(out, written + csvs)
    summary = {"tasks": {}, "unlabelled": {}}
    for (task, split), rs in sorted(rows.items()):
        counts = dict(sorted(collections.Counter(r["labels"] for r in rs).items()))
        groups = sorted({r["group"] for r in rs})
        item = {"clips": len(rs), "minutes": round(seconds[(task, split)] / 60, 2)}
        if task == "unlabelled":
            item["by_source"] = dict(sorted(collections.Counter(r["group"].split("/")[0] for r in rs).items()))
            item["by_group"] = dict(sorted(collections.Counter(r["group"] for r in rs).items()))
            summary["unlabelled"] = item
        else:
            item.update({"class_counts": counts, "num_groups": len(groups), "groups": groups})
            summary["tasks"].setdefault(task, {})[split] = item
    return summary


def _write_csv(path: str, fields: list[str], rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
