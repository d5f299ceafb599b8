"""miniImageNet (Ravi & Larochelle split): 64 / 16 / 20 classes of 600 RGB images, 84×84.

Two source layouts under ``<root>/miniimagenet/`` are read:

1. **pickles** ``mini-imagenet-cache-{train,val,test}.pkl`` (the validation split may also be named
   ``mini-imagenet-cache-validation.pkl``, as learn2learn names it), each a dict
   ``{'image_data': uint8 (N, 84, 84, 3), 'class_dict': {wnid: [indices]}}``;
2. an **image folder** ``images/<filename>`` beside the split files ``{train,val,test}.csv`` (header
   ``filename,label``). Images are converted to RGB and, when they are not already 84×84, resized with
   PIL's Lanczos filter (the filter of the common miniImageNet generation scripts).

Both give, per split, one uint8 tensor (classes, images per class, 3, 84, 84): classes sorted by wnid,
images within a class in the order of the CSV rows or of the ``class_dict`` index lists (which agree
for the real files). The decoded tensors are cached once under ``<cache>/miniimagenet/`` and read back
by later builds, so the pickles are unpickled (or the JPEGs decoded) only once. The cache key holds the
SHA-256 of every source file's content (pickles, or CSVs and images), memoised in
``<cache>/digests/miniimagenet.json`` (:func:`~metacli.engine.data.paths.file_digests`), so a source file
fixed in place gets a new cache and a cache built from other files is never reused.

Safety of the pickles: unpickling runs whatever the file names, so pickles are read with
:class:`RestrictedUnpickler`, which only rebuilds numpy arrays. Their md5 is computed before
unpickling and compared with the values PaddleFSL publishes for the original pickles (third-party
values, not verified by metacli). A download must match them; a pickle that is already present is read
as it is, with one warning if it differs (``METACLI_TRUST_DATA=1`` silences it), because pickles made by
users (or other tools) legitimately differ byte-wise and the restricted unpickler is what makes reading
them safe.

Downloads, when allowed, come from learn2learn's Zenodo record.
"""

from __future__ import annotations

import codecs
import csv
import importlib
import io
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

from metacli.engine.config.data import MINIIMAGENET_PER_CLASS as PER_CLASS  # noqa: F401 (re-exported)
from metacli.engine.config.data import MINIIMAGENET_SPLIT_CLASSES as SPLIT_CLASSES  # noqa: F401 (re-exported)
from metacli.engine.config.data import MiniImageNetConfig, Split
from metacli.engine.data.download import download as _download
from metacli.engine.data.images import SPLITS, ClassImages, FewShotImages
from metacli.engine.data.paths import (
    ENV_VAR,
    cache_key,
    content_identities,
    digest_index,
    fetch_advice,
    file_digests,
    mismatch,
    read_cache_file,
    report_mismatches,
    user_cache_dir,
    write_cache_file,
)
from metacli.engine.types import DataContext, OpenProgress
from metacli.errors import DataError

SourceFormat = Literal["pickle", "folder"]

FOLDER = "miniimagenet"
"""Sub-folder of the data root (and of the cache) that holds miniImageNet."""
SIDE = 84
"""Height and width of every image."""
FORMAT_VERSION = 1
"""Bumped whenever the cached tensors would change for the same source files (part of the cache key)."""

RESAMPLE = Image.Resampling.LANCZOS
"""Filter used to resize folder images that are not already 84×84."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet channel statistics, as Sparse-MAML and torchmeta users standardise miniImageNet."""

PICKLE_NAMES: dict[Split, tuple[str, ...]] = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
"""Accepted pickle names per split, in order of preference (``val``: the archive's, then learn2learn's)."""

DOWNLOAD_NAMES: dict[Split, str] = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}
"""Names under which downloaded pickles are stored (learn2learn's, as on Zenodo)."""

ZENODO = "https://zenodo.org/record/7978538/files/"
URLS: dict[Split, tuple[str, ...]] = {split: (ZENODO + name,) for split, name in DOWNLOAD_NAMES.items()}
"""Download mirrors per split: learn2learn 0.2.0's Zenodo record."""

