"""miniImageNet: both source layouts, the restricted unpickler, md5 handling, the cache and sampled tasks.

No miniImageNet images exist offline (only the split CSVs), so every test writes a small fixture (3 classes
per split × 20 images, 84×84) in both layouts: JPEGs in ``images/`` with split CSVs, and pickles whose pixels
are the JPEGs decoded back with PIL, so the two layouts must give bit-identical tensors. The class wnids
come from the real split CSVs when they are available (``$METACLI_DATA`` or ``<repo>/../shared/data``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from metacli.engine.data import miniimagenet as mini
from metacli.engine.data.images import SPLITS, Split
from metacli.engine.data.miniimagenet import (
    DOWNLOAD_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MiniImageNetConfig,
    SplitImages,
    build,
    load_miniimagenet,
    read_pickle,
    read_split_csv,
    resolve_format,
)
from metacli.engine.types import DataContext
from metacli.errors import DataError

pytestmark = pytest.mark.usefixtures("no_proxy")

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
N_CLASSES = 3
PER_CLASS = 20
UInt8Array = npt.NDArray[np.uint8]


def real_csv_folder() -> Path | None:
    """The folder of the real split CSVs (``$METACLI_DATA`` or ``<repo>/../shared/data``), if present."""
    env = os.environ.get("METACLI_DATA")
    for root in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        folder = root / "miniimagenet"
        if all((folder / f"{s}.csv").is_file() for s in SPLITS):
            return folder
    return None


def fixture_wnids() -> dict[Split, list[str]]:
    """Three classes per split, deliberately not in sorted order: real wnids when the CSVs exist."""
    folder = real_csv_folder()
    if folder is None:
        made_up: dict[Split, list[int]] = {"train": [9, 1, 5], "val": [12, 10, 11], "test": [22, 20, 21]}
        return {s: [f"n{900000 + i:08d}" for i in ids] for s, ids in made_up.items()}
    out: dict[Split, list[str]] = {}
    for s in SPLITS:
        classes = list(read_split_csv(folder / f"{s}.csv"))
        out[s] = [classes[-1], classes[0], classes[len(classes) // 2]]
    return out


class Fixture(NamedTuple):
    """A written fixture: its data root and the expected tensors (classes sorted by wnid)."""

    root: Path
    folder: Path
    expected: dict[Split, UInt8Array]  # (classes, per_class, 3, 84, 84)
    classes: dict[Split, list[str]]  # sorted


def _image(rng: np.random.Generator) -> UInt8Array:
    """A distinct 84×84 RGB test image (noise over a colour gradient, so JPEG keeps it distinct)."""
    ramp = np.linspace(0, 200, 84, dtype=np.float64)
    base = ramp[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
    noise = rng.integers(0, 56, size=(84, 84, 3))
    out: UInt8Array = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out


_PurePickler: Any = pickle._Pickler  # the pure-Python pickler, whose dispatch table can be extended


class _Py2Pickler(_PurePickler):  # type: ignore[misc]
    """Writes ``bytes`` as protocol-2 BINSTRING, as Python 2 wrote ``str``: the layout of the real pickles."""

    dispatch = _PurePickler.dispatch.copy()

    def save_py2_bytes(self, obj: bytes) -> None:
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_bytes


def dump_pickle(obj: Any, path: Path, protocol: int | str = "py2") -> None:
    """Pickle ``obj`` to ``path``: ``py2`` mimics a Python 2 pickle, an int is a standard protocol."""
    if protocol == "py2":
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(protocol)))


def _split_rows(classes: list[str], per_class: int) -> list[tuple[str, str]]:
    """CSV rows (filename, wnid), classes interleaved so that grouping by class is exercised."""
    return [(f"{w}{i + 1:08d}.jpg", w) for i in range(per_class) for w in classes]


def _write_split(
    folder: Path,
    split: Split,
    classes: list[str],
    rng: np.random.Generator,
    per_class: int,
    protocol: int | str,
) -> UInt8Array:
    """Write one split in both layouts; return its expected (classes, per_class, 3, 84, 84) tensor."""
    rows = _split_rows(classes, per_class)
    decoded: dict[str, UInt8Array] = {}
    for name, _ in rows:
        Image.fromarray(_image(rng)).save(folder / "images" / name, quality=90)
        with Image.open(folder / "images" / name) as im:  # the exact pixels PIL decodes
            decoded[name] = np.asarray(im.convert("RGB"))
    lines = ["filename,label"] + [f"{n},{w}" for n, w in rows]
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    # The pickle stores images in another order; class_dict's index lists follow the CSV rows.
    order = rng.permutation(len(rows))
    position = {rows[j][0]: k for k, j in enumerate(order)}
    class_dict = {w: [position[n] for n, c in rows if c == w] for w in classes}
    image_data = np.stack([decoded[rows[j][0]] for j in order])
    pickled = {"image_data": image_data, "class_dict": class_dict}
    dump_pickle(pickled, folder / f"mini-imagenet-cache-{split}.pkl", protocol)
    per = [np.stack([decoded[n] for n, c in rows if c == w]) for w in sorted(classes)]
    out: UInt8Array = np.stack(per).transpose(0, 1, 4, 2, 3)
    return out


def write_fixture(
    root: Path, per_class: int = PER_CLASS, seed: int = 0, protocol: int | str = "py2"
) -> Fixture:
    """Write ``<root>/miniimagenet`` in both layouts (3 classes per split); return what it must decode to."""
    folder = root / "miniimagenet"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    wnids = fixture_wnids()
    expected = {s: _write_split(folder, s, wnids[s], rng, per_class, protocol) for s in SPLITS}
    return Fixture(root, folder, expected, {s: sorted(wnids[s]) for s in SPLITS})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """One fixture shared by the tests that only read it."""
    return write_fixture(tmp_path_factory.mktemp("mini"))


@pytest.fixture
def fresh(tmp_path: Path) -> Fixture:
    """A fixture of the test's own, for tests that change files."""
    return write_fixture(tmp_path / "root")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _load(fx: Fixture, cache: Path, fmt: str, **kw: Any) -> dict[Split, SplitImages]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture pickles differ from the published md5s
        return load_miniimagenet(fx.root, cache, fmt, **kw)  # type: ignore[arg-type]


