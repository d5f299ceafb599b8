"""Omniglot (Lake et al., 2015): 1,623 handwritten characters x 20 drawers as N-way K-shot tasks.

**Source.** The two official archives ``<root>/omniglot/images_background.zip`` (964 characters of 30
alphabets) and ``images_evaluation.zip`` (659 of 20), read directly with :mod:`zipfile` (no
extraction, so a read-only data root works and nothing is left beside the archives). Layout:
``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``, PNG mode "1", 105x105, white background, black
ink. A missing archive is downloaded, when allowed, from :data:`URLS` and must match :data:`MD5`. An
archive already present is compared with :data:`MD5` when it is decoded: a difference is one warning
naming the file and both checksums, not an error, because pixel-exact rebuilds of the official archives
(another PNG encoder, other zip headers) are common and read correctly; ``METACLI_TRUST_DATA=1`` silences
it. The md5s are memoised (:func:`~metacli.engine.data.paths.file_digests`), so checking costs nothing
after the first run.

**Decoding** (one image): convert to 8-bit grey, invert so ink = 255 and background = 0, then resize
105 -> ``image_size`` with Pillow's LANCZOS filter, as cbfinn/maml's ``proc_images.py``
(``resize((28, 28), resample=Image.LANCZOS)``). One difference is deliberate: that script resizes
the mode-"1" image itself, and Pillow silently replaces any filter by NEAREST for mode "1", so its
28x28 images are binary; converting to grey first makes the LANCZOS filter actually apply and keeps
the anti-aliased grey levels (torchmeta likewise resizes grey images). Stored as uint8 0..255
(255 = full ink); :class:`~metacli.engine.data.images.FewShotImages` scales by 1/255 on the device.

**Order.** Characters are sorted by (alphabet, character folder name) and drawers by file name, so
the tensor of a split never depends on the order of the zip members.

**Splits.**

- ``vinyals`` (default): the 1,028 / 172 / 423-character split of Vinyals et al. (2016) as torchmeta
  1.8.0 ships it (set -> alphabet -> character list). The JSONs are packaged with metacli
  (``assets/omniglot``, MIT, see ``LICENSE-torchmeta.txt``) and always preferred, so the split never
  depends on what a data root holds.
- ``lake``: train = the background set minus ``lake_val_characters`` validation characters, test =
  the evaluation set (Lake's background/evaluation protocol with a held-out validation subset, like
  cbfinn/maml's 1100 + 100 / 423). The validation characters are those with the smallest
  SHA-256 of ``"<split_seed>/<set>/<alphabet>/<character>"``: a seeded draw that depends on no
  library's random-number algorithm (NumPy and torch do not promise stable streams across versions)
  and not on archive order.

**Cache.** Decoding 32,460 PNGs takes several seconds, so the decoded characters of *both* archives
(not one split) are cached in one file ``<cache>/omniglot/<cache_key(recipe)>.pt``; the recipe holds
the SHA-256 of each archive's content (never its size or time, so an archive fixed in place gets a new
cache), ``image_size``, the Pillow version (its resampling code has changed between releases) and
:data:`FORMAT_VERSION`. Splits are then selected in memory, so switching between ``vinyals`` and
``lake`` or changing ``split_seed`` never decodes again. The file is written atomically (a temporary
file in the same folder, then :func:`os.replace`); a file that fails to load or holds something
unexpected is decoded again and overwritten, with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import PIL
import torch
from PIL import Image
from torch import Tensor

from metacli.engine.config.data import DRAWERS, OmniglotConfig, Split
from metacli.engine.data.download import download as _download
from metacli.engine.data.images import SPLITS, ClassImages, FewShotImages
from metacli.engine.data.paths import (
    ENV_VAR,
    cache_key,
    content_identities,
    digest_index,
    file_digests,
    mismatch,
    read_cache_file,
    report_mismatches,
    write_cache_file,
)
from metacli.engine.types import DataContext, OpenProgress
from metacli.errors import DataError

FOLDER = "omniglot"
"""Sub-folder of the data root (and of the cache) that holds Omniglot."""

SETS: tuple[str, ...] = ("background", "evaluation")
"""The two official sets; archive ``images_<set>.zip`` holds members under ``images_<set>/``."""

ARCHIVES: dict[str, str] = {s: f"images_{s}.zip" for s in SETS}
"""Archive file name of each set."""

MIRRORS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
    "https://github.com/brendenlake/omniglot/raw/master/python/",
)
"""Base URLs of the official archives, tried in order (torchvision's, then torchmeta's)."""

URLS: dict[str, tuple[str, ...]] = {name: tuple(m + name for m in MIRRORS) for name in ARCHIVES.values()}
"""Download URLs of each archive, best first."""

MD5: dict[str, str] = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
"""MD5 of the official archives (torchvision, torchmeta): a download must match, a present archive warns."""

FORMAT_VERSION = 1
"""Bump when the decoding or the cache layout changes, so old caches are ignored."""

_SPLIT_ASSETS = f"assets/{FOLDER}"
"""Where the packaged Vinyals split JSONs live, relative to this package."""

UInt8Array = npt.NDArray[np.uint8]


class Character(NamedTuple):
    """One Omniglot character: its set, alphabet and folder name (``characterNN``)."""

    set: str
    alphabet: str
    name: str

    def sort_key(self) -> tuple[str, str, str]:
        """(alphabet, character, set); alphabets differ between the sets, so ``set`` only makes it total."""
        return (self.alphabet, self.name, self.set)

    def __str__(self) -> str:
        return f"{self.set}/{self.alphabet}/{self.name}"


class OmniglotCharacters(NamedTuple):
    """Every decoded character of both archives, sorted: names and uint8 (n, 20, 1, S, S), ink = 255."""

    characters: list[Character]
    images: Tensor


# --- archives: locate, download -----------------------------------------------------------------------


def archive_paths(root: Path) -> dict[str, Path]:
    """``{set: <root>/omniglot/images_<set>.zip}``."""
    return {s: root / FOLDER / name for s, name in ARCHIVES.items()}


def _missing_message(folder: Path, missing: Sequence[str], cause: str) -> str:
    """The one-paragraph error for absent archives: what is expected, where, and how to fix it."""
    return (
        f"Omniglot not found: {cause}. Expected the official archives {' and '.join(ARCHIVES.values())} "
        f"(missing: {', '.join(missing)}) in {folder}. Fix: pass --data-root pointing at a folder that "
        f"contains omniglot/ with these files, or set {ENV_VAR} to such a folder, or connect to the "
        f"internet and allow the download (from {MIRRORS[0]})."
    )


def ensure_archives(
    root: Path, download: bool, progress: OpenProgress | None = None, mirrors: Sequence[str] | None = None
) -> dict[str, Path]:
    """The two archive paths, downloading (MD5-verified) any that is missing when ``download``.

    Args:
        root: data root; the archives live in ``<root>/omniglot``.
        download: fetch a missing archive; otherwise a missing archive is an error.
        progress: opens the progress displays of downloads (and decoding); None: none.
        mirrors: base URLs tried in order instead of :data:`MIRRORS` (``<base><archive name>``).

    Raises:
        DataError: an archive is missing and downloading is off or failed (one paragraph, with fixes).
    """
    paths = archive_paths(root)
    folder = root / FOLDER
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing and not download:
        raise DataError(_missing_message(folder, missing, "downloading is off"))
    for name in missing:
        urls = [m + name for m in mirrors] if mirrors is not None else list(URLS[name])
        try:
            _download(urls, folder / name, md5=MD5[name], progress=progress)
        except DataError as e:
            raise DataError(_missing_message(folder, missing, f"the download of {name} failed ({e})")) from e
    return paths


# --- decoding -----------------------------------------------------------------------------------------


def decode_image(png: bytes, size: int) -> UInt8Array:
    """One Omniglot PNG -> uint8 (size, size), ink = 255 (see the module docstring for each step)."""
    with Image.open(io.BytesIO(png)) as im:
        grey = np.asarray(im.convert("L"), dtype=np.uint8)
    inverted = 255 - grey
    if inverted.shape == (size, size):
        return inverted
    resized = Image.fromarray(inverted).resize((size, size), resample=Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def _corrupt(path: Path, detail: object) -> DataError:
    """The error for an unreadable archive: which file, why, and that deleting it fixes it."""
    return DataError(
        f"corrupt Omniglot archive {path}: {detail}. Delete it so that it is downloaded again "
        "(or replace it with a good copy)."
    )


def _members(zf: zipfile.ZipFile, path: Path, set_name: str) -> dict[Character, list[zipfile.ZipInfo]]:
    """The PNG members of one archive grouped by character, drawers sorted by file name.

    Only ``images_<set>/<Alphabet>/<character>/<file>.png`` counts; folder entries and anything else
    (e.g. ``__MACOSX/``) are ignored. Every character must have exactly 20 drawers.
    """
    groups: dict[Character, list[zipfile.ZipInfo]] = {}
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if len(parts) == 4 and parts[0] == f"images_{set_name}" and parts[3].endswith(".png"):
            groups.setdefault(Character(set_name, parts[1], parts[2]), []).append(info)
    if not groups:
        raise _corrupt(path, f"it holds no images_{set_name}/<Alphabet>/<character>/*.png")
    for char, infos in groups.items():
        if len(infos) != DRAWERS:
            raise _corrupt(path, f"character {char} has {len(infos)} images, expected {DRAWERS}")
        infos.sort(key=lambda i: PurePosixPath(i.filename).name)
    return groups


_READ_ERRORS = (OSError, EOFError, SyntaxError, ValueError, zlib.error, zipfile.BadZipFile)
"""What a damaged zip member or PNG raises (Pillow raises SyntaxError for some broken PNGs)."""


def decode_archives(
    paths: dict[str, Path], image_size: int, progress: OpenProgress | None = None
) -> OmniglotCharacters:
    """Decode every character of the archives, sorted by (alphabet, character), drawers by file name.

    Raises:
        DataError: an archive is not a readable zip, lacks the layout, or holds a broken PNG.
    """
    files: dict[str, zipfile.ZipFile] = {}
    with contextlib.ExitStack() as stack:
        members: dict[Character, list[zipfile.ZipInfo]] = {}
        for set_name, path in paths.items():
            try:
                files[set_name] = stack.enter_context(zipfile.ZipFile(path))
            except _READ_ERRORS as e:
                raise _corrupt(path, e) from e
            members.update(_members(files[set_name], path, set_name))
        characters = sorted(members, key=Character.sort_key)
        out = np.empty((len(characters), DRAWERS, 1, image_size, image_size), dtype=np.uint8)
        report = progress("decoding Omniglot", len(characters), "characters") if progress else None
        for c, char in enumerate(characters):
            for d, info in enumerate(members[char]):
                try:
                    out[c, d, 0] = decode_image(files[char.set].read(info), image_size)
                except _READ_ERRORS as e:
                    raise _corrupt(paths[char.set], f"member {info.filename}: {e}") from e
            if report is not None:
                report(c + 1, {})
    return OmniglotCharacters(characters, torch.from_numpy(out))


# --- cache --------------------------------------------------------------------------------------------


def cache_recipe(paths: dict[str, Path], image_size: int, cache: Path) -> dict[str, Any]:
    """Everything that determines the decoded tensor (the split is applied later, in memory).

    ``cache`` holds the digest memo of the archives' content (:func:`digest_index`).
    """
    names = sorted(paths)
    identities = content_identities([paths[s] for s in names], digest_index(cache, FOLDER))
    return {
        "dataset": "omniglot",
        "format": FORMAT_VERSION,
        "archives": dict(zip(names, identities, strict=True)),
        "image_size": image_size,
        "resample": "lanczos",
        "pillow": PIL.__version__,
    }


def warn_unofficial(paths: dict[str, Path], cache: Path) -> None:
    """One warning when a present archive's md5 differs from :data:`MD5` (see the module docstring)."""
    files = list(paths.values())
    found = file_digests(files, digest_index(cache, FOLDER), ("md5", "sha256"))
    lines = [x for p, d in zip(files, found, strict=True) for x in mismatch(p, "md5", d["md5"], MD5[p.name])]
    report_mismatches(
        "the Omniglot archives are not the official files",
        lines,
        "They are re-packed or damaged copies; reading them anyway. If results look wrong, delete them so "
        "that metacli downloads the official archives, or restore those.",
    )


