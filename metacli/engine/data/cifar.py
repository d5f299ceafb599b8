"""CIFAR-FS and FC100: N-way K-shot tasks from the 100 classes of CIFAR-100, 600 RGB images of 32×32 each.

Both datasets come from one source, the CIFAR-100 python archive ``cifar-100-python.tar.gz`` under
``<root>/cifar100/`` (or its extracted folder ``<root>/cifar100/cifar-100-python/``), and differ only in
their class split:

- **CIFAR-FS** (Bertinetto, Henriques, Torr, Vedaldi, ICLR 2019): 64 / 16 / 20 fine classes drawn at random;
- **FC100** (Oreshkin, Rodríguez, Lacoste, NeurIPS 2018): 12 / 4 / 4 superclasses with their 5 fine classes
  each (60 / 20 / 20), so that no superclass is shared between meta-training and meta-test.

The splits are the JSON files of torchmeta 1.8.0, packaged with metacli (``assets/cifar100``, MIT, see
``LICENSE-torchmeta.txt``). As every few-shot split of CIFAR-100 does, a class pools its 500 training and
100 test images (in that order, each in archive order): 600 per class.

The archive's ``train``, ``test`` and ``meta`` members are Python pickles. They are read from memory with
miniImageNet's :class:`~metacli.engine.data.miniimagenet.RestrictedUnpickler`, which only rebuilds numpy
arrays, never code. A download must match the archive's md5 (the value torchvision checks); an archive
already present is read as it is, with one warning when its md5 or a member's md5 differs
(``METACLI_TRUST_DATA=1`` silences it). The decoded uint8 tensor of all 100 classes is cached once under
``<cache>/cifar100/``, keyed by the SHA-256 of the source files' content (memoised in
``<cache>/digests/cifar100.json``, with their md5s), never by their size or time.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metacli.engine.config.data import CIFAR_PER_CLASS as PER_CLASS  # noqa: F401 (re-exported)
from metacli.engine.config.data import CIFAR_SPLIT_CLASSES as SPLIT_CLASSES  # noqa: F401 (re-exported)
from metacli.engine.config.data import CIFARFewShotConfig, CIFARFSConfig, FC100Config, Split
from metacli.engine.config.data import CIFARSplitName as SplitName
from metacli.engine.data.download import download as _download
from metacli.engine.data.images import SPLITS, ClassImages, FewShotImages
from metacli.engine.data.miniimagenet import read_pickle, warn_checksums
from metacli.engine.data.paths import (
    ENV_VAR,
    cache_key,
    content_identities,
    digest_index,
    fetch_advice,
    file_digests,
    mismatch,
    read_cache_file,
    user_cache_dir,
    write_cache_file,
)
from metacli.engine.types import DataContext, OpenProgress
from metacli.errors import DataError

FOLDER = "cifar100"
"""Where the archive lives under the data root."""
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
"""md5 of the archive, as torchvision checks it."""
URLS: tuple[str, ...] = (
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "https://cave.cs.toronto.edu/kriz/cifar-100-python.tar.gz",
)
"""The canonical URL, then the host it is reported to have moved to."""
MEMBER_DIR = "cifar-100-python"
MEMBER_MD5: dict[str, str] = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
"""md5 of each member of the archive (torchvision's values)."""
MD5: dict[str, str] = {"archive": ARCHIVE_MD5, **MEMBER_MD5}
"""Every checksum a source is compared with: the archive's and its members'."""
SIDE = 32
FORMAT_VERSION = 1
"""Bumped whenever the cached tensor would change for the same archive (part of the cache key)."""
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)
"""CIFAR-100 channel statistics, as MetaOptNet and learn2learn standardise CIFAR-FS and FC100."""
WHAT = "CIFAR-100"


class Pooled(NamedTuple):
    """All of CIFAR-100: uint8 images (100, 600, 3, 32, 32) in fine-label order, and the class names."""

    images: Tensor
    fine: tuple[str, ...]
    """Name of each fine class (``meta['fine_label_names']``)."""
    coarse: tuple[str, ...]
    """Superclass name of each fine class."""


