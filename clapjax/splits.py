"""Participant splits: the official ones shipped in ``splits/`` and generators.

A split assigns every training video of a dataset to exactly one participant.
Official splits are JSON files ``splits/<dataset>/<kind>_<K>.json`` holding
``{"participants": [[train index, ...], ...], "participant_names": [...]}``;
the order of indices inside a participant is the reference code's training
order and is preserved.

Custom datasets (:func:`clapjax.data.custom_dataset`): the generators take the
dataset's train table instead of a dataset name, and :func:`from_file` reads a
given split as JSON (video indices or names) or as a two-column text file
``video participant`` (one line per training video).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from clapjax import tables

SPLIT_KINDS = ("random", "event", "scene")
_FILE_RE = re.compile(r"^(random|event|scene)_(\d+)\.json$")


class SplitError(ValueError):
    """A split that does not assign every video to exactly one participant."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Participants' training videos.

    Attributes:
      dataset: ``"ucf"`` or ``"xd"``.
      kind: ``"random"``, ``"event"``, ``"scene"`` or ``"custom"``.
      participants: K arrays of train-table indices (int64), in training order.
      participant_names: K names (``"p0"``, ... when the split has none).
      table: the train table the indices point into.
      source: where the split came from (file or generator description).
    """

    dataset: str
    kind: str
    participants: tuple[np.ndarray, ...]
    participant_names: tuple[str, ...]
    table: tables.VideoTable
    source: str = ""

    @property
    def num_participants(self) -> int:
        return len(self.participants)

    def names(self, k: int) -> list[str]:
        """Video names of participant ``k``."""
        return [self.table.names[i] for i in self.participants[k]]

    def segment_counts(self) -> np.ndarray:
        """``[K] int64`` total segments per participant."""
        return np.asarray(
            [int(self.table.n_segments[p].sum()) for p in self.participants], np.int64
        )

    def anomalous_counts(self) -> np.ndarray:
        """``[K, 2] int64`` (normal, anomalous) true video counts per participant."""
        out = []
        for p in self.participants:
            a = int(self.table.anomalous[p].sum())
            out.append((len(p) - a, a))
        return np.asarray(out, np.int64).reshape(-1, 2)

    def to_json(self) -> dict:
        """The split in the shipped JSON format (video names for custom datasets)."""
        if self.dataset not in tables.DATASETS:
            return {
                "dataset": self.dataset,
                "split": self.kind,
                "num_participants": self.num_participants,
                "participants": [self.names(k) for k in range(self.num_participants)],
                "participant_names": list(self.participant_names),
            }
        return {
            "dataset": self.dataset,
            "split": self.kind,
            "num_participants": self.num_participants,
            "index_into": f"{self.dataset}/train_videos.csv (column index)",
            "participants": [[int(i) for i in p] for p in self.participants],
            "participant_names": list(self.participant_names),
        }


def validate(split: Split, *, require_cover: bool = True) -> Split:
    """Checks a split; raises :class:`SplitError` naming the problem.

    Participants must be non-empty and disjoint, every index must exist in the
    train table and (with ``require_cover``) every video must be assigned.
    """
    n = len(split.table)
    where = split.source or f"{split.dataset} {split.kind} split"
    if split.num_participants == 0:
        raise SplitError(f"{where}: the split has no participants")
    if len(split.participant_names) != split.num_participants:
        raise SplitError(
            f"{where}: {len(split.participant_names)} participant names for "
            f"{split.num_participants} participants"
        )
    owner = np.full(n, -1, np.int64)
    for k, p in enumerate(split.participants):
        if p.ndim != 1 or p.size == 0:
            raise SplitError(f"{where}: participant {k} has no videos")
        bad = p[(p < 0) | (p >= n)]
        if bad.size:
            raise SplitError(
                f"{where}: participant {k} has video index {int(bad[0])}, which is not "
                f"in {split.table.source} (valid indices 0..{n - 1})"
            )
        uniq, counts = np.unique(p, return_counts=True)
        if (counts > 1).any():
            i = int(uniq[counts > 1][0])
            raise SplitError(
                f"{where}: participant {k} lists video {i} ({split.table.names[i]}) twice"
            )
        clash = owner[p] >= 0
        if clash.any():
            i = int(p[clash][0])
            raise SplitError(
                f"{where}: video {i} ({split.table.names[i]}) is assigned to both "
                f"participant {int(owner[i])} and participant {k}"
            )
        owner[p] = k
    if require_cover and (owner < 0).any():
        missing = np.flatnonzero(owner < 0)
        raise SplitError(
            f"{where}: {missing.size} training videos are assigned to no participant, "
            f"e.g. {int(missing[0])} ({split.table.names[int(missing[0])]})"
        )
    return split


def available() -> dict[str, list[tuple[str, int]]]:
    """Official (split, K) combinations per dataset, read from ``splits/``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for ds in tables.DATASETS:
        combos = []
        folder = tables.splits_dir() / ds
        if folder.is_dir():
            for f in folder.iterdir():
                m = _FILE_RE.match(f.name)
                if m:
                    combos.append((m.group(1), int(m.group(2))))
        out[ds] = sorted(combos, key=lambda c: (SPLIT_KINDS.index(c[0]), c[1]))
    return out


