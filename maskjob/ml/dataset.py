"""The labelled dataset on disk: layout checks, a data-quality report and a content fingerprint.

Layout: ``<root>/{train,test}/{with_mask,without_mask,partial_mask}/*.{jpg,png,...}``; evaluation
needs only the split it scores (``scan_dataset(root, splits=("test",))``). Two optional test
splits (:data:`maskjob.vocab.OPTIONAL_SPLITS`) may sit beside them: ``test_unseen``
(:data:`~maskjob.vocab.HELDOUT_SPLIT`) holds faces in mask styles and of identities the training
never sees (the demo builder reserves them), and ``test_site`` (:data:`~maskjob.vocab.SITE_TEST_SPLIT`)
holds reviewed faces of the site's own cameras kept out of training (written by
:mod:`maskjob.review.export`). Either may be absent, and a class folder of one may be missing
or empty. When present each is scanned, checked (leakage against train included) and
fingerprinted with the others, so exporting corrections changes the fingerprint and the next
run retrains.

Example:
    >>> index = scan_dataset("data/dataset")            # doctest: +SKIP
    >>> check_dataset("data/dataset", 40_000_000).ok     # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from maskjob import CLASSES
from maskjob.errors import MaskjobError
from maskjob.imageio import (
    ImageReadError,
    display_path,
    is_image_name,
    max_file_bytes,
    read_file,
    read_rgb,
    sha256_bytes,
    sha256_file,
)
from maskjob.vocab import ALL_SPLITS, OPTIONAL_SPLITS, SPLITS

__all__ = [
    "ALL_SPLITS", "OPTIONAL_SPLITS", "SPLITS", "DataCheck", "DatasetIndex", "check_dataset", "dataset_fingerprint",
    "scan_dataset", "split_counts",
]

IMBALANCE_WARN_RATIO = 3.0


Item = tuple[Path, int]


def _layout_help(root: Path, splits: Sequence[str] = SPLITS) -> str:
    classes = ",".join(CLASSES)
    where = splits[0] if len(splits) == 1 else "{" + ",".join(splits) + "}"
    return f"expected {root}/{where}/{{{classes}}}/<images: jpg, jpeg, png, bmp, webp>"


def _missing_split(root: Path, split: str, splits: Sequence[str]) -> MaskjobError:
    message = f"dataset {root} has no {split}/ folder; {_layout_help(root, splits)}"
    here = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in CLASSES)
    if here:
        message += (f". {root} holds class folders ({', '.join(here)}) itself: move them into "
                    f"{root / split}/, or pass a root whose {split}/ folder holds them")
    return MaskjobError(message)


def _class_images(class_dir: Path) -> list[Path]:
    """The image-named entries of a class folder, sorted; hidden names and folders left out.

    Entries that are not regular files (FIFOs, sockets, devices, dangling or looping links)
    are listed too, never opened here: the readers refuse them without blocking, so
    ``check_dataset`` reports each as unreadable and training skips it with a warning.

    Raises:
        MaskjobError: the folder cannot be listed.
    """
    try:
        with os.scandir(class_dir) as it:
            entries = list(it)
    except OSError as exc:
        raise MaskjobError(f"dataset class folder {display_path(class_dir)} cannot be listed "
                           f"({exc.strerror or exc}); make it readable by the user maskjob runs as") from None
    files = []
    for entry in entries:
        if entry.name.startswith(".") or not is_image_name(entry.name):
            continue
        try:
            if entry.is_dir():  # a folder, or a link to one
                continue
        except OSError:
            pass  # a link that cannot be followed: listed, and reported unreadable
        files.append(Path(entry.path))
    return sorted(files)


@dataclass(frozen=True)
class DatasetIndex:
    """Image files per split, each as ``(path, class_index)`` sorted by path."""

    root: Path
    splits: dict[str, list[Item]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split per class name."""
        out: dict[str, dict[str, int]] = {}
        for split, items in self.splits.items():
            per = {c: 0 for c in CLASSES}
            for _, label in items:
                per[CLASSES[label]] += 1
            out[split] = per
        return out