# --- locating and fetching the source ---------------------------------------------------------------------


def missing_message(folder: Path, download: bool, failure: str = "") -> str:
    """The error for absent CIFAR-100 data: the folder, why (``failure``: a failed download), the accepted
    layouts and the fixes."""
    fetch = fetch_advice("the archive (161 MB)", URLS[0], download)
    why = f" {failure.rstrip('.')}." if failure else ""
    return (
        f"CIFAR-100 not found in {folder}:{why} metacli reads the python archive {ARCHIVE} "
        f"(md5 {ARCHIVE_MD5}) or its extracted folder {MEMBER_DIR}/ with the members train, test and meta. "
        f"Fix: place one of them in {folder}, or pass --data-root / set {ENV_VAR} to a folder that contains "
        f"{FOLDER}/, {fetch}."
    )


def find_source(folder: Path) -> Path | None:
    """The extracted folder when all three members are there, else the archive, else None."""
    extracted = folder / MEMBER_DIR
    if all((extracted / m).is_file() for m in MEMBER_MD5):
        return extracted
    return folder / ARCHIVE if (folder / ARCHIVE).is_file() else None


def ensure_source(
    folder: Path,
    download: bool,
    progress: OpenProgress | None,
    urls: Sequence[str] | None = None,
    md5: str = ARCHIVE_MD5,
) -> Path:
    """The source to read, downloading the archive (md5-verified, atomic, resumable) when it is missing.

    Raises:
        DataError: nothing is there and downloading is off, or every mirror failed.
    """
    found = find_source(folder)
    if found is not None:
        return found
    if not download:
        raise DataError(missing_message(folder, download))
    dest = folder / ARCHIVE
    try:
        _download(list(urls or URLS), dest, md5=md5, progress=progress)
    except DataError as e:
        raise DataError(missing_message(folder, False, str(e))) from e
    return dest


def read_members(source: Path, md5: Mapping[str, str] = MD5, cache: Path | None = None) -> dict[str, bytes]:
    """The bytes of ``train``, ``test`` and ``meta``, from the archive or the extracted folder.

    Checksums are compared before anything is unpickled; a difference is a warning, not an error (a
    re-packed archive differs byte-wise), since the restricted unpickler keeps reading it safe. The
    archive's md5 is memoised under ``cache`` (default: the user cache folder).

    Raises:
        DataError: the archive is not a readable tar.gz, or lacks a member.
    """
    mismatches = []
    if source.is_dir():
        members = {m: (source / m).read_bytes() for m in MEMBER_MD5}
    else:
        index = digest_index(cache if cache is not None else user_cache_dir(), FOLDER)
        (found,) = file_digests([source], index, ("md5", "sha256"))
        mismatches += mismatch(source, "md5", found["md5"], md5["archive"])
        members = _untar(source)
    for name, data in members.items():
        mismatches += mismatch(source / name, "md5", _md5_bytes(data), md5[name])
    warn_checksums("the CIFAR-100 files differ from the published checksums", mismatches)
    return members


def _untar(archive: Path) -> dict[str, bytes]:
    """The three members of ``archive``, read into memory (no extraction to disk)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            out = {}
            for name in MEMBER_MD5:
                f = tar.extractfile(f"{MEMBER_DIR}/{name}")
                if f is None:
                    raise KeyError(name)
                out[name] = f.read()
            return out
    except (tarfile.TarError, OSError, EOFError, KeyError) as e:
        raise DataError(
            f"cannot read {archive}: it is truncated, corrupt or not the CIFAR-100 python archive "
            f"({type(e).__name__}: {e}). Delete it to download it again, or replace it with a genuine copy."
        ) from e


def _md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- decoding ---------------------------------------------------------------------------------------------


def _part(obj: Any, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), fine labels (N,), coarse labels (N,)) of an unpickled member."""
    if not isinstance(obj, dict) or not {"data", "fine_labels", "coarse_labels"} <= set(obj):
        raise DataError(
            f"{where} is not a CIFAR-100 member: expected a dict with data, fine_labels, coarse_labels"
        )
    data = obj["data"]
    fine, coarse = np.asarray(obj["fine_labels"]), np.asarray(obj["coarse_labels"])
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * SIDE**2
    ):
        raise DataError(f"{where}: data must be uint8 of shape (N, 3072)")
    if fine.shape != (len(data),) or coarse.shape != (len(data),):
        raise DataError(f"{where}: fine_labels and coarse_labels must have one entry per image")
    return data.reshape(-1, 3, SIDE, SIDE), fine, coarse