def _ctx(fx: Fixture, cache: Path) -> DataContext:
    return DataContext(fx.root, cache, torch.device("cpu"), torch.float32, download=False, progress=False)


# --- both layouts ---------------------------------------------------------------------------------------


def test_pickle_and_folder_give_bit_identical_tensors(source: Fixture, tmp_path: Path) -> None:
    from_pickle = _load(source, tmp_path / "c1", "pickle")
    from_folder = _load(source, tmp_path / "c2", "folder")
    for s in SPLITS:
        a, b = from_pickle[s], from_folder[s]
        assert a.images.dtype == torch.uint8
        assert tuple(a.images.shape) == (N_CLASSES, PER_CLASS, 3, 84, 84)
        assert torch.equal(a.images, b.images)
        assert np.array_equal(a.images.numpy(), source.expected[s])
        assert list(a.classes) == list(b.classes) == source.classes[s]  # sorted by wnid
        assert a.images.is_contiguous()


def test_auto_prefers_pickles_then_folder_and_accepts_validation_name(fresh: Fixture) -> None:
    folder = fresh.folder
    assert resolve_format(folder, "auto", download=False) == "pickle"
    (folder / "mini-imagenet-cache-val.pkl").rename(folder / "mini-imagenet-cache-validation.pkl")
    assert resolve_format(folder, "auto", download=False) == "pickle"
    assert mini.find_pickles(folder)["val"].name == "mini-imagenet-cache-validation.pkl"
    (folder / "mini-imagenet-cache-test.pkl").unlink()
    assert resolve_format(folder, "auto", download=False) == "folder"
    shutil.rmtree(folder / "images")
    assert resolve_format(folder, "auto", download=True) == "pickle"  # what a download can provide
    with pytest.raises(DataError, match="only 2 of the three pickles are there"):
        resolve_format(folder, "auto", download=False)


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_pickles_of_every_protocol_are_read(tmp_path: Path, protocol: int | str) -> None:
    fx = write_fixture(tmp_path / "root", per_class=2, protocol=protocol)
    path = fx.folder / "mini-imagenet-cache-train.pkl"
    if protocol == "py2":  # like the real files: raw strings, no _codecs.encode
        assert b"_codecs" not in path.read_bytes() and pickle.SHORT_BINSTRING in path.read_bytes()
    data = mini.decode_pickle(path)
    assert np.array_equal(data.images.numpy(), fx.expected["train"])