def describe_available() -> str:
    """Human-readable list of valid (dataset, split, K) combinations."""
    parts = []
    for ds, combos in available().items():
        by_kind: dict[str, list[int]] = {}
        for kind, k in combos:
            by_kind.setdefault(kind, []).append(k)
        text = "; ".join(f"{kind} {'/'.join(map(str, ks))}" for kind, ks in by_kind.items())
        parts.append(f"{ds}: {text}")
    return " | ".join(parts)


def _train_table(dataset: str | tables.VideoTable) -> tables.VideoTable:
    if isinstance(dataset, tables.VideoTable):
        if dataset.part != "train":
            raise ValueError(f"splits divide training videos; got the {dataset.part} table")
        return dataset
    return tables.load_table(dataset, "train")


def from_json(path: str | Path, dataset: str | tables.VideoTable | None = None) -> Split:
    """Reads and validates a split file in the shipped JSON format.

    Args:
      path: the JSON file. ``participants`` holds train-table indices or
        video names (names are resolved against the table).
      dataset: ``"ucf"``/``"xd"`` (else the file's ``dataset`` field), or a
        custom dataset's train table.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"split file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise SplitError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "participants" not in data:
        raise SplitError(f"{path}: missing field 'participants'")
    if isinstance(dataset, tables.VideoTable):
        table = _train_table(dataset)
        ds = table.dataset
        field = data.get("dataset")
        if field is not None and str(field) != ds and (
                ds not in tables.DATASETS or tables.canonical_dataset(field) != ds):
            raise SplitError(f"{path}: split is for dataset {field!r}, not {ds!r}")
    else:
        ds_field = data.get("dataset", dataset)
        if ds_field is None:
            raise SplitError(f"{path}: missing field 'dataset' (or pass dataset=)")
        ds = tables.canonical_dataset(ds_field)
        if dataset is not None and tables.canonical_dataset(dataset) != ds:
            raise SplitError(f"{path}: split is for dataset {ds!r}, not {dataset!r}")
        table = tables.load_table(ds, "train")
    raw = data["participants"]
    if not isinstance(raw, list) or not all(isinstance(p, list) for p in raw):
        raise SplitError(f"{path}: 'participants' must be a list of lists of indices or video names")
    parts = []
    for k, p in enumerate(raw):
        if all(isinstance(i, str) for i in p) and p:
            idx = []
            for v in p:
                try:
                    idx.append(table.index_of(v))
                except KeyError:
                    raise SplitError(
                        f"{path}: participant {k}: video {v!r} is not a training video of "
                        f"{table.source or ds}") from None
            parts.append(np.asarray(idx, np.int64))
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in p):
            raise SplitError(f"{path}: participant {k} holds a non-integer index")
        parts.append(np.asarray(p, np.int64))
    names = data.get("participant_names") or [f"p{k}" for k in range(len(parts))]
    num = data.get("num_participants", len(parts))
    if num != len(parts):
        raise SplitError(
            f"{path}: num_participants says {num} but {len(parts)} participants are listed"
        )
    split = Split(
        dataset=ds,
        kind=str(data.get("split", "custom")),
        participants=tuple(parts),
        participant_names=tuple(str(n) for n in names),
        table=table,
        source=str(path.name),
    )
    return validate(split)


def from_file(path: str | Path, dataset: str | tables.VideoTable | None = None) -> Split:
    """Reads a given split: JSON (:func:`from_json`) or a two-column text file.

    The text form has one line per training video, ``video participant``
    (whitespace- or comma-separated; ``#`` comments); participants are named
    freely and ordered by first appearance; a participant's videos keep the
    file's order.

    Raises:
      FileNotFoundError, SplitError: naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    if path.suffix.lower() == ".json":
        return from_json(path, dataset)
    table = _train_table(dataset if dataset is not None else "ucf")
    groups: dict[str, list[int]] = {}
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in re.split(r"[\s,]+", line) if f]
        if len(fields) != 2:
            raise SplitError(f"{path} line {no}: {line!r}; expected 'video participant'")
        video, who = fields
        from clapjax.data.sources import video_name_from_path

        name = video_name_from_path(video)
        try:
            i = table.index_of(name)
        except KeyError:
            raise SplitError(f"{path} line {no}: video {name!r} is not a training video of "
                             f"{table.source or table.dataset}") from None
        groups.setdefault(who, []).append(i)
    if not groups:
        raise SplitError(f"{path}: no 'video participant' lines")
    split = Split(
        dataset=table.dataset, kind="custom",
        participants=tuple(np.asarray(v, np.int64) for v in groups.values()),
        participant_names=tuple(groups), table=table, source=str(path.name),
    )
    return validate(split)


