"""Input listings for `audiossl prep`: what clips exist, where their audio is, and their labels.

Three input kinds, detected from `--input`:

* a folder: every audio file below it (sorted); unlabelled, or labelled by its first sub-folder
  with `folder_labels="subdir"`; clip id = path relative to the folder.
* a CSV/TSV manifest with a header holding `path` (relative to the manifest, or absolute) and
  optionally `labels` (names joined by ';') and `clip_id` (default: the path as written).
* an AudioSet segments CSV (`YTID, start_seconds, end_seconds, positive_labels` with /m/ ids, `#`
  comment lines) plus `class_labels_indices.csv` (`index,mid,display_name`; next to the CSV unless
  given). Audio is looked up in `audio_dir` (default: the CSV's folder, recursively) by file stem
  `<YTID>`, `Y<YTID>`, `<YTID>_<start>` or `Y<YTID>_<start:.3f>_<end:.3f>`; files hold the segment.

Paths may be local or any `tf.io.gfile` URL (`gs://...`, `ram://...`): listings, CSVs and audio
folders are read through `fileio`.

Problems with single rows (missing file, unknown label, duplicate clip id, bad row) become
`Skipped` entries, never exceptions; a malformed listing as a whole raises ValueError naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from audiossl_jax.data import fileio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One input clip: where its audio is and its label names."""

    clip_id: str
    path: str
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An input that produced no example, and why."""

    input: str
    reason: str


@dataclasses.dataclass
class Listing:
    """Clips to prepare, rows already skipped, the class names in index order, and the source."""

    clips: list[Clip]
    skipped: list[Skipped]
    class_names: list[str]
    source: dict
    notes: list[str] = dataclasses.field(default_factory=list)  # things prep should tell the user


def detect_kind(path: str) -> str:
    """'folder', 'audioset' or 'csv'."""
    if fileio.isdir(path):
        return "folder"
    if not fileio.isfile(path):
        raise FileNotFoundError(f"--input {path!r} is neither a folder nor a file")
    with fileio.read_text(path) as f:
        for line in f:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if "YTID" in stripped or "Segments csv" in stripped:
                    return "audioset"
                continue
            return "audioset" if stripped.split(",")[0].strip() == "YTID" else "csv"
    raise ValueError(f"input manifest {path!r} is empty")


def read_class_file(path: str) -> list[str]:
    """Class names from a prepared-data folder (its manifest.json), a classes.txt (one name per
    line) or an AudioSet class_labels_indices.csv (display names in index order)."""
    if fileio.isdir(path):
        manifest = fileio.join(path, "manifest.json")
        try:
            with fileio.read_text(manifest) as f:
                return list(json.load(f)["class_names"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read class_names from {manifest!r}: {e}") from e
    if path.endswith(".csv"):
        return [name for _, name in _read_audioset_index(path)]
    with fileio.read_text(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"class file {path!r} lists a class twice")
    return names


def _read_audioset_index(path: str) -> list[tuple[str, str]]:
    """(mid, display_name) pairs in index order from class_labels_indices.csv."""
    with fileio.read_text(path) as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{path!r} needs the columns index,mid,display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path!r}: indices must be 0..{len(rows) - 1}")
    return [(r["mid"].strip(), r["display_name"].strip()) for r in rows]


def _audio_files(root: str) -> list[str]:
    return [path for path in fileio.walk_files(root, AUDIO_EXTENSIONS) if path.lower().endswith(AUDIO_EXTENSIONS)]


def _resolve_labels(
    clips: list[Clip], skipped: list[Skipped], class_names: list[str] | None
) -> tuple[list[Clip], list[str]]:
    """Fixes the class list (given, or the sorted labels seen); clips with unknown labels are skipped."""
    if class_names is None:
        class_names = sorted({label for clip in clips for label in clip.labels})
    known = set(class_names)
    kept = []
    for clip in clips:
        unknown = [label for label in clip.labels if label not in known]
        if unknown:
            skipped.append(Skipped(clip.path, f"unknown label(s) {unknown} (not in the class list)"))
        else:
            kept.append(clip)
    return kept, class_names


def _dedupe(clips: list[Clip], skipped: list[Skipped]) -> list[Clip]:
    seen: dict[str, str] = {}
    kept = []
    for clip in clips:
        if clip.clip_id in seen:
            skipped.append(Skipped(clip.path, f"duplicate clip id {clip.clip_id!r} (first: {seen[clip.clip_id]})"))
        else:
            seen[clip.clip_id] = clip.path
            kept.append(clip)
    return kept


def list_folder(root: str, class_names: list[str] | None = None, folder_labels: str = "none") -> Listing:
    """Every audio file below `root`; labels from the first sub-folder if folder_labels='subdir'."""
    if folder_labels not in ("none", "subdir"):
        raise ValueError(f"folder_labels={folder_labels!r} is not one of ('none', 'subdir')")
    clips, skipped = [], []
    for path in _audio_files(root):
        rel = path[len(root.rstrip("/")) + 1 :] if fileio.is_remote(root) else os.path.relpath(path, root)
        parts = rel.split("/" if fileio.is_remote(root) else os.sep)
        labels = (parts[0],) if folder_labels == "subdir" and len(parts) > 1 else ()
        clips.append(Clip(rel, path, labels))
    if folder_labels == "none" and class_names is None:
        class_names = []
    clips, names = _resolve_labels(clips, skipped, class_names)
    return Listing(
        clips, skipped, names, {"kind": "folder", "path": fileio.abspath(root), "folder_labels": folder_labels}
    )


def list_csv(path: str, class_names: list[str] | None = None) -> Listing:
    """Rows of a `path,labels[,clip_id]` CSV (or TSV, by extension)."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    base = fileio.dirname(fileio.abspath(path))
    clips, skipped = [], []
    checker = fileio.FileChecker()
    with fileio.read_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in fields:
            raise ValueError(f"manifest {path!r} needs a header with a 'path' column (found {fields})")
        reader.fieldnames = fields
        notes = _unused_columns_note(path, fields)
        for line, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            if not rel:
                skipped.append(Skipped(f"{path}:{line}", "row without a path"))
                continue
            full = rel if fileio.isabs(rel) else fileio.join(base, rel)
            labels = tuple(sorted({s.strip() for s in (row.get("labels") or "").split(";") if s.strip()}))
            clip_id = (row.get("clip_id") or "").strip() or rel
            if not checker.isfile(full):
                skipped.append(Skipped(full, "audio file not found"))
                continue
            clips.append(Clip(clip_id, full, labels))
    clips = _dedupe(clips, skipped)
    clips, names = _resolve_labels(clips, skipped, class_names)
    return Listing(clips, skipped, names, {"kind": "csv", "path": fileio.abspath(path)}, notes)


