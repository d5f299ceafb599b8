"""S-MNIST (MOML ``utils_dataset.py``): per-image transforms on hand-made images, the stream on real MNIST."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from metacli.engine.data import smnist
from metacli.engine.data.mnist import load_mnist, locate, verified_digests
from metacli.engine.data.smnist import (
    SMNISTConfig,
    StreamArrays,
    build_stream,
    cache_name,
    draw_transforms,
    normalise,
    stream_folder,
    transform_image,
)
from metacli.engine.types import DataContext, OnlineStream
from tests.engine.test_mnist import shared_data_root

BG = np.float32(-0.4242)  # normalised black background


def _dot(r: int, c: int) -> np.ndarray:
    """Background with one bright pixel at (r, c): every dihedral transform moves it somewhere unique."""
    img = np.full((28, 28), BG, dtype=np.float32)
    img[r, c] = 2.0
    return img


def _where(img: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(img == np.float32(2.0))
    assert len(rows) == 1
    return int(rows[0]), int(cols[0])


# --- rotation and flip ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "expected"), [(0, (2, 5)), (1, (22, 2)), (2, (25, 22)), (3, (5, 25))])
def test_rotation_is_counter_clockwise(k: int, expected: tuple[int, int]) -> None:
    # (2, 5) is near the top edge; a counter-clockwise quarter turn brings it to the left edge, bottom half.
    out = transform_image(_dot(2, 5), rot=k, flip=0, scale=0, shift=0)
    assert _where(out) == expected
    assert out.dtype == np.float32 and np.count_nonzero(out == BG) == 28 * 28 - 1


@pytest.mark.parametrize(("flip", "expected"), [(-1, (2, 22)), (1, (25, 5)), (0, (2, 5))])
def test_flip_axes(flip: int, expected: tuple[int, int]) -> None:
    # -1 mirrors left-right (column changes), +1 up-down (row changes).
    assert _where(transform_image(_dot(2, 5), rot=0, flip=flip, scale=0, shift=0)) == expected


def test_rotate_then_flip_order() -> None:
    # rot90 first: (2,5) -> (22,2); then the left-right mirror -> (22,25). Flip-then-rotate would give (5,2).
    assert _where(transform_image(_dot(2, 5), rot=1, flip=-1, scale=0, shift=0)) == (22, 25)


def test_input_not_modified() -> None:
    img = _dot(2, 5)
    img[10:20, 10:20] = 1.0
    before = img.copy()
    for scale in (0, 1):
        transform_image(img, rot=1, flip=1, scale=scale, shift=-1)
    assert np.array_equal(img, before)


# --- scale ----------------------------------------------------------------------------------------------


def _ring_image() -> np.ndarray:
    """Outer ring (108 px) = 3.0 except row 0 = 5.0; rows/cols 1..26 = 1.0; rows/cols 1 and 26 = -1.0.

    The inner 26x26 patch's own border (-1.0) differs from the 28x28 outer ring, so the test tells the
    official ``v`` (mean of the 108 pixels outside the 26x26 patch) from other readings.
    """
    img = np.full((28, 28), 3.0, dtype=np.float32)
    img[0, :] = 5.0
    img[1:27, 1:27] = -1.0
    img[2:26, 2:26] = 1.0
    return img


def test_scale_fill_value_and_positions() -> None:
    img = _ring_image()
    out = transform_image(img, rot=0, flip=0, scale=1, shift=0)
    v = np.float32((28 * 5.0 + 80 * 3.0) / 108)  # row 0: 28 px of 5.0; the rest of the ring: 80 px of 3.0
    # The outer ring is untouched.
    assert np.array_equal(out[0], img[0]) and np.array_equal(out[27], img[27])
    assert np.array_equal(out[:, 0], img[:, 0]) and np.array_equal(out[:, 27], img[:, 27])
    # Rows and cols 1..26 outside the pasted 13x13 are exactly v.
    mask = np.zeros((28, 28), dtype=bool)
    mask[1:27, 1:27] = True
    mask[7:20, 7:20] = False
    assert np.allclose(out[mask], v, rtol=0, atol=1e-6)
    assert len(np.unique(out[mask])) == 1
    # The pasted patch is rows/cols 7..19: the bicubic half-size copy of the 26x26 patch.
    expected = np.asarray(Image.fromarray(img[1:27, 1:27].copy()).resize((13, 13), Image.Resampling.BICUBIC))
    assert np.array_equal(out[7:20, 7:20], expected)
    assert out[13, 13] == pytest.approx(1.0, abs=1e-6)  # the constant interior stays 1.0
    assert out[7, 7] < 0.5  # the patch's own -1 border shrinks onto the pasted patch's edge


def test_scale_moves_content_to_the_centre_half_size() -> None:
    img = np.full((28, 28), BG, dtype=np.float32)
    img[1:3, 1:3] = 2.0  # a 2x2 block at the patch's top-left corner
    img[25:27, 13:15] = 2.0  # and one at the bottom middle
    out = transform_image(img, rot=0, flip=0, scale=1, shift=0)
    assert tuple(int(i) for i in np.unravel_index(np.argmax(out[:14, :14]), (14, 14))) == (7, 7)
    assert np.argmax(out[19]) in (13, 14)
    assert out[1:7, 1:27].max() == pytest.approx(BG)  # everything outside the 13x13 is background mean


# --- shift ----------------------------------------------------------------------------------------------


@pytest.fixture
def ramp() -> np.ndarray:
    return (np.arange(784, dtype=np.float32).reshape(28, 28) + 1.0) / 784  # all non-zero, all distinct


def test_shift_down(ramp: np.ndarray) -> None:
    out = transform_image(ramp, rot=0, flip=0, scale=0, shift=-1)
    assert np.all(out[:4] == 0) and np.array_equal(out[4:], ramp[:-4])


def test_shift_up(ramp: np.ndarray) -> None:
    out = transform_image(ramp, rot=0, flip=0, scale=0, shift=-2)
    assert np.all(out[24:] == 0) and np.array_equal(out[:24], ramp[4:])


def test_shift_right(ramp: np.ndarray) -> None:
    out = transform_image(ramp, rot=0, flip=0, scale=0, shift=1)
    assert np.all(out[:, :4] == 0) and np.array_equal(out[:, 4:], ramp[:, :-4])


def test_shift_left(ramp: np.ndarray) -> None:
    out = transform_image(ramp, rot=0, flip=0, scale=0, shift=2)
    assert np.all(out[:, 24:] == 0) and np.array_equal(out[:, :24], ramp[:, 4:])


def test_shift_bar_is_zero_not_background() -> None:
    # As the MOML code's shift: the bar is 0 in normalised space (grey), not the black background -0.4242.
    out = transform_image(np.full((28, 28), BG, dtype=np.float32), rot=0, flip=0, scale=0, shift=-1)
    assert np.all(out[:4] == 0.0) and np.all(out[4:] == BG)


def test_invalid_parameters_rejected(ramp: np.ndarray) -> None:
    for kwargs in ({"rot": 4}, {"flip": 2}, {"scale": 2}, {"shift": 3}):
        params = {"rot": 0, "flip": 0, "scale": 0, "shift": 0} | kwargs
        with pytest.raises(ValueError):
            transform_image(ramp, **params)


# --- config and draws -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [7, 3000, 60000])
def test_config_rejects_tasks_not_dividing_both(tasks: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="divisor of both 60000 and 10000"):
        SMNISTConfig(tasks=tasks)


@pytest.mark.parametrize("tasks", [0, -10])
def test_config_rejects_no_tasks(tasks: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
        SMNISTConfig(tasks=tasks)


def test_config_strict() -> None:
    assert SMNISTConfig().model_dump() == {
        "name": "smnist",
        "tasks": 1000,
        "seed": 17,
        "transforms": ("rotate", "flip", "scale", "shift"),
    }
    with pytest.raises(pydantic.ValidationError):
        SMNISTConfig(epochs=3)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="more than once"):
        SMNISTConfig(transforms=("flip", "flip"))
    with pytest.raises(pydantic.ValidationError):
        SMNISTConfig(transforms=("blur",))  # type: ignore[arg-type]
    assert SMNISTConfig.model_fields["tasks"].description  # attribute docstrings become descriptions
    assert cache_name(SMNISTConfig(transforms=("shift", "rotate"))) == "smnist_17_1000_rotate-shift"
    assert cache_name(SMNISTConfig(tasks=100, seed=3, transforms=())) == "smnist_3_100_none"


def test_draws_match_the_global_numpy_seed_sequence() -> None:
    """The official code calls np.random.seed then permutation, permutation, randint x4 (global state)."""
    saved = np.random.get_state()
    try:
        np.random.seed(17)
        perm_train = np.random.permutation(60000)
        perm_test = np.random.permutation(10000)
        rot = np.random.randint(4, size=(1000, 10))
        flip = np.random.randint(3, size=(1000, 10)) - 1
        scale = np.random.randint(2, size=(1000, 10))
        shift = np.random.randint(5, size=(1000, 10)) - 2
    finally:
        np.random.set_state(saved)
    d = draw_transforms(1000, 17)
    for got, want in zip(d, (perm_train, perm_test, rot, flip, scale, shift), strict=True):
        assert np.array_equal(got, want)
    assert set(np.unique(d.rotation)) == {0, 1, 2, 3}
    assert set(np.unique(d.flip)) == {-1, 0, 1}
    assert set(np.unique(d.scale)) == {0, 1}
    assert set(np.unique(d.shift)) == {-2, -1, 0, 1, 2}


# --- the stream on real MNIST ---------------------------------------------------------------------------


def test_the_stream_cache_is_keyed_by_the_libraries_that_compute_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a cached stream reused under another Pillow (its bicubic resize draws the half-scale) or numpy
    (float32 normalisation and ring sums): the README's reproducibility holds for the same versions only."""
    import PIL

    from metacli.engine.data import smnist

    digests = {"train-images-idx3-ubyte.gz": "0" * 64}
    first = stream_folder(SMNISTConfig(), tmp_path, digests)
    assert stream_folder(SMNISTConfig(), tmp_path, digests) == first
    pillow = PIL.__version__
    monkeypatch.setattr(PIL, "__version__", "0.0")
    assert stream_folder(SMNISTConfig(), tmp_path, digests) != first
    monkeypatch.setattr(PIL, "__version__", pillow)
    monkeypatch.setattr(smnist.np, "__version__", "0.0")
    assert stream_folder(SMNISTConfig(), tmp_path, digests) != first


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST's digest memo goes to a cache of the test's own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def root() -> Path:
    r = shared_data_root()
    if r is None:
        pytest.skip("shared MNIST not found (set METACLI_DATA or provide <repo>/../shared/data/mnist)")
    return r