MD5: dict[Split, str] = {
    "train": "069993a77e65a83bbf8f8de4c9dcca68",
    "val": "f87ddf9b5211920dd73520274371eb6a",
    "test": "12158d649fd08945294de4ad38cda81d",
}
"""Per-pickle md5s published by PaddleFSL (``paddlefsl/datasets/mini_imagenet.py``).

Third-party values that metacli has not verified against the files themselves (no copy is reachable
offline); a download must match them, a pickle already present is only compared with them.
"""

CSV_NAMES: dict[Split, str] = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
IMAGES_DIR = "images"

_CORE_NAMES: dict[str, tuple[str, ...]] = {
    "multiarray": ("_reconstruct", "scalar"),
    "numeric": ("_frombuffer",),
}
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (f"numpy.{core}.{sub}", n)
        for core in ("core", "_core")
        for sub, names in _CORE_NAMES.items()
        for n in names
    }
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)
"""The only globals a miniImageNet pickle needs, whichever pickle protocol wrote it.

- ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``: an array (protocols 0-4);
  ``numpy.core.multiarray.scalar``: a numpy scalar, e.g. an index in ``class_dict``;
- ``numpy.core.numeric._frombuffer``: an array under protocol 5 (Python 3.14's default), which
  reshapes a byte buffer;
- ``_codecs.encode``: how Python 3 writes ``bytes`` under protocols 0-2 (the array payload), a pure
  text-to-bytes conversion that PyTorch's ``weights_only`` loader also allows.

Each numpy name is accepted under ``numpy.core`` (numpy 1) and ``numpy._core`` (numpy 2). None of them
can run code or touch the file system.
"""

UInt8Array = npt.NDArray[np.uint8]


class SplitImages(NamedTuple):
    """One decoded split: uint8 images (classes, per_class, 3, 84, 84) and the wnid of each class."""

    images: Tensor
    classes: tuple[str, ...]


# --- the restricted unpickler ---------------------------------------------------------------------------