def cache_path(cache: Path, recipe: dict[str, Any]) -> Path:
    """``<cache>/omniglot/<cache_key(recipe)>.pt``."""
    return cache / FOLDER / f"{cache_key(recipe)}.pt"


def _load_cache(path: Path, recipe: dict[str, Any]) -> OmniglotCharacters | None:
    """The cached characters if ``path`` holds a well-formed entry for ``recipe``; None otherwise."""
    blob = read_cache_file(path, "Omniglot")
    if blob is None:
        return None
    try:
        images, names = blob["images"], blob["characters"]
        side = recipe["image_size"]
        ok = (
            blob["recipe"] == json.loads(json.dumps(recipe, default=str))
            and isinstance(images, Tensor)
            and images.dtype == torch.uint8
            and tuple(images.shape) == (len(names), DRAWERS, 1, side, side)
        )
        characters = [Character(*(str(x) for x in n)) for n in names]
    except Exception:  # a cache of another shape only means: decode again
        ok = False
    if not ok:
        warnings.warn(f"ignoring the malformed Omniglot cache {path}; rebuilding it", stacklevel=4)
        return None
    return OmniglotCharacters(characters, images)


def _save_cache(path: Path, recipe: dict[str, Any], decoded: OmniglotCharacters) -> None:
    """Write the cache atomically; a failure (e.g. read-only cache) only warns, the data is still usable."""
    blob = {
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "characters": [list(c) for c in decoded.characters],
        "images": decoded.images,
    }
    write_cache_file(path, blob, "decoded Omniglot images")


