"""Omniglot: splits, decoding against an independent PNG decoder, the cache, and downloads.

Real-data tests read the shared archives (the data folder's ``omniglot/``) and decode all 32,460 PNGs once per
module into a temporary cache (several seconds on 2 cores); every other real-data build then reads
that cache. Everything else runs on a tiny archive pair written by the test in the official layout.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from metacli.engine.data import omniglot
from metacli.engine.data.omniglot import (
    ARCHIVES,
    DRAWERS,
    MD5,
    Character,
    OmniglotCharacters,
    OmniglotConfig,
    build,
    cache_path,
    cache_recipe,
    decode_image,
    load_characters,
    split_characters,
)
from metacli.engine.types import DataContext
from metacli.errors import DataError
from tests.conftest import shared_data_root
from tests.httpserver import refused_url

pytestmark = [
    pytest.mark.usefixtures("no_proxy"),
    # the fixture archives (and the shared ones) are not the official files; tests that check the
    # warning record it with pytest.warns, which sees it regardless
    pytest.mark.filterwarnings("ignore:the Omniglot archives are not the official files"),
]

U8 = npt.NDArray[np.uint8]


def _ctx(root: Path, cache: Path, download: bool = False, progress: bool = False) -> DataContext:
    """``progress``: hand the builder a progress opener that discards what it is told."""
    opener = (lambda description, total, unit: lambda done, info: None) if progress else None
    return DataContext(root, cache, torch.device("cpu"), torch.float32, download, opener)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decoding fail loudly, so a build that passes must have read the cache."""

    def fail(*args: object, **kwargs: object) -> OmniglotCharacters:
        raise AssertionError("the archives were decoded again instead of read from the cache")

    monkeypatch.setattr(omniglot, "decode_archives", fail)


# --- an independent decoder: pure-Python PNG (1-bit greyscale, not interlaced), no Pillow -------------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        yield kind, body
        pos += 12 + length


def _unfilter(raw: bytes, stride: int, height: int) -> list[bytearray]:
    """Undo the per-scanline PNG filters (bytes per pixel = 1 for bit depths below 8)."""
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - 1] if i else 0
            b = prev[i]
            c = prev[i - 1] if i else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2, 4: _paeth(a, b, c)}[ftype]
            line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    return rows


def png_grey_pure(data: bytes) -> U8:
    """A 1-bit greyscale PNG as uint8 (H, W): 255 where the bit is 1 (white), 0 where 0 (black)."""
    ihdr, idat = b"", b""
    for kind, body in _png_chunks(data):
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert (depth, colour, interlace) == (1, 0, 0), "this decoder handles 1-bit greyscale only"
    stride = (width + 7) // 8
    rows = _unfilter(zlib.decompress(idat), stride, height)
    bits = [[(row[x >> 3] >> (7 - (x & 7))) & 1 for x in range(width)] for row in rows]
    return np.array(bits, dtype=np.uint8) * 255


# --- real data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = shared_data_root()
    if root is None or not all((root / "omniglot" / name).is_file() for name in ARCHIVES.values()):
        pytest.skip(
            "real Omniglot not found: set METACLI_DATA or put shared/data/omniglot beside the repository"
        )
    return root


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="module")
def real_decoded(real_root: Path, real_cache: Path) -> OmniglotCharacters:
    """All 1,623 characters at 28x28, decoded once per module into ``real_cache``."""
    return load_characters(real_root, real_cache, 28, download=False, progress=False)


@pytest.mark.slow  # the module's one full decoding takes ~7 s on 2 cores
def test_real_decoded_shape_and_order(real_decoded: OmniglotCharacters) -> None:
    chars, images = real_decoded
    assert images.shape == (1623, 20, 1, 28, 28) and images.dtype == torch.uint8
    assert sum(c.set == "background" for c in chars) == 964 and len(set(chars)) == 1623
    assert chars == sorted(chars, key=lambda c: (c.alphabet, c.name))
    # ink = 255 after inversion: every image has ink, and the background (most pixels) is 0
    assert int(images.amax(dim=(2, 3, 4)).min()) > 0 and int(images.max()) == 255
    assert float((images == 0).float().mean()) > 0.6