CSV_COLUMNS = ("path", "labels", "clip_id")
_LABEL_LIKE = ("label", "class", "classes", "tag", "tags", "category", "categories", "target")


def _unused_columns_note(path: str, fields: list[str]) -> list[str]:
    """A note naming the columns prep ignores; a label-like one (`label`, `class`, ...) next to no
    `labels` column would otherwise silently give every clip no labels."""
    unused = [c for c in fields if c not in CSV_COLUMNS]
    if not unused:
        return []
    note = f"{path}: column(s) {unused} are not used (prep reads {list(CSV_COLUMNS)})"
    label_like = [c for c in unused if c.lower() in _LABEL_LIKE or c.lower() == "labels"]
    if label_like and "labels" not in fields:
        note += (
            f"; if {label_like[0]!r} holds the labels, rename that column to 'labels' (names joined "
            "by ';'): without it every clip is written unlabelled"
        )
    return [note]


def list_audioset(
    path: str, class_names: list[str] | None = None, class_index: str | None = None, audio_dir: str | None = None
) -> Listing:
    """Rows of an AudioSet segments CSV; labels (/m/ ids) become display names."""
    base = fileio.dirname(fileio.abspath(path))
    class_index = class_index or fileio.join(base, "class_labels_indices.csv")
    if not fileio.isfile(class_index):
        raise FileNotFoundError(f"AudioSet input needs class_labels_indices.csv; not found at {class_index!r}")
    index = _read_audioset_index(class_index)
    mid_to_name = dict(index)
    by_stem: dict[str, str] = {}
    for file in _audio_files(audio_dir or base):
        by_stem.setdefault(os.path.splitext(os.path.basename(file))[0], file)
    clips, skipped = [], []
    with fileio.read_text(path) as f:
        rows = csv.reader((line for line in f if not line.lstrip().startswith("#")), skipinitialspace=True)
        for line, row in enumerate(rows, start=1):
            if not row or row[0].strip() == "YTID":
                continue
            if len(row) < 4:
                skipped.append(Skipped(f"{path}:row {line}", f"expected YTID,start,end,labels; got {row}"))
                continue
            ytid, mids = row[0].strip(), [m.strip() for m in row[3].split(",") if m.strip()]
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                skipped.append(Skipped(f"{path}:{ytid}", f"bad start/end seconds {row[1:3]}"))
                continue
            unknown = [m for m in mids if m not in mid_to_name]
            if unknown:
                skipped.append(Skipped(f"{path}:{ytid}", f"unknown label id(s) {unknown}"))
                continue
            stems = (ytid, "Y" + ytid, f"{ytid}_{int(start)}", f"Y{ytid}_{start:.3f}_{end:.3f}")
            file = next((by_stem[s] for s in stems if s in by_stem), None)
            if file is None:
                skipped.append(Skipped(f"{path}:{ytid}", "audio file not found"))
                continue
            clips.append(Clip(ytid, file, tuple(sorted({mid_to_name[m] for m in mids}))))
    clips = _dedupe(clips, skipped)
    if class_names is None:
        class_names = [name for _, name in index]
    clips, names = _resolve_labels(clips, skipped, class_names)
    return Listing(
        clips,
        skipped,
        names,
        {"kind": "audioset", "path": fileio.abspath(path), "class_index": fileio.abspath(class_index)},
    )


def list_inputs(
    path: str,
    *,
    class_names: list[str] | None = None,
    folder_labels: str = "none",
    class_index: str | None = None,
    audio_dir: str | None = None,
) -> Listing:
    """Dispatches on the detected input kind."""
    kind = detect_kind(path)
    if kind == "folder":
        return list_folder(path, class_names, folder_labels)
    if kind == "audioset":
        return list_audioset(path, class_names, class_index, audio_dir)
    return list_csv(path, class_names)