def load_characters(
    root: Path,
    cache: Path,
    image_size: int = 28,
    download: bool = False,
    progress: OpenProgress | None = None,
    mirrors: Sequence[str] | None = None,
) -> OmniglotCharacters:
    """Every character of both archives, decoded once and then read from the cache.

    Args:
        root: data root (archives in ``<root>/omniglot``).
        cache: cache folder (the file goes to ``<cache>/omniglot/``).
        image_size: side after resizing.
        download: fetch missing archives (MD5-verified).
        progress: opens the progress displays of downloads (and decoding); None: none.
        mirrors: base URLs overriding :data:`MIRRORS`.
    """
    paths = ensure_archives(root, download, progress, mirrors)
    file_digests(list(paths.values()), digest_index(cache, FOLDER), ("md5", "sha256"))  # one pass for both
    recipe = cache_recipe(paths, image_size, cache)
    path = cache_path(cache, recipe)
    cached = _load_cache(path, recipe)
    if cached is not None:
        return cached
    warn_unofficial(paths, cache)
    decoded = decode_archives(paths, image_size, progress)
    _save_cache(path, recipe, decoded)
    return decoded


# --- splits -------------------------------------------------------------------------------------------


def vinyals_split() -> dict[Split, list[Character]]:
    """The packaged Vinyals split: ``{split: characters}`` from ``assets/omniglot/<split>.json``."""
    folder = resources.files("metacli.engine.data").joinpath(_SPLIT_ASSETS)
    out: dict[Split, list[Character]] = {}
    for split in SPLITS:
        tree = json.loads(folder.joinpath(f"{split}.json").read_text(encoding="utf-8"))
        out[split] = [
            Character(set_name, alphabet, name)
            for set_name, alphabets in tree.items()
            for alphabet, names in alphabets.items()
            for name in names
        ]
    return out