def decode(members: Mapping[str, bytes], source: Path) -> Pooled:
    """All 100 classes pooled: per fine class its train images, then its test images, in archive order.

    Raises:
        DataError: a member has the wrong structure, classes hold different numbers of images, or a
            fine class has images under two superclasses.
    """
    meta = read_pickle(source / "meta", WHAT, members["meta"])
    if not isinstance(meta, dict) or not {"fine_label_names", "coarse_label_names"} <= set(meta):
        raise DataError(
            f"{source / 'meta'} is not CIFAR-100's meta: expected fine_label_names, coarse_label_names"
        )
    parts = [_part(read_pickle(source / m, WHAT, members[m]), source / m) for m in ("train", "test")]
    data = np.concatenate([p[0] for p in parts])
    fine = np.concatenate([p[1] for p in parts])
    coarse = np.concatenate([p[2] for p in parts])
    n_fine = len(meta["fine_label_names"])
    counts = np.bincount(fine, minlength=n_fine)
    if fine.min() < 0 or len(counts) != n_fine or counts.min() != counts.max() or counts[0] == 0:
        raise DataError(
            f"{source}: every fine class must hold the same number of images, got {counts.tolist()}"
        )
    order = np.argsort(fine, kind="stable")  # class-major; train before test within a class
    images = torch.from_numpy(np.ascontiguousarray(data[order])).view(n_fine, int(counts[0]), 3, SIDE, SIDE)
    coarse_of = []
    for c in range(n_fine):
        labels = np.unique(coarse[fine == c])
        if len(labels) != 1:
            raise DataError(f"{source}: fine class {c} has images under superclasses {labels.tolist()}")
        coarse_of.append(str(meta["coarse_label_names"][labels[0]]))
    return Pooled(images, tuple(str(n) for n in meta["fine_label_names"]), tuple(coarse_of))


# --- cache ------------------------------------------------------------------------------------------------


def read_cache(path: Path) -> Pooled | None:
    """The pooled classes cached at ``path``; None when absent, unreadable or not what this version writes."""
    blob = read_cache_file(path, WHAT)
    if blob is None:
        return None
    images = blob.get("images") if isinstance(blob, dict) else None
    if (
        blob.get("format_version") != FORMAT_VERSION
        or not isinstance(images, Tensor)
        or images.dtype != torch.uint8
        or tuple(images.shape[2:]) != (3, SIDE, SIDE)
        or len(blob.get("fine", ())) != images.shape[0]
        or len(blob.get("coarse", ())) != images.shape[0]
    ):
        warnings.warn(f"ignoring the malformed CIFAR-100 cache {path}; rebuilding it", stacklevel=3)
        return None
    return Pooled(images, tuple(blob["fine"]), tuple(blob["coarse"]))