def scan_dataset(root: str | Path, splits: Sequence[str] | None = None) -> DatasetIndex:
    """List the dataset's images, checking the layout.

    Args:
        root: the dataset root.
        splits: the splits to list; each named one must be there. Default: train and test,
            plus each optional split (``test_unseen``, ``test_site``) whose folder exists.
            ``("test",)`` accepts a folder that holds only ``test/`` (evaluation).

    Returns:
        The index of those splits.

    Raises:
        MaskjobError: root missing, a split missing, an unknown class folder, or a class
            folder without images (allowed in the optional splits); the message shows the expected layout.
    """
    if splits is None:
        required: tuple[str, ...] = SPLITS
        wanted = ALL_SPLITS
    else:
        required = wanted = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown_splits = [s for s in wanted if s not in ALL_SPLITS]
    if unknown_splits or not wanted:
        raise MaskjobError(f"unknown split(s) {unknown_splits or list(wanted)}; choose from {list(ALL_SPLITS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise MaskjobError(f"dataset root {root} does not exist or is not a directory; {_layout_help(root, required)}")
    index: dict[str, list[Item]] = {}
    for split in wanted:
        split_dir = root / split
        if not split_dir.is_dir():
            if split not in required:
                continue
            raise _missing_split(root, split, required)
        folders = {p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        unknown = sorted(folders - set(CLASSES))
        if unknown:
            raise MaskjobError(
                f"dataset {split_dir} has unknown class folders {unknown}; the classes are {list(CLASSES)}. "
                f"Rename or move them; {_layout_help(root, required)}"
            )
        items: list[Item] = []
        for label, name in enumerate(CLASSES):
            class_dir = split_dir / name
            files = _class_images(class_dir) if class_dir.is_dir() else []
            if not files and split not in OPTIONAL_SPLITS:
                state = "has no images" if class_dir.is_dir() else "is missing"
                raise MaskjobError(f"dataset class folder {class_dir} {state}; {_layout_help(root, required)}")
            items.extend((p, label) for p in files)
        index[split] = items
    return DatasetIndex(root=root, splits=index)


def split_counts(root: str | Path, split: str) -> dict[str, int] | None:
    """Images per class in one split of ``root``, or ``None`` when the split's folder is absent.

    Raises:
        MaskjobError: as :func:`scan_dataset` for that split.
    """
    if not (Path(root).expanduser() / split).is_dir():
        return None
    return scan_dataset(root, splits=(split,)).counts()[split]


@dataclass
class DataCheck:
    """What :func:`check_dataset` found. ``ok`` is False when any image is unreadable or the
    same image content is in train and in a test split (leakage). ``counts`` has an entry for
    each optional split present (``test_unseen``, ``test_site``); ``imbalance`` covers train and
    test only (a site's faces are as imbalanced as its cameras see them)."""

    root: Path
    counts: dict[str, dict[str, int]]
    imbalance: dict[str, float]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # as dataset_fingerprint(root); None when a file could not be read

    @property
    def ok(self) -> bool:
        return not self.unreadable and not self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "counts": self.counts,
            "imbalance": self.imbalance,
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
            "warnings": self.warnings,
        }

    def format_text(self) -> str:
        """A readable report: counts table, imbalance, then the problems."""
        width = max(len(c) for c in CLASSES) + 2
        splits = [s for s in ALL_SPLITS if s in self.counts]
        cell = max(8, *(len(s) + 2 for s in splits))
        lines = [f"dataset {self.root}", f"{'class':<{width}}" + "".join(f"{s:>{cell}}" for s in splits)]
        for name in CLASSES:
            lines.append(f"{name:<{width}}" + "".join(f"{self.counts[s][name]:>{cell}}" for s in splits))
        lines.append(f"{'total':<{width}}" + "".join(f"{sum(self.counts[s].values()):>{cell}}" for s in splits))
        lines.append(
            "imbalance (max/min): " + ", ".join(f"{s} {self.imbalance[s]:.2f}" for s in SPLITS)
        )
        lines.append(f"unreadable files: {len(self.unreadable)}")
        lines += [f"  {u['path']}: {u['reason']}" for u in self.unreadable]
        held_out = " or ".join(s for s in splits if s != "train")
        lines.append(f"images in both train and {held_out}: {len(self.duplicates)}")
        lines += [f"  {d['sha256'][:12]}: {', '.join(p for s in splits for p in d.get(s, []))}"
                  for d in self.duplicates]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("OK" if self.ok else "PROBLEMS FOUND")
        return "\n".join(lines)


def _reason(exc: MaskjobError, path: Path) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def check_dataset(root: str | Path, max_pixels: int) -> DataCheck:
    """Check a dataset: counts, class imbalance, unreadable files, duplicates across splits.

    Args:
        root: the dataset root.
        max_pixels: larger images count as unreadable.

    Returns:
        The report.

    Raises:
        MaskjobError: on a wrong layout (see :func:`scan_dataset`).
    """
    index = scan_dataset(root)
    counts = index.counts()
    imbalance = {s: max(c.values()) / max(min(c.values()), 1) for s, c in counts.items() if s in SPLITS}
    unreadable: list[dict[str, str]] = []
    by_hash: dict[str, dict[str, list[str]]] = defaultdict(lambda: {s: [] for s in index.splits})
    content: list[tuple[str, str]] = []
    all_read = True
    for split, items in index.splits.items():
        for path, _ in items:
            raw_rel = path.relative_to(index.root).as_posix()
            rel = display_path(raw_rel)  # printable even when the name is not valid UTF-8
            try:
                data = read_file(path, max_file_bytes(max_pixels))  # regular files only, never blocking
            except ImageReadError as exc:
                unreadable.append({"path": rel, "reason": exc.reason})
                all_read = False
                continue
            digest = sha256_bytes(data)
            content.append((raw_rel, digest))
            try:
                read_rgb(path, max_pixels, data=data)
            except MaskjobError as exc:
                unreadable.append({"path": rel, "reason": exc.reason if isinstance(exc, ImageReadError)
                                   else _reason(exc, path)})
                continue
            by_hash[digest][split].append(rel)
    held_out = [s for s in index.splits if s != "train"]
    duplicates = [
        {"sha256": digest, **where}
        for digest, where in sorted(by_hash.items())
        if where["train"] and any(where[s] for s in held_out)
    ]
    warnings = [
        f"{s} classes are imbalanced (largest/smallest = {r:.2f} > {IMBALANCE_WARN_RATIO})"
        for s, r in imbalance.items()
        if r > IMBALANCE_WARN_RATIO
    ]
    fingerprint = _fingerprint(content) if all_read else None
    return DataCheck(index.root, counts, imbalance, unreadable, duplicates, warnings, fingerprint)


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 over the sorted ``(split/class/name, content sha256)`` of every image (optional splits included).

    Args:
        root: the dataset root.

    Returns:
        A hex digest that changes when any image is added, removed, renamed or edited.
    """
    index = scan_dataset(root)
    return _fingerprint(
        (path.relative_to(index.root).as_posix(), _content_sha256(path))
        for items in index.splits.values()
        for path, _ in items
    )


def _content_sha256(path: Path) -> str:
    """The file's sha256, or a marker (with the reason) for a file that cannot be read, so a
    fingerprint never fails or blocks (FIFOs are refused unread) and changes once it is readable."""
    try:
        return sha256_file(path)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _fingerprint(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(relative path, content sha256)`` pairs (names that are not valid
    UTF-8 hash as their bytes)."""
    digest = hashlib.sha256()
    for rel, content in sorted(entries):
        digest.update(f"{rel}\t{content}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