def load(dataset: str, split: str, participants: int) -> Split:
    """Loads an official split, e.g. ``load("ucf", "event", 13)``.

    Raises:
      ValueError: for a (dataset, split, K) combination that is not shipped; the
        message lists the valid ones.
      SplitError: if the shipped file fails validation.
    """
    ds = tables.canonical_dataset(dataset)
    kind = str(split).lower()
    if (kind, int(participants)) not in available()[ds]:
        raise ValueError(
            f"no official {kind!r} split with {participants} participants for {ds}; "
            f"valid: {describe_available()}. Generate others with "
            f"clapjax.splits.random_split / event_split / scene_split."
        )
    return from_json(tables.splits_dir() / ds / f"{kind}_{int(participants)}.json", ds)


def _deal(indices: np.ndarray, k: int, offset: int = 0) -> list[np.ndarray]:
    """Round-robin assignment of indices to k participants."""
    return [indices[(np.arange(indices.size) + offset) % k == j] for j in range(k)]


def random_split(dataset: str | tables.VideoTable, participants: int, seed: int = 0) -> Split:
    """Random split with balanced normal/anomalous counts per participant.

    Anomalous and normal videos are shuffled separately (seeded) and dealt
    round-robin, so every participant gets ``N/K`` videos of each class up to one.
    Within a participant videos keep train-list order. A custom train table
    whose labels are unknown (``labels_known=False``) is shuffled and dealt
    as one class.

    Args:
      dataset: ``"ucf"``/``"xd"`` or a custom dataset's train table.
    """
    table = _train_table(dataset)
    k = int(participants)
    rng = np.random.default_rng(seed)
    if not table.labels_known:
        if not 1 <= k <= len(table):
            raise ValueError(f"participants must be between 1 and {len(table)} (the number of "
                             f"training videos), got {participants}")
        parts = tuple(np.sort(p) for p in _deal(rng.permutation(len(table)), k))
        return validate(Split(
            dataset=table.dataset, kind="random", participants=parts,
            participant_names=tuple(f"p{j}" for j in range(k)), table=table,
            source=f"random_split({table.dataset}, K={k}, seed={seed}, labels unknown)",
        ))
    if not 1 <= k <= int(table.anomalous.sum()):
        raise ValueError(
            f"participants must be between 1 and {int(table.anomalous.sum())} "
            f"(the number of anomalous videos), got {participants}"
        )
    anom = rng.permutation(np.flatnonzero(table.anomalous))
    norm = rng.permutation(np.flatnonzero(~table.anomalous))
    # Offset the normal deal so that participants short of an anomalous video
    # are the first to get an extra normal one.
    a_parts = _deal(anom, k)
    n_parts = _deal(norm, k, offset=anom.size % k)
    parts = tuple(np.sort(np.concatenate([a, b])) for a, b in zip(a_parts, n_parts))
    return validate(
        Split(
            dataset=table.dataset,
            kind="random",
            participants=parts,
            participant_names=tuple(f"p{j}" for j in range(k)),
            table=table,
            source=f"random_split({table.dataset}, K={k}, seed={seed})",
        )
    )