def load_cifar100(
    root: Path,
    cache: Path,
    download: bool = False,
    progress: OpenProgress | None = None,
    urls: Sequence[str] | None = None,
    md5: Mapping[str, str] = MD5,
) -> Pooled:
    """All of CIFAR-100 as one uint8 CPU tensor, decoded once and cached.

    Args:
        root: data root; the archive lives in ``<root>/cifar100``.
        cache: cache folder; the decoded tensor goes to ``<cache>/cifar100/<key>.pt``.
        download: fetch the archive (md5-verified) when it is missing.
        progress: opens the progress displays of downloads (and decoding); None: none.
        urls: download mirrors (default :data:`URLS`); tests point them at a local server.
        md5: expected md5s of the archive and its members (default :data:`MD5`; tests use synthetic
            archives with their own).

    Raises:
        DataError: the data is missing and cannot be downloaded, or the archive is corrupt or refused.
    """
    folder = root / FOLDER
    source = ensure_source(folder, download, progress, urls, md5["archive"])
    files = [source / m for m in MEMBER_MD5] if source.is_dir() else [source]
    index = digest_index(cache, FOLDER)
    file_digests(files, index, ("md5", "sha256"))  # the md5 checked on decoding, in the same pass
    recipe = {
        "dataset": "cifar100",
        "format_version": FORMAT_VERSION,
        "files": content_identities(files, index),
    }
    path = cache / FOLDER / f"{cache_key(recipe)}.pt"
    pooled = read_cache(path)
    if pooled is None:
        pooled = decode(read_members(source, md5, cache), source)
        blob = {"format_version": FORMAT_VERSION, "images": pooled.images}
        write_cache_file(
            path, {**blob, "fine": list(pooled.fine), "coarse": list(pooled.coarse)}, "decoded CIFAR-100"
        )
    return pooled


# --- splits -----------------------------------------------------------------------------------------------


def split_entries(kind: SplitName) -> dict[Split, list[Any]]:
    """The packaged splits of ``kind``: ``[superclass, class]`` pairs (CIFAR-FS) or superclasses (FC100)."""
    folder = resources.files("metacli.engine.data").joinpath(f"assets/{FOLDER}/{kind}")
    return {s: json.loads(folder.joinpath(f"{s}.json").read_text(encoding="utf-8")) for s in SPLITS}


def split_classes(kind: SplitName, pooled: Pooled) -> dict[Split, list[int]]:
    """Indices of the fine classes of each split of ``kind`` in ``pooled`` (in fine-label order for FC100).

    Raises:
        DataError: a class the split names is not in the archive, or names another superclass.
    """
    index = {name: i for i, name in enumerate(pooled.fine)}
    out: dict[Split, list[int]] = {}
    for split, entries in split_entries(kind).items():
        if kind == "fc100":
            missing = sorted(set(entries) - set(pooled.coarse))
            classes = [i for i, sup in enumerate(pooled.coarse) if sup in set(entries)]
        else:
            missing = [f"{sup}/{n}" for sup, n in entries if n not in index or pooled.coarse[index[n]] != sup]
            classes = [index[n] for _, n in entries if n in index]
        if missing:
            raise DataError(
                f"the CIFAR-100 archive has no class {', '.join(missing[:3])} that the {kind} {split} split "
                "names: it is not the CIFAR-100 python archive. Replace it with a genuine copy."
            )
        out[split] = classes
    return out


def _build(cfg: CIFARFewShotConfig, ctx: DataContext, kind: SplitName) -> FewShotImages:
    pooled = load_cifar100(ctx.root, ctx.cache, download=ctx.download, progress=ctx.progress)
    classes = split_classes(kind, pooled)
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if cfg.normalize == "cifar100" else (None, None)
    images: dict[str, ClassImages] = {s: ClassImages(pooled.images[classes[s]], ctx.device) for s in SPLITS}
    return FewShotImages(cfg, images, mean, std)


def build_cifar_fs(cfg: CIFARFSConfig, ctx: DataContext) -> FewShotImages:
    """The dataset contract: N-way K-shot CIFAR-FS tasks drawn on ``ctx.device``."""
    return _build(cfg, ctx, "cifar-fs")


def build_fc100(cfg: FC100Config, ctx: DataContext) -> FewShotImages:
    """The dataset contract: N-way K-shot FC100 tasks drawn on ``ctx.device``."""
    return _build(cfg, ctx, "fc100")