def test_numpy_scalar_indices_are_read(tmp_path: Path) -> None:
    path = tmp_path / "p.pkl"
    data = np.arange(2 * 84 * 84 * 3, dtype=np.int64).astype(np.uint8).reshape(2, 84, 84, 3)
    dump_pickle({"image_data": data, "class_dict": {"n1": [np.int64(1), np.int64(0)]}}, path)
    out = mini.decode_pickle(path)
    assert torch.equal(out.images[0, 0], torch.from_numpy(data[1]).permute(2, 0, 1))


def test_folder_images_of_another_size_are_converted_and_resized(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    grey = np.random.default_rng(1).integers(0, 256, size=(90, 100), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(path)
    out = mini.load_image(path)
    expected = np.asarray(
        Image.fromarray(grey, mode="L").convert("RGB").resize((84, 84), Image.Resampling.LANCZOS)
    )
    assert out.shape == (84, 84, 3) and out.dtype == np.uint8
    assert np.array_equal(out, expected)


def test_real_split_csvs_have_the_ravi_split() -> None:
    folder = real_csv_folder()
    if folder is None:
        pytest.skip("real miniImageNet CSVs not found (set METACLI_DATA or provide ../shared/data)")
    splits = {s: read_split_csv(folder / f"{s}.csv") for s in SPLITS}
    assert {s: len(v) for s, v in splits.items()} == mini.SPLIT_CLASSES
    assert all(len(names) == mini.PER_CLASS for v in splits.values() for names in v.values())
    assert splits["train"]["n01532829"][0] == "n0153282900000005.jpg"
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])


def test_unequal_class_sizes_and_bad_schema_are_data_errors(tmp_path: Path) -> None:
    data = np.zeros((3, 84, 84, 3), np.uint8)
    uneven = tmp_path / "uneven.pkl"
    dump_pickle({"image_data": data, "class_dict": {"n1": [0, 1], "n2": [2]}}, uneven)
    with pytest.raises(DataError, match="same"):
        mini.decode_pickle(uneven)
    wrong = tmp_path / "wrong.pkl"
    dump_pickle({"image_data": data.astype(np.float32), "class_dict": {"n1": [0]}}, wrong)
    with pytest.raises(DataError, match="image_data"):
        mini.decode_pickle(wrong)
    outside = tmp_path / "outside.pkl"
    dump_pickle({"image_data": data, "class_dict": {"n1": [0, 7]}}, outside)
    with pytest.raises(DataError, match="outside"):
        mini.decode_pickle(outside)


def test_missing_listed_image_is_named(fresh: Fixture, tmp_path: Path) -> None:
    first = (fresh.folder / "val.csv").read_text().splitlines()[1].split(",")[0]
    (fresh.folder / "images" / first).unlink()
    with pytest.raises(DataError, match=first):
        _load(fresh, tmp_path / "cache", "folder")


# --- the restricted unpickler ---------------------------------------------------------------------------


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, ("__import__('os').getpid()",))


def test_pickle_importing_os_system_is_refused_and_never_runs(fresh: Fixture, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"echo pwned > {marker}"
    evil = {"image_data": _RunsShell(command), "class_dict": {"n1": [0]}}
    path = fresh.folder / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError) as info:
        read_pickle(path)
    assert f"tried to import {os.system.__module__}.system" in str(info.value)
    assert "refused" in str(info.value)
    with pytest.raises(DataError, match="system"):  # also through the loader
        _load(fresh, tmp_path / "cache", "pickle")
    assert not marker.exists()