def folder_of(cfg: SMNISTConfig, root: Path, cache: Path) -> Path:
    """Where the stream of ``cfg`` built from the MNIST files under ``root`` is cached in ``cache``."""
    return stream_folder(cfg, cache, verified_digests(locate(root, download=False), cache))


@pytest.fixture(scope="module")
def stream_cache(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache folder of the default S-MNIST-1000 stream (built once for the module)."""
    cache = tmp_path_factory.mktemp("smnist") / "cache"
    build_stream(SMNISTConfig(), root, cache=cache, download=False)
    return cache


@pytest.fixture(scope="module")
def stream(root: Path, stream_cache: Path) -> OnlineStream:
    return build_stream(SMNISTConfig(), root, cache=stream_cache, download=False)


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def fail(*args: object, **kwargs: object) -> StreamArrays:
        raise AssertionError("the stream was rebuilt instead of read from the cache")

    monkeypatch.setattr(smnist, "build_arrays", fail)
    yield


def test_stream_shapes_and_dtypes(stream: OnlineStream) -> None:
    assert tuple(stream.train.x.shape) == (1000, 60, 1, 28, 28)
    assert tuple(stream.train.y.shape) == (1000, 60)
    assert tuple(stream.test.x.shape) == (1000, 10, 1, 28, 28)
    assert tuple(stream.test.y.shape) == (1000, 10)
    assert str(stream.train.x.dtype) == "torch.float32" and str(stream.test.x.dtype) == "torch.float32"
    assert str(stream.train.y.dtype) == "torch.int64" and str(stream.test.y.dtype) == "torch.int64"
    assert stream.n_classes == 10
    # Background is the most common value; the brightest pixel is raw 255. (The minimum is below the
    # background: bicubic resizing in PIL mode "F" overshoots and does not clamp, as in the official code.)
    values, counts = np.unique(stream.test.x.numpy(), return_counts=True)
    assert values[np.argmax(counts)] == np.float32(-0.42421296)
    assert stream.train.x.max().item() >= (1 - 0.1307) / 0.3081 - 1e-5


def _reference(root: Path, cfg: SMNISTConfig, tasks: list[int]) -> dict[str, np.ndarray]:
    """The official per-image loop (MOML ``utils_dataset.py``), for the given tasks only."""
    mnist = load_mnist(root, download=False)
    d = draw_transforms(cfg.tasks, cfg.seed)
    on = cfg.transforms
    out: dict[str, np.ndarray] = {}
    for split, images, labels, perm in (
        ("train", mnist.train_x, mnist.train_y, d.perm_train),
        ("test", mnist.test_x, mnist.test_y, d.perm_test),
    ):
        n = len(labels) // cfg.tasks
        xs = np.empty((len(tasks), n, 28, 28), dtype=np.float32)
        for j, t in enumerate(tasks):
            for i in range(n):
                src = perm[t * n + i]
                c = labels[src]
                xs[j, i] = transform_image(
                    normalise(images[src]),
                    rot=int(d.rotation[t, c]) if "rotate" in on else 0,
                    flip=int(d.flip[t, c]) if "flip" in on else 0,
                    scale=int(d.scale[t, c]) if "scale" in on else 0,
                    shift=int(d.shift[t, c]) if "shift" in on else 0,
                )
        out[split] = xs
    return out


def test_stream_matches_per_image_reference(root: Path, stream: OnlineStream) -> None:
    tasks = [0, 1, 2, 517, 998, 999]
    ref = _reference(root, SMNISTConfig(), tasks)
    assert np.array_equal(stream.train.x.numpy()[tasks, :, 0], ref["train"])
    assert np.array_equal(stream.test.x.numpy()[tasks, :, 0], ref["test"])


def test_stream_labels_and_partition(root: Path, stream: OnlineStream) -> None:
    """The T chunks are consecutive slices of the permuted sets: every original image used exactly once."""
    mnist = load_mnist(root, download=False)
    d = draw_transforms(1000, 17)
    assert np.array_equal(np.sort(d.perm_train), np.arange(60000))
    assert np.array_equal(np.sort(d.perm_test), np.arange(10000))
    assert np.array_equal(stream.train.y.numpy().reshape(-1), mnist.train_y[d.perm_train])
    assert np.array_equal(stream.test.y.numpy().reshape(-1), mnist.test_y[d.perm_test])
    # The first training image of task 0 is MNIST train image perm[0], transformed by its class's draw.
    y0 = int(mnist.train_y[d.perm_train[0]])
    first = transform_image(
        normalise(mnist.train_x[d.perm_train[0]]),
        int(d.rotation[0, y0]),
        int(d.flip[0, y0]),
        int(d.scale[0, y0]),
        int(d.shift[0, y0]),
    )
    assert np.array_equal(stream.train.x[0, 0, 0].numpy(), first)


@pytest.fixture(scope="module")
def dihedral(root: Path, tmp_path_factory: pytest.TempPathFactory) -> OnlineStream:
    """The stream with rotate and flip only."""
    cfg = SMNISTConfig(transforms=("rotate", "flip"))
    return build_stream(cfg, root, cache=tmp_path_factory.mktemp("dihedral"), download=False)


def _signatures(images: np.ndarray) -> list[bytes]:
    """Sorted digests of each image's sorted pixels: invariant under pixel permutations of an image."""
    rows = np.sort(images.reshape(-1, 28 * 28), axis=1)
    return sorted(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows)


def test_dihedral_only_stream_uses_each_image_once(root: Path, dihedral: OnlineStream) -> None:
    """With rotate and flip only, each stream image is a pixel permutation of exactly one MNIST image."""
    mnist = load_mnist(root, download=False)
    for x, raw in ((dihedral.train.x, mnist.train_x), (dihedral.test.x, mnist.test_x)):
        # Same multiset of images, so the T chunks partition the set (each image used once).
        same = _signatures(x.numpy()) == _signatures(normalise(raw))
        assert same


def test_turning_transforms_off_keeps_the_other_draws(stream: OnlineStream, dihedral: OnlineStream) -> None:
    s = dihedral
    d = draw_transforms(1000, 17)
    y = stream.train.y.numpy()
    task = np.repeat(np.arange(1000), 60).reshape(1000, 60)
    untouched = (d.scale[task, y] == 0) & (d.shift[task, y] == 0)
    assert 0.05 < untouched.mean() < 0.2  # about 1/2 * 1/5 of the images
    assert np.array_equal(s.train.x.numpy()[untouched], stream.train.x.numpy()[untouched])
    assert not np.array_equal(s.train.x.numpy()[~untouched], stream.train.x.numpy()[~untouched])


def test_deterministic_and_seed_dependent(root: Path, stream: OnlineStream, tmp_path: Path) -> None:
    again = build_stream(SMNISTConfig(), root, cache=tmp_path / "a", download=False)
    assert np.array_equal(again.train.x.numpy(), stream.train.x.numpy())
    assert np.array_equal(again.test.x.numpy(), stream.test.x.numpy())
    other = build_stream(SMNISTConfig(seed=18), root, cache=tmp_path / "b", download=False)
    assert not np.array_equal(other.train.y.numpy(), stream.train.y.numpy())
    assert not np.array_equal(other.test.x.numpy(), stream.test.x.numpy())


def test_cache_written_and_reused(
    root: Path, stream: OnlineStream, stream_cache: Path, no_build: None
) -> None:
    folder = folder_of(SMNISTConfig(), root, stream_cache)
    assert folder.parent == stream_cache / "streams" and folder.name.startswith(cache_name(SMNISTConfig()))
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_x.npy",
        "test_y.npy",
        "train_x.npy",
        "train_y.npy",
    ]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    cached = build_stream(SMNISTConfig(), root, cache=stream_cache, download=False)
    assert np.array_equal(cached.train.x.numpy(), stream.train.x.numpy())
    assert np.array_equal(cached.test.y.numpy(), stream.test.y.numpy())
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_default_cache_is_the_user_cache_never_the_data_root(
    root: Path, stream_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_build: None
) -> None:
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for p in (root / "mnist").iterdir():
        (data / "mnist" / p.name).symlink_to(p)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user_cache = tmp_path / "xdg" / "metacli"
    folder = folder_of(SMNISTConfig(), data, user_cache)
    folder.parent.mkdir(parents=True)
    folder.symlink_to(folder_of(SMNISTConfig(), root, stream_cache))
    # no_build: this works only because the stream is found in the user cache
    s = build_stream(SMNISTConfig(), data, download=False)
    assert tuple(s.train.x.shape) == (1000, 60, 1, 28, 28)
    assert sorted(p.name for p in data.rglob("*")) == sorted(
        ["mnist", *(p.name for p in (root / "mnist").iterdir())]
    )