@pytest.mark.slow  # the module's one full decoding takes ~7 s on 2 cores
def test_vinyals_split_sizes_disjoint_and_built(
    real_root: Path, real_cache: Path, real_decoded: OmniglotCharacters, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = split_characters(OmniglotConfig(), real_decoded.characters)
    sizes = {s: len(c) for s, c in split.items()}
    assert sizes == {"train": 1028, "val": 172, "test": 423}
    sets = {s: set(c) for s, c in split.items()}
    assert (
        not sets["train"] & sets["val"]
        and not sets["train"] & sets["test"]
        and not sets["val"] & sets["test"]
    )
    assert sets["train"] | sets["val"] | sets["test"] == set(real_decoded.characters)
    assert sum(c.alphabet == "Gurmukhi" for c in split["train"]) == 41  # split across train and test
    assert sum(c.alphabet == "Gurmukhi" for c in split["test"]) == 4

    _no_decoding(monkeypatch)
    ds = build(OmniglotConfig(), _ctx(real_root, real_cache))
    assert {s: ci.images.shape[0] for s, ci in ds.splits.items()} == sizes
    assert {s: ci.n_classes for s, ci in ds.splits.items()} == {"train": 4112, "val": 688, "test": 1692}
    assert ds.in_shape == (1, 28, 28) and ds.out_features == 5


@pytest.mark.slow  # the module's one full decoding takes ~7 s on 2 cores
def test_second_build_reads_cache_fast_and_identical(
    real_root: Path, real_cache: Path, real_decoded: OmniglotCharacters, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(OmniglotConfig(), _ctx(real_root, real_cache))
    _no_decoding(monkeypatch)
    start = time.perf_counter()
    second = build(OmniglotConfig(), _ctx(real_root, real_cache))
    assert time.perf_counter() - start < 2.0
    for s in ("train", "val", "test"):
        assert torch.equal(first.splits[s].images, second.splits[s].images)
    recipe = cache_recipe(omniglot.archive_paths(real_root), 28, real_cache)
    assert [p.name for p in (real_cache / "omniglot").iterdir()] == [cache_path(real_cache, recipe).name]


@pytest.mark.slow  # the module's one full decoding takes ~7 s on 2 cores
def test_lake_split_seeded_and_disjoint(
    real_root: Path, real_cache: Path, real_decoded: OmniglotCharacters, monkeypatch: pytest.MonkeyPatch
) -> None:
    chars = real_decoded.characters
    a = split_characters(OmniglotConfig(split="lake"), chars)
    again = split_characters(OmniglotConfig(split="lake", split_seed=0), chars)
    other = split_characters(OmniglotConfig(split="lake", split_seed=1), chars)
    assert a == again
    assert {s: len(c) for s, c in a.items()} == {"train": 864, "val": 100, "test": 659}
    assert not set(a["train"]) & set(a["val"])
    assert {c.set for c in a["train"] + a["val"]} == {"background"} and {c.set for c in a["test"]} == {
        "evaluation"
    }
    assert a["test"] == other["test"] and a["val"] != other["val"]
    assert set(a["train"]) | set(a["val"]) == set(other["train"]) | set(other["val"])

    _no_decoding(monkeypatch)  # another split of the same archives needs no second decoding
    ds = build(OmniglotConfig(split="lake", lake_val_characters=50), _ctx(real_root, real_cache))
    assert ds.splits["val"].images.shape[0] == 50 and ds.splits["train"].images.shape[0] == 914
    index = {c: i for i, c in enumerate(chars)}
    val = split_characters(OmniglotConfig(split="lake", lake_val_characters=50), chars)["val"]
    assert torch.equal(ds.splits["val"].images, real_decoded.images[[index[c] for c in val]])


@pytest.mark.slow  # the module's one full decoding takes ~7 s on 2 cores
def test_decoding_matches_an_independent_png_decoder(
    real_root: Path, real_decoded: OmniglotCharacters
) -> None:
    chars, images = real_decoded
    picks = [(0, 0), (0, 19), (517, 7), (963, 3), (964, 0), (1300, 11), (1622, 19)]
    for c, d in picks:
        char = chars[c]
        with zipfile.ZipFile(real_root / "omniglot" / ARCHIVES[char.set]) as zf:
            prefix = f"images_{char.set}/{char.alphabet}/{char.name}/"
            members = sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".png"))
            png = zf.read(members[d])
        grey = png_grey_pure(png)
        assert grey.shape == (105, 105)
        with Image.open(io.BytesIO(png)) as im:  # our PNG decoder agrees with Pillow's
            assert im.mode == "1" and np.array_equal(np.asarray(im.convert("L")), grey)
        inverted = 255 - grey
        expected = np.asarray(Image.fromarray(inverted).resize((28, 28), resample=Image.Resampling.LANCZOS))
        assert np.array_equal(images[c, d, 0].numpy(), expected), f"{char} drawer {d}"
        assert np.array_equal(decode_image(png, 105), inverted)  # no resize at full size
        assert 0 < int(expected.max()) and len(np.unique(expected)) > 2  # LANCZOS grey levels, not binary