def lake_split(
    characters: Sequence[Character], val_characters: int, seed: int
) -> dict[Split, list[Character]]:
    """Lake's background/evaluation split with ``val_characters`` background characters held out.

    The held-out characters are those with the smallest SHA-256 of ``"<seed>/<character>"`` (see the
    module docstring for why a hash rather than a random generator).
    """
    background = [c for c in characters if c.set == "background"]
    if val_characters >= len(background):
        raise DataError(
            f"lake_val_characters = {val_characters}, but the background set has only {len(background)} "
            "characters; lower data.lake_val_characters"
        )

    def rank(c: Character) -> str:
        return hashlib.sha256(f"{seed}/{c}".encode()).hexdigest()

    val = set(sorted(background, key=rank)[:val_characters])
    return {
        "train": [c for c in background if c not in val],
        "val": [c for c in background if c in val],
        "test": [c for c in characters if c.set == "evaluation"],
    }


def split_characters(cfg: OmniglotConfig, characters: Sequence[Character]) -> dict[Split, list[Character]]:
    """The characters of each split for ``cfg``, each list sorted by (alphabet, character)."""
    if cfg.split == "vinyals":
        chosen = vinyals_split()
    else:
        chosen = lake_split(characters, cfg.lake_val_characters, cfg.split_seed)
    return {s: sorted(chars, key=Character.sort_key) for s, chars in chosen.items()}


def split_tensors(cfg: OmniglotConfig, decoded: OmniglotCharacters) -> dict[Split, Tensor]:
    """uint8 (characters, 20, 1, S, S) per split, selected from the decoded characters.

    Raises:
        DataError: the split names characters absent from the archives (incomplete archives).
    """
    index = {c: i for i, c in enumerate(decoded.characters)}
    out: dict[Split, Tensor] = {}
    for split, chars in split_characters(cfg, decoded.characters).items():
        absent = [c for c in chars if c not in index]
        if absent:
            raise DataError(
                f"the {cfg.split} split's {split} set names {len(absent)} characters absent from the "
                f"Omniglot archives (e.g. {absent[0]}); the archives are incomplete: delete them so that "
                "they are downloaded again, or use data.split: lake"
            )
        out[split] = decoded.images[torch.tensor([index[c] for c in chars], dtype=torch.long)]
    return out


def build(cfg: OmniglotConfig, ctx: DataContext, *, mirrors: Sequence[str] | None = None) -> FewShotImages:
    """The dataset contract: Omniglot tasks for ``cfg`` from ``ctx.root``, decoded once into ``ctx.cache``.

    Args:
        cfg: ways, shots, queries, split and image options.
        ctx: data root, cache, device, download policy and progress flag.
        mirrors: base URLs overriding :data:`MIRRORS` (tests serve archives from 127.0.0.1).
    """
    decoded = load_characters(ctx.root, ctx.cache, cfg.image_size, ctx.download, ctx.progress, mirrors)
    tensors = split_tensors(cfg, decoded)
    splits: dict[str, ClassImages] = {
        s: ClassImages(t, ctx.device, cfg.rotations) for s, t in tensors.items()
    }
    return FewShotImages(cfg, splits)