def _snapshot(folder: Path) -> dict[str, int]:
    """Every entry under ``folder`` (links not followed) with its modification time."""
    return {p.relative_to(folder).as_posix(): p.lstat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_fresh_stream_goes_to_the_cache_never_the_data_root(
    root: Path, stream: OnlineStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches derived files written beside the raw data, which may be shared or read-only: a stream built
    through the dataset contract (its cache folder) or with the default cache (the user's) leaves the data
    root as it was, and each cache holds the four arrays and no temporary file."""
    arrays = StreamArrays(
        stream.train.x.numpy(), stream.train.y.numpy(), stream.test.x.numpy(), stream.test.y.numpy()
    )
    monkeypatch.setattr(smnist, "build_arrays", lambda *args, **kwargs: arrays)
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for p in (root / "mnist").iterdir():
        (data / "mnist" / p.name).symlink_to(p)
    before = _snapshot(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ctx = DataContext(data, tmp_path / "cache", torch.device("cpu"), torch.float32, False, False)
    assert smnist.build(SMNISTConfig(), ctx).train.x.shape == (1000, 60, 1, 28, 28)
    build_stream(SMNISTConfig(), data, download=False)
    assert _snapshot(data) == before
    for cache in (tmp_path / "cache", tmp_path / "xdg" / "metacli"):
        folder = folder_of(SMNISTConfig(), data, cache)
        assert sorted(p.name for p in folder.iterdir()) == [
            "test_x.npy",
            "test_y.npy",
            "train_x.npy",
            "train_y.npy",
        ]


def test_damaged_cache_is_rebuilt_with_one_warning(
    root: Path, stream: OnlineStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = StreamArrays(
        stream.train.x.numpy(), stream.train.y.numpy(), stream.test.x.numpy(), stream.test.y.numpy()
    )
    calls: list[int] = []

    def fake_build(*args: object, **kwargs: object) -> StreamArrays:
        calls.append(1)
        return arrays

    monkeypatch.setattr(smnist, "build_arrays", fake_build)
    cache = tmp_path / "c"
    folder = folder_of(SMNISTConfig(), root, cache)
    folder.mkdir(parents=True)
    (folder / "train_x.npy").write_bytes(b"\x93NUMPY truncated")  # e.g. a foreign or damaged file
    with pytest.warns(UserWarning) as seen:
        s = build_stream(SMNISTConfig(), root, cache=cache, download=False)
    assert len(seen) == 1 and "damaged S-MNIST stream cache" in str(seen[0].message), [
        str(w.message) for w in seen
    ]
    assert calls == [1]
    assert np.load(folder / "train_x.npy").shape == (1000, 60, 1, 28, 28)
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_x.npy",
        "test_y.npy",
        "train_x.npy",
        "train_y.npy",
    ]
    build_stream(SMNISTConfig(), root, cache=cache, download=False)
    assert calls == [1]  # the rewritten cache is used
    assert np.array_equal(s.train.y.numpy(), stream.train.y.numpy())