def _numpy_core(sub: str) -> ModuleType:
    """numpy's ``multiarray`` or ``numeric`` module under its current name (``numpy._core`` since numpy 2).

    Old pickles name ``numpy.core.<sub>``; importing that under numpy 2 raises a deprecation warning, so
    both spellings are served from the module that exists.
    """
    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{sub}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, dtypes and scalars (plus builtin containers).

    It is what makes reading a pickle of unknown origin safe, md5 or not: see :data:`_ALLOWED`.

    Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is imported, so a
    malicious or corrupt pickle cannot run code; it raises :class:`DataError` instead.
    """

    def __init__(self, file: Any, source: Path, what: str = "miniImageNet") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        """The allowed numpy global ``module.name``; DataError for anything else."""
        if (module, name) not in _ALLOWED:
            raise DataError(
                f"{self.source} is refused: the pickle tried to import {module}.{name}, which the "
                f"{self.what} pickle format never needs (it holds only numpy arrays, dicts, lists, strings "
                "and numbers). Loading it could run arbitrary code, so it was not loaded; replace it with a "
                "genuine copy."
            )
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return codecs.encode
        return getattr(_numpy_core(module.rsplit(".", 1)[1]), name)


def read_pickle(path: Path, what: str = "miniImageNet", data: bytes | None = None) -> Any:
    """The object stored in ``path`` (or in ``data``, read from ``path``), read with
    :class:`RestrictedUnpickler` (``encoding="latin1"``).

    latin1 is what numpy needs to read arrays from Python 2 pickles, which the original files are.

    Args:
        path: the pickle, or the archive member ``data`` came from (named in errors).
        what: the dataset, for error messages.
        data: the pickle's bytes when they come from an archive member rather than a file.

    Raises:
        DataError: a refused import, or a truncated or corrupt file.
    """
    try:
        with io.BytesIO(data) if data is not None else path.open("rb") as f:
            return RestrictedUnpickler(f, path, what).load()
    except DataError:
        raise
    except Exception as e:  # arbitrary bytes can make the unpickler raise nearly anything
        raise DataError(
            f"cannot read the {what} pickle {path}: it is truncated or corrupt "
            f"({type(e).__name__}: {e}). Delete it to download it again, or replace it with a genuine copy."
        ) from e


# --- locating the sources ---------------------------------------------------------------------------------


def find_pickles(folder: Path) -> dict[Split, Path]:
    """The pickle present for each split (missing splits are absent from the result)."""
    found: dict[Split, Path] = {}
    for split in SPLITS:
        for name in PICKLE_NAMES[split]:
            if (folder / name).is_file():
                found[split] = folder / name
                break
    return found


def folder_present(folder: Path) -> bool:
    """Whether the image-folder layout is there: ``images/`` and the three split CSVs."""
    return (folder / IMAGES_DIR).is_dir() and all((folder / CSV_NAMES[s]).is_file() for s in SPLITS)


def _layouts() -> str:
    """The sentence describing both accepted layouts (shared by the error messages)."""
    return (
        "metacli reads either (1) the three pickles mini-imagenet-cache-train.pkl, "
        "mini-imagenet-cache-val.pkl (or mini-imagenet-cache-validation.pkl, as learn2learn names it) and "
        "mini-imagenet-cache-test.pkl, each a dict {'image_data': uint8 (N, 84, 84, 3), 'class_dict': "
        "{wnid: [indices]}}, or (2) an image folder images/<filename>.jpg beside the Ravi & Larochelle "
        "split files train.csv, val.csv and test.csv (header filename,label)"
    )


def what_is_there(folder: Path) -> str:
    """What ``folder`` holds of either layout, for the not-found message (e.g. only images/ is missing)."""
    if not folder.is_dir():
        return "the folder does not exist"
    csvs = [CSV_NAMES[s] for s in SPLITS if (folder / CSV_NAMES[s]).is_file()]
    images = (folder / IMAGES_DIR).is_dir()
    pickles = [path.name for path in find_pickles(folder).values()]
    if pickles:
        return f"only {len(pickles)} of the three pickles are there ({', '.join(pickles)})"
    if images or csvs:
        absent = [f"{IMAGES_DIR}/"] * (not images) + [n for n in CSV_NAMES.values() if n not in csvs]
        present = [f"{IMAGES_DIR}/"] * images + csvs
        return f"{', '.join(present)} found, but {', '.join(absent)} missing (the image-folder layout)"
    return "it holds neither layout"


def missing_message(folder: Path, cause: str, download: bool) -> str:
    """The one-paragraph error for absent miniImageNet data: both layouts, the folder, and the fixes."""
    fetch = fetch_advice("the pickles (about 1.3 GB)", ZENODO, download)
    return (
        f"miniImageNet not found in {folder}: {cause}. {_layouts()}. Fix: pass --data-root pointing at a "
        f"folder that contains miniimagenet/ in one of these layouts, or set {ENV_VAR} to such a folder, "
        f"{fetch}."
    )


def resolve_format(folder: Path, fmt: str, download: bool) -> SourceFormat:
    """The layout to read: ``fmt``, or for ``auto`` the pickles when all three exist, else the folder.

    Under ``auto`` with neither layout complete, the pickles are chosen when downloading is allowed
    (they are what can be downloaded); otherwise the missing data is an error. A missing pickle under
    ``pickle`` is reported by :func:`ensure_pickles`.

    Raises:
        DataError: the folder layout is requested but incomplete, or under ``auto`` no layout is
            complete and downloading is off.
    """
    if fmt == "pickle":
        return "pickle"
    if fmt == "folder":
        if not folder_present(folder):
            raise DataError(missing_message(folder, what_is_there(folder), download))
        return "folder"
    if len(find_pickles(folder)) == len(SPLITS):
        return "pickle"
    if folder_present(folder):
        return "folder"
    if download:
        return "pickle"
    raise DataError(missing_message(folder, f"{what_is_there(folder)}; downloading is off", download))


# --- downloads --------------------------------------------------------------------------------------------


def _fetch(urls: Sequence[str], dest: Path, md5: str, progress: OpenProgress | None) -> None:
    """Download ``dest`` from the first of ``urls`` whose content has md5 ``md5`` (atomic, resumable)."""
    _download(list(urls), dest, md5=md5, progress=progress)


def ensure_pickles(
    folder: Path,
    download: bool,
    progress: OpenProgress | None,
    urls: Mapping[Split, Sequence[str]] | None = None,
    md5: Mapping[Split, str] | None = None,
) -> dict[Split, Path]:
    """The pickle of every split, downloading the missing ones (md5-verified) when ``download``.

    Args:
        folder: ``<root>/miniimagenet``.
        download: fetch missing pickles; otherwise a missing pickle is an error.
        progress: opens the progress displays of downloads (and decoding); None: none.
        urls: mirrors per split (default :data:`URLS`); tests point them at a local server.
        md5: expected md5 per split (default :data:`MD5`).

    Raises:
        DataError: a pickle is missing and cannot be downloaded, or the download has another md5.
    """
    found = find_pickles(folder)
    mirrors = URLS if urls is None else urls
    sums = MD5 if md5 is None else md5
    for split in SPLITS:
        if split in found:
            continue
        if not download:
            cause = f"{what_is_there(folder)}; {PICKLE_NAMES[split][0]} is missing and downloading is off"
            raise DataError(missing_message(folder, cause, download))
        dest = folder / DOWNLOAD_NAMES[split]
        try:
            _fetch(mirrors[split], dest, sums[split], progress)
        except DataError as e:
            raise DataError(_download_failed(folder, dest.name, sums[split], e)) from e
        found[split] = dest
    return found


def _download_failed(folder: Path, name: str, md5: str, error: DataError) -> str:
    """The error for a failed download: what is there, the failure, the third-party nature of the md5, and
    the manual fix."""
    return (
        f"miniImageNet not found in {folder}: {what_is_there(folder)}, and the download of {name} failed: "
        f"{str(error).rstrip('.')}. The md5 that {name} is checked against, {md5}, is the value PaddleFSL "
        "publishes for the original pickle, a third-party value that metacli has not verified; a download "
        "with another md5 is refused. Fix: place the pickles by hand: copy mini-imagenet-cache-train.pkl, "
        f"mini-imagenet-cache-val.pkl (or -validation.pkl) and mini-imagenet-cache-test.pkl into {folder} "
        "(files already present are read as they are, with a warning if their md5 differs, through an "
        "unpickler that only rebuilds numpy arrays), or use the image-folder layout (images/ with train.csv, "
        f"val.csv and test.csv) in the same folder, or pass --data-root / set {ENV_VAR} to where they are."
    )


def check_md5(
    pickles: Mapping[Split, Path], md5: Mapping[Split, str] | None = None, cache: Path | None = None
) -> list[str]:
    """Compare each pickle's md5 with the published value; warn once about all that differ.

    A mismatch is allowed (user-made pickles differ byte-wise from the original ones; the restricted
    unpickler keeps reading them safe) but recorded, so a surprising result can be traced to the file.
    The md5s are memoised under ``cache`` (default: the user cache folder).

    Returns:
        One line per mismatching pickle (empty when all match).
    """
    sums = MD5 if md5 is None else md5
    index = digest_index(cache if cache is not None else user_cache_dir(), FOLDER)
    found = file_digests(list(pickles.values()), index, ("md5", "sha256"))  # sha256: the cache key's
    lines = [
        x
        for (s, p), d in zip(pickles.items(), found, strict=True)
        for x in mismatch(p, "md5", d["md5"], sums[s])
    ]
    warn_checksums(
        "miniImageNet pickles differ from the md5s PaddleFSL publishes for the originals (third-party "
        "values, not verified by metacli)",
        lines,
    )
    return lines


def warn_checksums(lead: str, mismatches: list[str]) -> None:
    """One warning listing every checksum mismatch of pickles that are read anyway (none: no warning).

    Files already present are read despite a mismatch (re-packed or user-made copies differ byte-wise);
    the restricted unpickler is what keeps reading them safe, and the warning makes the difference
    traceable. ``METACLI_TRUST_DATA=1`` silences it.
    """
    report_mismatches(
        lead, mismatches, "Reading them anyway with an unpickler that only rebuilds numpy arrays."
    )


# --- decoding ---------------------------------------------------------------------------------------------


def _empty_split(classes: list[str], counts: list[int], source: Path) -> Tensor:
    """An uninitialised uint8 (classes, per_class, 3, 84, 84) tensor, once every class has as many images.

    The split is filled in place, class by class or image by image, so that decoding needs no more
    memory than the source and the result (the real train split is 0.8 GB).

    Raises:
        DataError: the classes hold different numbers of images, or none.
    """
    if len(set(counts)) != 1 or counts[0] == 0:
        sizes = ", ".join(f"{c}: {n}" for c, n in zip(classes, counts, strict=True))
        raise DataError(
            f"{source}: every class must hold the same (non-zero) number of images, but they hold {sizes}"
        )
    return torch.empty((len(classes), counts[0], 3, SIDE, SIDE), dtype=torch.uint8)


def _chw(pixels: UInt8Array) -> Tensor:
    """A (..., 3, H, W) view of (..., H, W, 3) pixels (the copy happens when it is assigned)."""
    return torch.from_numpy(pixels).movedim(-1, -3)


def _pickle_parts(obj: Any, path: Path) -> tuple[UInt8Array, dict[str, Any]]:
    """``image_data`` and ``class_dict`` of an unpickled split, after checking the schema.

    Raises:
        DataError: the object is not a dict of a uint8 (N, 84, 84, 3) array and a non-empty class dict.
    """
    schema = "expected a dict {'image_data': uint8 (N, 84, 84, 3), 'class_dict': {wnid: [indices]}}"
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        raise DataError(f"{path} is not a miniImageNet pickle: {schema}")
    data, class_dict = obj["image_data"], obj["class_dict"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (SIDE, SIDE, 3):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DataError(f"{path}: image_data is {got}; {schema}")
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: class_dict is empty or not a dict; {schema}")
    return data, class_dict


def _class_indices(indices: Any, n_images: int, wnid: str, path: Path) -> npt.NDArray[np.int64]:
    """The index list of one class as int64, checked to lie in 0..n_images-1."""
    try:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: the indices of class {wnid} are not integers ({e})") from e
    if idx.size and (idx.min() < 0 or idx.max() >= n_images):
        raise DataError(f"{path}: class {wnid} points outside image_data (which holds {n_images} images)")
    return idx


def decode_pickle(path: Path) -> SplitImages:
    """One split from a pickle: classes sorted by wnid, images in the order of their index lists."""
    data, class_dict = _pickle_parts(read_pickle(path), path)
    by_name = {str(c): v for c, v in class_dict.items()}
    classes = sorted(by_name)
    indices = [_class_indices(by_name[c], len(data), c, path) for c in classes]
    out = _empty_split(classes, [len(i) for i in indices], path)
    for c, idx in enumerate(indices):
        out[c] = _chw(data[idx])
    return SplitImages(out, tuple(classes))


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """The filenames of each class of a split CSV (header ``filename,label``), in row order.

    Raises:
        DataError: the file cannot be read or has another header.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the miniImageNet split file {path}: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path} is not a miniImageNet split file: expected the header filename,label")
    by_class: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:  # a blank line, e.g. at the end
            continue
        if len(row) != 2:
            raise DataError(f"{path}, line {line}: expected filename,label, got {row}")
        by_class.setdefault(row[1].strip(), []).append(row[0].strip())
    if not by_class:
        raise DataError(f"{path} lists no images")
    return by_class