# --- a tiny archive pair in the official layout -------------------------------------------------------

TINY = {"background": {"Alpha": 3, "Beta": 4}, "evaluation": {"Gamma": 3}}
"""Alphabets and character counts of the fixture archives (7 background, 3 evaluation characters)."""


def _tiny_image(set_name: str, alphabet: str, char: int, drawer: int) -> npt.NDArray[np.bool_]:
    """A deterministic 105x105 mode-"1" image (True = white) with a few black strokes."""
    seed = int(hashlib.sha256(f"{set_name}/{alphabet}/{char}/{drawer}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    img = np.ones((105, 105), dtype=bool)
    for _ in range(3):
        y, x = rng.integers(5, 90, size=2)
        img[y : y + rng.integers(3, 15), x : x + rng.integers(3, 15)] = False
    return img


def write_tiny_archives(folder: Path) -> dict[tuple[str, str, str, int], npt.NDArray[np.bool_]]:
    """Write images_background.zip and images_evaluation.zip into ``folder``; return every image.

    Members are written in shuffled order, with folder entries, as the official archives have them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[tuple[str, str, str, int], npt.NDArray[np.bool_]] = {}
    file_id = 0
    for set_name, alphabets in TINY.items():
        entries: list[tuple[str, bytes | None]] = [(f"images_{set_name}/", None)]
        for alphabet, count in alphabets.items():
            entries.append((f"images_{set_name}/{alphabet}/", None))
            for k in range(1, count + 1):
                file_id += 1
                char = f"character{k:02d}"
                entries.append((f"images_{set_name}/{alphabet}/{char}/", None))
                for drawer in range(DRAWERS):
                    img = _tiny_image(set_name, alphabet, k, drawer)
                    images[(set_name, alphabet, char, drawer)] = img
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    entries.append(
                        (
                            f"images_{set_name}/{alphabet}/{char}/{file_id:04d}_{drawer + 1:02d}.png",
                            buf.getvalue(),
                        )
                    )
        random.Random(0).shuffle(entries)
        with zipfile.ZipFile(folder / ARCHIVES[set_name], "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data if data is not None else b"")
    return images


LAKE = OmniglotConfig(split="lake", lake_val_characters=2)
"""A config that fits the tiny archives: train 5, val 2, test 3 characters (x4 rotations)."""


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_tiny_archives(root / "omniglot")
    return root


def test_tiny_archives_decoded_in_sorted_order(tiny_root: Path, tmp_path: Path) -> None:
    decoded = load_characters(tiny_root, tmp_path / "cache", 105)
    expected_chars = sorted(
        (
            Character(s, a, f"character{k:02d}")
            for s, alph in TINY.items()
            for a, n in alph.items()
            for k in range(1, n + 1)
        ),
        key=Character.sort_key,
    )
    assert decoded.characters == expected_chars
    images = write_tiny_archives(tmp_path / "again")  # same content, to compare against
    for c, char in enumerate(decoded.characters):
        for d in range(DRAWERS):
            ink = (~images[(char.set, char.alphabet, char.name, d)]).astype(np.uint8) * 255
            assert np.array_equal(decoded.images[c, d, 0].numpy(), ink), (char, d)


def test_tiny_build_samples_tasks(tiny_root: Path, tmp_path: Path) -> None:
    ds = build(LAKE, _ctx(tiny_root, tmp_path / "cache", progress=True))
    assert {s: ci.images.shape[0] for s, ci in ds.splits.items()} == {"train": 5, "val": 2, "test": 3}
    task = ds.sample("val", 3, torch.Generator().manual_seed(0))
    assert task.support.x.shape == (3, 5, 1, 28, 28) and task.query.x.shape == (3, 25, 1, 28, 28)
    assert (
        task.support.x.dtype == torch.float32
        and 0.0 <= float(task.support.x.min()) <= float(task.support.x.max()) <= 1.0
    )


def test_corrupt_cache_is_rebuilt(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    ctx = _ctx(tiny_root, cache)
    first = build(LAKE, ctx)
    path = cache_path(cache, cache_recipe(omniglot.archive_paths(tiny_root), 28, cache))
    assert path.is_file()
    calls: list[int] = []
    real_decode = omniglot.decode_archives

    def counting(*args: object, **kwargs: object) -> OmniglotCharacters:
        calls.append(1)
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(omniglot, "decode_archives", counting)
    build(LAKE, ctx)
    assert calls == []  # a good cache is read
    for damage in (b"not a torch file", path.read_bytes()[:1000]):
        path.write_bytes(damage)
        with pytest.warns(UserWarning, match="unreadable Omniglot cache"):
            again = build(LAKE, ctx)
        assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    assert len(calls) == 2
    build(LAKE, ctx)  # and it was rewritten whole
    assert len(calls) == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_touched_archive_keeps_its_cache(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is keyed by the archives' content: a new mtime alone decodes nothing."""
    cache = tmp_path / "cache"
    build(LAKE, _ctx(tiny_root, cache))
    zip_path = tiny_root / "omniglot" / ARCHIVES["evaluation"]
    st = zip_path.stat()
    os.utime(zip_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _no_decoding(monkeypatch)
    build(LAKE, _ctx(tiny_root, cache))
    assert len(list((cache / "omniglot").iterdir())) == 1


def test_vinyals_split_on_incomplete_archives_names_the_problem(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent from the Omniglot archives"):
        build(OmniglotConfig(), _ctx(tiny_root, tmp_path / "cache"))


def _assert_missing_message(msg: str, folder: Path) -> None:
    for name in ARCHIVES.values():
        assert name in msg
    assert str(folder) in msg
    assert "--data-root" in msg and "METACLI_DATA" in msg and "internet" in msg
    assert "\n" not in msg  # one paragraph


def test_missing_archive_with_download_off(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        build(LAKE, _ctx(root, tmp_path / "cache"), mirrors=[refused_url()])
    _assert_missing_message(str(info.value), root / "omniglot")
    assert "downloading is off" in str(info.value)
    assert not (root / "omniglot").exists()


def test_corrupt_zip_names_the_file(tiny_root: Path, tmp_path: Path) -> None:
    bad = tiny_root / "omniglot" / ARCHIVES["background"]
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated: the central directory is gone
    with pytest.raises(DataError) as info:
        build(LAKE, _ctx(tiny_root, tmp_path / "cache"))
    assert str(bad) in str(info.value) and "Delete it" in str(info.value)


def test_damaged_png_names_the_member(tiny_root: Path, tmp_path: Path) -> None:
    path = tiny_root / "omniglot" / ARCHIVES["evaluation"]
    victim = "images_evaluation/Gamma/character01/0008_01.png"
    with zipfile.ZipFile(path) as zf:
        members = [(member, zf.read(member)) for member in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:  # the same archive, one PNG damaged
        for member, data in members:
            zf.writestr(member, data[:60] if member.filename == victim else data)
    with pytest.raises(DataError) as info:
        build(LAKE, _ctx(tiny_root, tmp_path / "cache"))
    assert victim in str(info.value) and str(path) in str(info.value) and "Delete it" in str(info.value)


# --- downloads from a local server --------------------------------------------------------------------


def test_download_verified_by_md5(
    file_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = file_server
    write_tiny_archives(served)
    for name in ARCHIVES.values():  # the fixture stands in for the official files
        monkeypatch.setitem(MD5, name, hashlib.md5((served / name).read_bytes()).hexdigest())
    root = tmp_path / "root"
    ds = build(LAKE, _ctx(root, tmp_path / "cache", download=True, progress=True), mirrors=[base])
    assert sorted(p.name for p in (root / "omniglot").iterdir()) == sorted(ARCHIVES.values())
    for name in ARCHIVES.values():
        assert (root / "omniglot" / name).read_bytes() == (served / name).read_bytes()
    assert ds.splits["test"].images.shape[0] == 3


def test_download_with_wrong_md5_refused(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = file_server
    write_tiny_archives(served)  # not the official archives, so the official MD5 refuses them
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError) as info:
        build(LAKE, _ctx(root, tmp_path / "cache", download=True), mirrors=[base])
    msg = str(info.value)
    assert "checksum mismatch" in msg and MD5["images_background.zip"] in msg
    _assert_missing_message(msg, root / "omniglot")
    assert list(root.iterdir()) == []  # nothing kept, not a partial file, not an empty omniglot/


def test_a_failed_download_leaves_no_empty_folder_in_the_data_root(tmp_path: Path) -> None:
    """Catches download() creating <root>/omniglot/ and leaving it empty when every mirror fails."""
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError) as info:
        build(LAKE, _ctx(root, tmp_path / "cache", download=True), mirrors=[refused_url()])
    _assert_missing_message(str(info.value), root / "omniglot")
    assert list(root.iterdir()) == []


def test_present_archives_are_used_with_one_warning_naming_both_md5s(tiny_root: Path, tmp_path: Path) -> None:
    """Download allowed, but the archives are there: no request; their md5 differs, which only warns."""
    with pytest.warns(UserWarning) as seen:
        ds = build(LAKE, _ctx(tiny_root, tmp_path / "cache", download=True), mirrors=[refused_url()])
    assert ds.splits["train"].images.shape[0] == 5
    assert len(seen) == 1, [str(w.message) for w in seen]
    msg = str(seen[0].message)
    assert "not the official files" in msg and "METACLI_TRUST_DATA=1" in msg
    for name in ARCHIVES.values():
        path = tiny_root / "omniglot" / name
        assert str(path) in msg and MD5[name] in msg and hashlib.md5(path.read_bytes()).hexdigest() in msg


def test_present_archives_with_the_official_md5_or_trusted_give_no_warning(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setenv("METACLI_TRUST_DATA", "1")
        build(LAKE, _ctx(tiny_root, tmp_path / "a"))
        monkeypatch.delenv("METACLI_TRUST_DATA")
        for name in ARCHIVES.values():  # the fixture stands in for the official files
            monkeypatch.setitem(
                MD5, name, hashlib.md5((tiny_root / "omniglot" / name).read_bytes()).hexdigest()
            )
        build(LAKE, _ctx(tiny_root, tmp_path / "b"))


# --- config -------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = OmniglotConfig()
    assert (cfg.name, cfg.split, cfg.rotations, cfg.image_size) == ("omniglot", "vinyals", True, 28)
    assert (cfg.ways, cfg.shots, cfg.queries, cfg.images_per_class()) == (5, 1, 5, 20)
    assert OmniglotConfig(shots=5, queries=15).queries == 15
    with pytest.raises(ValidationError, match="only 20"):
        OmniglotConfig(shots=10, queries=11)
    with pytest.raises(ValidationError):
        OmniglotConfig(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        cfg.split = "lake"  # type: ignore[misc]
    assert OmniglotConfig.model_fields["split_seed"].description  # attribute docstrings are used