def test_pickle_importing_builtins_eval_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps({"image_data": _Evals()}, protocol=4))
    with pytest.raises(DataError, match=r"tried to import builtins\.eval"):
        read_pickle(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_pickle_is_a_data_error(fresh: Fixture, tmp_path: Path, damage: str) -> None:
    path = fresh.folder / "mini-imagenet-cache-test.pkl"
    good = path.read_bytes()
    body = {"truncated": good[: len(good) // 2], "garbage": b"<html>virus scan</html>", "empty": b""}[damage]
    path.write_bytes(body)
    with pytest.raises(DataError, match="truncated or corrupt"):
        _load(fresh, tmp_path / "cache", "pickle")


# --- md5 of pickles already present -----------------------------------------------------------------------


def test_present_pickle_with_other_md5_is_read_with_one_warning(source: Fixture, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="PaddleFSL") as record:
        data = load_miniimagenet(source.root, tmp_path / "cache", "pickle")
    assert len([w for w in record if "md5" in str(w.message)]) == 1
    assert "third-party" in str(record[0].message)
    assert np.array_equal(data["train"].images.numpy(), source.expected["train"])


def test_present_pickle_with_published_md5_gives_no_warning(source: Fixture, tmp_path: Path) -> None:
    md5 = {s: _md5(mini.find_pickles(source.folder)[s]) for s in SPLITS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_miniimagenet(source.root, tmp_path / "cache", "pickle", md5=md5)


# --- the cache ----------------------------------------------------------------------------------------------


def _fail(*args: object, **kwargs: object) -> SplitImages:
    raise AssertionError("decoded again instead of reading the cache")


@pytest.mark.parametrize("fmt", ["pickle", "folder"])
def test_second_build_reads_the_cache(
    source: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    cache = tmp_path / "cache"
    first = _load(source, cache, fmt)
    files = sorted(p.name for p in (cache / "miniimagenet").iterdir())
    assert len(files) == 1 and files[0].endswith(".pt")  # no temporary file left behind
    monkeypatch.setattr(mini, "decode_pickle", _fail)
    monkeypatch.setattr(mini, "decode_folder", _fail)
    monkeypatch.setattr(mini, "check_md5", _fail)
    again = _load(source, cache, fmt)
    for s in SPLITS:
        assert torch.equal(first[s].images, again[s].images) and first[s].classes == again[s].classes


def test_corrupt_cache_is_rebuilt(source: Fixture, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _load(source, cache, "pickle")
    (pt,) = (cache / "miniimagenet").iterdir()
    pt.write_bytes(pt.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="cache"):
        again = load_miniimagenet(source.root, cache, "pickle")
    assert torch.equal(first["val"].images, again["val"].images)
    assert mini.read_cache(pt) is not None  # rewritten whole


def test_a_touched_source_file_keeps_its_cache(
    fresh: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is the files' content (test_data_caches.py changes it): a new mtime decodes nothing."""
    cache = tmp_path / "cache"
    _load(fresh, cache, "pickle")
    path = fresh.folder / "mini-imagenet-cache-val.pkl"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(mini, "decode_pickle", _fail)
    _load(fresh, cache, "pickle")
    assert len(list((cache / "miniimagenet").iterdir())) == 1


# --- missing data -------------------------------------------------------------------------------------------


def test_missing_data_message_names_layouts_folder_and_fixes(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, tmp_path / "cache", "auto", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        str(root / "miniimagenet"),
        "mini-imagenet-cache-train.pkl",
        "mini-imagenet-cache-validation.pkl",
        "images/",
        "train.csv",
        "--data-root",
        "METACLI_DATA",
        "METACLI_OFFLINE",
        "zenodo",
    ):
        assert part in msg, part
    with pytest.raises(DataError, match="images/"):
        load_miniimagenet(root, tmp_path / "cache", "folder")
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl is missing"):
        load_miniimagenet(root, tmp_path / "cache", "pickle", download=False)


# --- sampled tasks ------------------------------------------------------------------------------------------


def test_build_samples_disjoint_tasks_of_the_right_shape(source: Fixture, tmp_path: Path) -> None:
    cfg = MiniImageNetConfig(name="miniimagenet", ways=3, shots=2, queries=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build(cfg, _ctx(source, tmp_path / "cache"))
    assert ds.in_shape == (3, 84, 84) and ds.out_features == 3
    task = ds.sample("train", 4, torch.Generator().manual_seed(0))
    assert task.support.x.shape == (4, 6, 3, 84, 84) and task.query.x.shape == (4, 15, 3, 84, 84)
    assert task.support.x.dtype == torch.float32
    assert task.support.y.shape == (4, 6) and task.query.y.shape == (4, 15)
    for y in (task.support.y, task.query.y):
        assert set(torch.unique(y).tolist()) == {0, 1, 2}
    assert 0.0 <= float(task.support.x.min()) and float(task.support.x.max()) <= 1.0
    for b in range(4):
        sup = {x.numpy().tobytes() for x in task.support.x[b]}
        qry = {x.numpy().tobytes() for x in task.query.x[b]}
        assert len(sup) == 6 and len(qry) == 15 and not sup & qry  # every image distinct, no overlap
    _, picks = ds.draw("val", 8, torch.Generator().manual_seed(1))
    assert all(len(set(row.tolist())) == 7 for row in picks.reshape(-1, 7))


def test_imagenet_normalisation_standardises_per_channel(source: Fixture, tmp_path: Path) -> None:
    ctx = _ctx(source, tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = build(MiniImageNetConfig(name="miniimagenet", ways=3), ctx)
        std = build(MiniImageNetConfig(name="miniimagenet", ways=3, normalize="imagenet"), ctx)
    a = plain.sample("test", 2, torch.Generator().manual_seed(3)).support.x
    b = std.sample("test", 2, torch.Generator().manual_seed(3)).support.x
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    sd = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(b, (a - mean) / sd, atol=1e-5)
    mean_a, mean_b = a.mean(dim=(0, 1, 3, 4)), b.mean(dim=(0, 1, 3, 4))  # per-channel means
    assert torch.allclose(mean_b, (mean_a - mean.flatten()) / sd.flatten(), atol=1e-4)


def test_config_defaults_and_600_image_limit() -> None:
    cfg = MiniImageNetConfig(name="miniimagenet")
    assert (cfg.format, cfg.normalize, cfg.queries, cfg.images_per_class()) == ("auto", "none", 15, 600)
    with pytest.raises(ValidationError, match="600"):
        MiniImageNetConfig(name="miniimagenet", shots=590, queries=15)
    with pytest.raises(ValidationError):
        MiniImageNetConfig(name="miniimagenet", format="hdf5")


# --- downloads from a local HTTP server ---------------------------------------------------------------------


def _serve_pickles(
    source: Fixture, served: Path, base: str
) -> tuple[dict[Split, list[str]], dict[Split, str]]:
    """Copy the fixture pickles to the server under the download names; return their URLs and md5s."""
    urls: dict[Split, list[str]] = {}
    md5: dict[Split, str] = {}
    for s, path in mini.find_pickles(source.folder).items():
        shutil.copy(path, served / DOWNLOAD_NAMES[s])
        urls[s] = [base + DOWNLOAD_NAMES[s]]
        md5[s] = _md5(path)
    return urls, md5


def test_download_fetches_verified_pickles(
    source: Fixture, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    urls, md5 = _serve_pickles(source, served, base)
    root = tmp_path / "root"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the md5s match: no warning
        data = load_miniimagenet(root, tmp_path / "cache", "auto", download=True, urls=urls, md5=md5)
    assert sorted(p.name for p in (root / "miniimagenet").iterdir()) == sorted(DOWNLOAD_NAMES.values())
    for s in SPLITS:
        assert np.array_equal(data[s].images.numpy(), source.expected[s])


def test_download_with_wrong_md5_is_refused(
    source: Fixture, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    urls, md5 = _serve_pickles(source, served, base)
    md5["val"] = "0" * 32
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, tmp_path / "cache", "pickle", download=True, urls=urls, md5=md5)
    msg = str(info.value)
    assert "mini-imagenet-cache-validation.pkl" in msg and "0" * 32 in msg
    assert "PaddleFSL" in msg and "third-party" in msg and "by hand" in msg
    assert not (root / "miniimagenet" / DOWNLOAD_NAMES["val"]).exists()


def _csvs_only(tmp_path: Path) -> Path:
    """A data root whose miniimagenet/ holds the three split CSVs but no images/ (as a partial copy has)."""
    folder = tmp_path / "root" / "miniimagenet"
    folder.mkdir(parents=True)
    for name in ("train.csv", "val.csv", "test.csv"):
        (folder / name).write_text("filename,label\n")
    return folder


def test_not_found_message_leads_with_the_folder_and_says_only_images_is_missing(tmp_path: Path) -> None:
    """Catches a message that opens with a download error and an md5, or hides that the CSVs were found."""
    folder = _csvs_only(tmp_path)
    lead = f"miniImageNet not found in {folder}: train.csv, val.csv, test.csv found, but images/ missing"
    for fmt in ("auto", "folder"):
        with pytest.raises(DataError) as info:
            load_miniimagenet(folder.parent, tmp_path / "cache", fmt, download=False)  # type: ignore[arg-type]
        assert str(info.value).startswith(lead), str(info.value)


def test_a_failed_download_still_leads_with_not_found(tmp_path: Path) -> None:
    from tests.httpserver import refused_url

    folder = _csvs_only(tmp_path)
    urls = {s: [refused_url() + name] for s, name in DOWNLOAD_NAMES.items()}
    with pytest.raises(DataError) as info:
        load_miniimagenet(folder.parent, tmp_path / "cache", "auto", download=True, urls=urls)
    msg = str(info.value)
    assert msg.startswith(
        f"miniImageNet not found in {folder}: train.csv, val.csv, test.csv found, but images/"
    )
    assert "the download of mini-imagenet-cache-train.pkl failed" in msg