def _check_images_exist(images: Path, names: list[str], csv_path: Path) -> None:
    """DataError naming the first few files of ``names`` missing from ``images`` (before any decoding)."""
    missing = [n for n in names if not (images / n).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(names)} images listed in {csv_path} are missing from {images} "
            f"(e.g. {', '.join(missing[:3])}); complete the folder or use the pickle layout"
        )


def load_image(path: Path) -> UInt8Array:
    """(84, 84, 3) uint8 pixels of an image, converted to RGB, resized with :data:`RESAMPLE` if needed."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"cannot decode the image {path}: {e}") from e
    if rgb.size != (SIDE, SIDE):
        rgb = rgb.resize((SIDE, SIDE), RESAMPLE)
    return np.array(rgb, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants


def decode_folder(folder: Path, split: Split, progress: OpenProgress | None = None) -> SplitImages:
    """One split from ``images/`` and its CSV: classes sorted by wnid, images in CSV row order."""
    csv_path, images = folder / CSV_NAMES[split], folder / IMAGES_DIR
    by_class = read_split_csv(csv_path)
    classes = sorted(by_class)
    out = _empty_split(classes, [len(by_class[c]) for c in classes], csv_path)
    _check_images_exist(images, [n for c in classes for n in by_class[c]], csv_path)
    slots = [(ci, i, images / n) for ci, c in enumerate(classes) for i, n in enumerate(by_class[c])]
    label = f"decoding miniImageNet {split}"
    report = progress(label, len(slots), "images") if progress else None
    for n, (ci, i, path) in enumerate(slots, 1):
        out[ci, i] = _chw(load_image(path))
        if report is not None:
            report(n, {})
    return SplitImages(out, tuple(classes))


# --- the cache --------------------------------------------------------------------------------------------


def _sources(folder: Path, fmt: SourceFormat, pickles: Mapping[Split, Path]) -> list[Path]:
    """Every file the decoded tensors depend on (the CSVs and each listed image for the folder layout).

    Listed images are checked to exist here, so that a missing one is named before the cache key is
    computed from the files' identities.
    """
    if fmt == "pickle":
        return [pickles[s] for s in SPLITS]
    paths: list[Path] = []
    for s in SPLITS:
        csv_path = folder / CSV_NAMES[s]
        names = [n for listed in read_split_csv(csv_path).values() for n in listed]
        _check_images_exist(folder / IMAGES_DIR, names, csv_path)
        paths += [csv_path] + [folder / IMAGES_DIR / n for n in names]
    return paths


def recipe(fmt: SourceFormat, sources: Sequence[Path], cache: Path) -> dict[str, Any]:
    """What the cached tensors depend on: the layout, each source file's content, the format version.

    ``cache`` holds the digest memo (:func:`~metacli.engine.data.paths.digest_index`).
    """
    out: dict[str, Any] = {"dataset": "miniimagenet", "format_version": FORMAT_VERSION, "source": fmt}
    out["files"] = content_identities(sources, digest_index(cache, FOLDER))
    if fmt == "folder":
        out["resize"] = {"side": SIDE, "filter": RESAMPLE.name}
    return out


def _valid_split(entry: Any) -> bool:
    """Whether a cached split entry has the shape of a decoded split."""
    if not isinstance(entry, dict):
        return False
    images, classes = entry.get("images"), entry.get("classes")
    return (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and images.dim() == 5
        and tuple(images.shape[2:]) == (3, SIDE, SIDE)
        and isinstance(classes, list)
        and len(classes) == images.shape[0]
    )


def read_cache(path: Path) -> dict[Split, SplitImages] | None:
    """The splits cached at ``path``, or None when it is absent, unreadable or not what this version writes.

    A corrupt cache is not an error: the caller rebuilds it from the sources.
    """
    blob = read_cache_file(path, "miniImageNet")
    if blob is None:
        return None
    ok = isinstance(blob, dict) and blob.get("format_version") == FORMAT_VERSION
    splits = blob.get("splits") if ok else None
    if not isinstance(splits, dict) or not all(_valid_split(splits.get(s)) for s in SPLITS):
        warnings.warn(f"ignoring the malformed miniImageNet cache {path}; rebuilding it", stacklevel=3)
        return None
    return {s: SplitImages(splits[s]["images"], tuple(splits[s]["classes"])) for s in SPLITS}


def write_cache(path: Path, splits: Mapping[Split, SplitImages]) -> None:
    """Write the decoded splits to ``path`` atomically (temporary file in the same folder + os.replace).

    A cache that cannot be written (read-only or full disk) only costs a rebuild next time: it is a
    warning, not an error.
    """
    blob = {
        "format_version": FORMAT_VERSION,
        "splits": {s: {"images": v.images, "classes": list(v.classes)} for s, v in splits.items()},
    }
    write_cache_file(path, blob, "decoded miniImageNet")


# --- loading ----------------------------------------------------------------------------------------------


def _check_disjoint(splits: Mapping[Split, SplitImages]) -> None:
    """DataError when a class appears in two splits (the splits would leak into each other)."""
    seen: dict[str, Split] = {}
    for split, data in splits.items():
        for wnid in data.classes:
            if wnid in seen:
                raise DataError(
                    f"miniImageNet class {wnid} is in both the {seen[wnid]} and the {split} split"
                )
            seen[wnid] = split


def _decode(
    folder: Path,
    fmt: SourceFormat,
    pickles: Mapping[Split, Path],
    progress: OpenProgress | None,
    md5: Mapping[Split, str] | None,
    cache: Path,
) -> dict[Split, SplitImages]:
    """Decode every split from its source (pickles are md5-compared before they are unpickled)."""
    if fmt == "pickle":
        check_md5(pickles, md5, cache)
        out = {s: decode_pickle(pickles[s]) for s in SPLITS}
    else:
        out = {s: decode_folder(folder, s, progress) for s in SPLITS}
    _check_disjoint(out)
    return out


def load_miniimagenet(
    root: Path,
    cache: Path,
    fmt: Literal["auto", "pickle", "folder"] = "auto",
    download: bool = False,
    progress: OpenProgress | None = None,
    urls: Mapping[Split, Sequence[str]] | None = None,
    md5: Mapping[Split, str] | None = None,
) -> dict[Split, SplitImages]:
    """The three splits as uint8 (classes, per_class, 3, 84, 84) CPU tensors, cached after the first decode.

    Args:
        root: data root; the sources live in ``<root>/miniimagenet``.
        cache: cache folder; decoded tensors go to ``<cache>/miniimagenet/<key>.pt``.
        fmt: source layout (see :class:`MiniImageNetConfig`).
        download: fetch missing pickles (md5-verified) when the pickle layout is used.
        progress: opens the progress displays of downloads (and decoding); None: none.
        urls: download mirrors per split (default :data:`URLS`).
        md5: expected md5 per split (default :data:`MD5`).

    Raises:
        DataError: the data is missing and cannot be downloaded, or a source file is corrupt or refused.
    """
    folder = root / FOLDER
    source = resolve_format(folder, fmt, download)
    pickles = ensure_pickles(folder, download, progress, urls, md5) if source == "pickle" else {}
    if pickles:  # md5 (checked on decoding) and sha256 (the cache key) in one pass over each pickle
        file_digests(list(pickles.values()), digest_index(cache, FOLDER), ("md5", "sha256"))
    key = cache_key(recipe(source, _sources(folder, source, pickles), cache))
    cache_path = cache / FOLDER / f"{key}.pt"
    splits = read_cache(cache_path)
    if splits is None:
        splits = _decode(folder, source, pickles, progress, md5, cache)
        write_cache(cache_path, splits)
    return splits


def build(cfg: MiniImageNetConfig, ctx: DataContext) -> FewShotImages:
    """The dataset contract: N-way K-shot miniImageNet tasks drawn on ``ctx.device``."""
    splits = load_miniimagenet(ctx.root, ctx.cache, cfg.format, download=ctx.download, progress=ctx.progress)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize == "imagenet" else (None, None)
    images: dict[str, ClassImages] = {s: ClassImages(splits[s].images, ctx.device) for s in SPLITS}
    return FewShotImages(cfg, images, mean, std)