def event_split(dataset: str | tables.VideoTable = "ucf", seed: int = 0) -> Split:
    """Clean event split: one participant per anomaly class.

    Each participant holds all anomalous videos of its class (by class name, so
    without the official file's extra first video of the next class) and an
    equal, seeded random share of the normal videos. Works on UCF-Crime and
    on a custom train table whose annotations give every video a class.
    """
    table = _train_table(dataset)
    if table.dataset == "xd" or not table.labels_known:
        raise ValueError(
            "event splits need the event class of every training video, which only UCF-Crime "
            "and fully annotated custom datasets have; "
            f"valid: {describe_available()}"
        )
    classes = np.asarray(table.classes)
    events = sorted(set(classes[table.anomalous]))
    rng = np.random.default_rng(seed)
    norm_parts = _deal(rng.permutation(np.flatnonzero(~table.anomalous)), len(events))
    parts = tuple(
        np.sort(np.concatenate([np.flatnonzero(table.anomalous & (classes == ev)), nrm]))
        for ev, nrm in zip(events, norm_parts)
    )
    return validate(
        Split(
            dataset=table.dataset,
            kind="event",
            participants=parts,
            participant_names=tuple(events),
            table=table,
            source=f"event_split({table.dataset}, seed={seed})",
        )
    )


def scene_split(dataset: str = "ucf", groups: Sequence[Sequence[int]] | None = None) -> Split:
    """Scene split from the official scene membership.

    Args:
      dataset: only ``"ucf"`` has scene annotations.
      groups: optional merge of the 11 official scenes into fewer participants,
        e.g. ``[[0, 1], [2, 3, 4], ...]``; every scene must appear exactly once.
        ``None`` keeps the 11 scenes.
    """
    official = load(dataset, "scene", 11)
    if groups is None:
        groups = [[j] for j in range(official.num_participants)]
    flat = sorted(int(j) for g in groups for j in g)
    if flat != list(range(official.num_participants)):
        raise ValueError(
            f"groups must use each of the {official.num_participants} scenes "
            f"0..{official.num_participants - 1} exactly once, got {list(groups)}"
        )
    parts = tuple(
        np.concatenate([official.participants[j] for j in g]) for g in groups
    )
    names = tuple(" + ".join(official.participant_names[j] for j in g) for g in groups)
    return validate(
        Split(
            dataset=official.dataset,
            kind="scene",
            participants=parts,
            participant_names=names,
            table=official.table,
            source=f"scene_split({official.dataset}, groups={[list(g) for g in groups]})",
        )
    )


def centralized(split: Split) -> Split:
    """All of a split's videos held by one participant (in participant order)."""
    return Split(
        dataset=split.dataset,
        kind=split.kind,
        participants=(np.concatenate(split.participants),),
        participant_names=("all",),
        table=split.table,
        source=f"centralized({split.source})",
    )
