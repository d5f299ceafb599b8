"""S-MNIST: the online task stream of MOML (Acar et al., 2021), built exactly as its official code does.

Sources and checksums of every dataset: docs/datasets.md.

The official code (``utils_dataset.py::DatasetObject``, rule ``'mnist_rotations_flips_crop_scale'``):

1. normalises MNIST with ``ToTensor`` + ``Normalize(0.1307, 0.3081)``; everything below happens in
   normalised space (black background = -0.4242);
2. ``np.random.seed(seed)``; permutes the train set, then the test set;
3. draws, in this order and each of shape (n_task, 10): rotation ``randint(4)`` in {0..3}, flip
   ``randint(3) - 1`` in {-1, 0, 1}, scale ``randint(2)`` in {0, 1}, shift ``randint(5) - 2`` in {-2..2};
4. splits each permuted set into n_task consecutive chunks; image ``i`` of chunk ``t`` with label ``c``
   gets the transform drawn for (t, c): rotate, flip, scale, shift, in that order.

Here ``np.random.RandomState(seed)`` replaces the global seed; it is the same generator, so the draws
are identical.

**Cache.** The built arrays are cached as four ``.npy`` files (read with ``allow_pickle=False``: data,
never code) in ``<cache>/streams/<cache_name(cfg)>-<key>/`` (:func:`stream_folder`), never in the data
root. The key hashes the SHA-256 of the MNIST files' content (memoised, see
:func:`~metacli.engine.data.mnist.verified_digests`) with the stream's recipe (tasks, seed, transforms,
:data:`FORMAT_VERSION`, the Pillow and numpy versions), so a stream is rebuilt whenever MNIST's content or a
library that computes it changes, and a stream built from other MNIST files is never reused. A damaged
cache is rebuilt, with one warning.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import PIL
import torch
from PIL import Image

from metacli.engine.config.data import ALL_TRANSFORMS, SMNISTConfig, TransformName
from metacli.engine.config.data import MNIST_TEST_IMAGES as N_TEST
from metacli.engine.config.data import MNIST_TRAIN_IMAGES as N_TRAIN
from metacli.engine.data.mnist import load_mnist, locate, verified_digests
from metacli.engine.data.paths import cache_key, user_cache_dir
from metacli.engine.types import Batch, DataContext, OnlineStream, OpenProgress
from metacli.files import atomic_write

N_CLASSES = 10
SIDE = 28
MEAN = np.float32(0.1307)
STD = np.float32(0.3081)
"""MNIST normalisation of the official code (torchvision ``Normalize((0.1307,), (0.3081,))``)."""

SCALE_WIDTH = 26
"""Side of the central patch that the scale transform halves (official ``width_=26``)."""
SCALE_RATIO = 2
SHIFT_PX = 4
"""Shift distance in pixels (official ``pad=4``)."""
FORMAT_VERSION = 1
"""Bumped whenever the cached arrays would change for the same MNIST files and config (part of the key)."""
STREAMS_DIR = "streams"
"""Sub-folder of the cache that holds the built streams."""

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class TransformDraws(NamedTuple):
    """The random state of one stream: the two permutations and the four (T, 10) transform draws."""

    perm_train: IntArray
    perm_test: IntArray
    rotation: IntArray
    flip: IntArray
    scale: IntArray
    shift: IntArray


def draw_transforms(tasks: int, seed: int) -> TransformDraws:
    """Make the random draws in the official order (``utils_dataset.py``).

    ``np.random.seed(seed)``; ``permutation(60000)``; ``permutation(10000)``; then ``randint(4)``,
    ``randint(3) - 1``, ``randint(2)``, ``randint(5) - 2``, each of size (n_task, 10). ``RandomState``
    is the legacy generator behind ``np.random.*``, so the values are identical.
    """
    rs = np.random.RandomState(seed)
    perm_train = rs.permutation(N_TRAIN).astype(np.int64)
    perm_test = rs.permutation(N_TEST).astype(np.int64)
    size = (tasks, N_CLASSES)
    rotation = rs.randint(4, size=size).astype(np.int64)  # 0, 1, 2, 3 quarter turns
    flip = rs.randint(3, size=size).astype(np.int64) - 1  # -1, 0, +1
    scale = rs.randint(2, size=size).astype(np.int64)  # 0, 1
    shift = rs.randint(5, size=size).astype(np.int64) - 2  # -2, -1, 0, +1, +2
    return TransformDraws(perm_train, perm_test, rotation, flip, scale, shift)


def normalise(images: npt.NDArray[np.uint8]) -> FloatArray:
    """``ToTensor`` then ``Normalize(0.1307, 0.3081)``, in float32 like torchvision (x/255 - m) / s."""
    out = images.astype(np.float32)
    out /= np.float32(255)
    out -= MEAN
    out /= STD
    return out


def _scale_half(img: FloatArray) -> FloatArray:
    """Halve the central 26x26 patch and centre it (official ``scale_img``, ``width_=26, ratio=2``).

    ``v`` is the mean of the 108 pixels *outside* the central 26x26 patch, i.e. the outer 1-pixel ring
    of the 28x28 image, computed as the official code does: ``(sum(img) - sum(patch)) / (28² - 26²)``.
    The patch (rows and cols 1..26) is resized to 13x13 by PIL (mode "F", bicubic: Pillow's default
    since 7.0, pinned here), rows and cols 1..26 are filled with ``v``, and the 13x13 result is pasted
    at rows and cols 7..19.
    """
    rem = (SIDE - SCALE_WIDTH) // SCALE_RATIO  # 1
    half = SCALE_WIDTH // SCALE_RATIO  # 13
    quarter = SCALE_WIDTH // (SCALE_RATIO * 2)  # 6
    patch = img[rem:-rem, rem:-rem]
    # float32 sums and difference, as in the official code (not a float64 mean of the ring).
    v = (np.sum(img) - np.sum(patch)) / np.float32(SIDE * SIDE - SCALE_WIDTH * SCALE_WIDTH)
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32)).resize(
            (half, half), Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    )
    out = np.array(img, dtype=np.float32, copy=True)
    out[rem:-rem, rem:-rem] = v
    start = rem + quarter  # 7
    out[start : start + half, start : start + half] = small
    return out


def _shift(images: FloatArray, shift: int) -> FloatArray:
    """Shift by 4 px and fill the uncovered bar with 0 (official ``crop_img``, ``pad=4``).

    -1: down (bar on top); -2: up (bar at the bottom); +1: right (bar on the left); +2: left (bar on
    the right); 0: none. 0 in normalised space is raw intensity 0.1307, a grey bar, not the black
    background; kept for faithfulness to the official code.
    """
    out = np.zeros_like(images)
    p = SHIFT_PX
    if shift == -1:
        out[:, p:, :] = images[:, :-p, :]
    elif shift == -2:
        out[:, :-p, :] = images[:, p:, :]
    elif shift == 1:
        out[:, :, p:] = images[:, :, :-p]
    elif shift == 2:
        out[:, :, :-p] = images[:, :, p:]
    elif shift == 0:
        out[...] = images
    else:
        raise ValueError(f"shift must be in -2..2, got {shift}")
    return out


def transform_batch(images: FloatArray, rot: int, flip: int, scale: int, shift: int) -> FloatArray:
    """Apply one (rotation, flip, scale, shift) to normalised images of shape (N, 28, 28).

    Order and conventions of the official code: ``np.rot90(k=rot)`` over (H, W), counter-clockwise;
    flip -1 mirrors left-right (width axis), +1 up-down (height axis); scale 1 halves the digit
    (:func:`_scale_half`); shift as in :func:`_shift`. Returns a new float32 array; the input is not
    modified.
    """
    if rot not in (0, 1, 2, 3) or flip not in (-1, 0, 1) or scale not in (0, 1):
        raise ValueError(f"invalid transform rot={rot} flip={flip} scale={scale}")
    x = np.rot90(images, k=rot, axes=(1, 2))
    if flip == -1:
        x = np.flip(x, axis=2)
    elif flip == 1:
        x = np.flip(x, axis=1)
    if scale == 1:
        x = np.stack([_scale_half(img) for img in x])
    return _shift(np.asarray(x, dtype=np.float32), shift)


def transform_image(img: FloatArray, rot: int, flip: int, scale: int, shift: int) -> FloatArray:
    """Apply one transform to a single normalised (28, 28) image; see :func:`transform_batch`."""
    if img.shape != (SIDE, SIDE):
        raise ValueError(f"expected a (28, 28) image, got shape {img.shape}")
    out: FloatArray = transform_batch(img[None].astype(np.float32, copy=False), rot, flip, scale, shift)[0]
    return out


def _apply_task_transforms(
    x: FloatArray, y: IntArray, tasks: int, draws: TransformDraws, enabled: tuple[TransformName, ...]
) -> FloatArray:
    """Transform every image by the draw of its (task, class); ``x`` is (N, 28, 28) in permuted order.

    Image ``i`` belongs to task ``i // (N / T)`` (consecutive chunks). Images that share the same
    transform are processed together, which is equivalent to the official per-image loop.
    """
    n = len(y)
    task = np.arange(n) // (n // tasks)

    def per_image(table: IntArray, name: TransformName) -> IntArray:
        # A disabled transform gets parameter 0 (identity), after the draw has been made.
        values: IntArray = table[task, y]
        return values if name in enabled else np.zeros_like(values)

    rot = per_image(draws.rotation, "rotate")
    flip = per_image(draws.flip, "flip")
    scale = per_image(draws.scale, "scale")
    shift = per_image(draws.shift, "shift")
    code = ((rot * 3 + (flip + 1)) * 2 + scale) * 5 + (shift + 2)
    out = np.empty_like(x)
    for c in np.unique(code):
        idx = np.flatnonzero(code == c)
        i = idx[0]
        out[idx] = transform_batch(x[idx], int(rot[i]), int(flip[i]), int(scale[i]), int(shift[i]))
    return out


class StreamArrays(NamedTuple):
    """The stream as numpy arrays: x float32 (T, n, 1, 28, 28), y int64 (T, n)."""

    train_x: FloatArray
    train_y: IntArray
    test_x: FloatArray
    test_y: IntArray


def build_arrays(
    cfg: SMNISTConfig,
    root: Path,
    download: bool = True,
    progress: OpenProgress | None = None,
    cache: Path | None = None,
) -> StreamArrays:
    """Build the stream from MNIST at ``root`` (no stream cache); see the module docstring for the steps.

    ``cache`` holds MNIST's digest memo (default: the user cache folder).
    """
    mnist = load_mnist(root, download=download, progress=progress, cache=cache)
    draws = draw_transforms(cfg.tasks, cfg.seed)
    splits = []
    for images, labels, perm in (
        (mnist.train_x, mnist.train_y, draws.perm_train),
        (mnist.test_x, mnist.test_y, draws.perm_test),
    ):
        # Permute the raw uint8 images before normalising: same result, a quarter of the memory traffic.
        x = normalise(images[perm])
        y = labels[perm].astype(np.int64)
        x = _apply_task_transforms(x, y, cfg.tasks, draws, cfg.transforms)
        per_task = len(y) // cfg.tasks
        splits.append((x.reshape(cfg.tasks, per_task, 1, SIDE, SIDE), y.reshape(cfg.tasks, per_task)))
    (train_x, train_y), (test_x, test_y) = splits
    return StreamArrays(train_x, train_y, test_x, test_y)


def cache_name(cfg: SMNISTConfig) -> str:
    """Folder name of the cache: ``smnist_<seed>_<T>_<transforms>`` (transforms in pipeline order)."""
    on = [t for t in ALL_TRANSFORMS if t in cfg.transforms]
    return f"smnist_{cfg.seed}_{cfg.tasks}_{'-'.join(on) if on else 'none'}"


def _expected_shapes(cfg: SMNISTConfig) -> dict[str, tuple[tuple[int, ...], np.dtype[np.generic]]]:
    """Shape and dtype of each cached array, used to reject a stale or foreign cache."""
    t = cfg.tasks
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return {
        "train_x": ((t, N_TRAIN // t, 1, SIDE, SIDE), f32),
        "train_y": ((t, N_TRAIN // t), i64),
        "test_x": ((t, N_TEST // t, 1, SIDE, SIDE), f32),
        "test_y": ((t, N_TEST // t), i64),
    }


def stream_folder(cfg: SMNISTConfig, cache: Path, mnist: Mapping[str, str]) -> Path:
    """``<cache>/streams/<cache_name(cfg)>-<key>``: where the stream of ``cfg`` built from ``mnist`` lives.

    Args:
        cfg: the stream's config.
        cache: the cache folder.
        mnist: SHA-256 of each MNIST file's content (:func:`~metacli.engine.data.mnist.verified_digests`).
    """
    recipe = {
        "dataset": "smnist",
        "format_version": FORMAT_VERSION,
        "stream": cache_name(cfg),  # seed, tasks and transforms
        "mnist": dict(sorted(mnist.items())),
        "pillow": PIL.__version__,  # the scale transform resizes with Pillow's bicubic filter
        "numpy": np.__version__,  # normalisation and the scale's ring mean are numpy float32 arithmetic
    }
    return cache / STREAMS_DIR / f"{cache_name(cfg)}-{cache_key(recipe)}"


def _load_cache(folder: Path, cfg: SMNISTConfig) -> StreamArrays | None:
    """The cached arrays; None when there is no cache, and (with one warning) when it is damaged."""
    expected = _expected_shapes(cfg)
    if not any((folder / f"{key}.npy").exists() for key in expected):
        return None
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    problem = ""
    for key, (shape, dtype) in expected.items():
        try:
            arr = np.load(folder / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # missing, truncated, foreign or pickled
            problem = f"{key}.npy cannot be read: {e}"
            break
        if arr.shape != shape or arr.dtype != dtype:
            problem = f"{key}.npy holds {arr.dtype} {arr.shape}, not {dtype} {shape}"
            break
        arrays[key] = arr
    if problem:
        warnings.warn(
            f"ignoring the damaged S-MNIST stream cache {folder} ({problem}); rebuilding it", stacklevel=3
        )
        return None
    return StreamArrays(**arrays)  # type: ignore[arg-type]


def _save_cache(folder: Path, arrays: StreamArrays) -> None:
    """Cache the arrays; a failure (e.g. a read-only cache) only warns, the stream is still usable."""
    try:
        for key, arr in arrays._asdict().items():
            # Not durable (no fsync): a stream is rebuilt whenever a file is missing or fails to load.
            save = functools.partial(np.save, arr=arr, allow_pickle=False)
            atomic_write(folder / f"{key}.npy", save, durable=False)
    except OSError as e:
        warnings.warn(f"could not cache the S-MNIST stream in {folder}: {e}", stacklevel=3)


def build_stream(
    cfg: SMNISTConfig,
    root: Path,
    cache: Path | None = None,
    download: bool = True,
    progress: OpenProgress | None = None,
) -> OnlineStream:
    """The S-MNIST stream as tensors, read from the cache when it exists, otherwise built and cached.

    Args:
        cfg: number of tasks, seed and enabled transforms.
        root: data root holding ``mnist/`` (see :func:`metacli.engine.data.paths.resolve_data_root`).
        cache: cache folder (default: the user cache folder); the stream goes to :func:`stream_folder`.
        download: allow downloading missing MNIST files.
        progress: show download progress.

    Returns:
        ``train.x`` float32 (T, 60000/T, 1, 28, 28), ``train.y`` int64 (T, 60000/T); ``test`` likewise
        with 10000/T; 10 classes.

    Raises:
        DataError: MNIST is missing and cannot be downloaded, is corrupt, or is not the published content.
    """
    cache = cache if cache is not None else user_cache_dir()
    folder = stream_folder(cfg, cache, verified_digests(locate(root, download, progress), cache))
    arrays = _load_cache(folder, cfg)
    if arrays is None:
        arrays = build_arrays(cfg, root, download=download, progress=progress, cache=cache)
        _save_cache(folder, arrays)
    return OnlineStream(
        train=Batch(torch.from_numpy(arrays.train_x), torch.from_numpy(arrays.train_y)),
        test=Batch(torch.from_numpy(arrays.test_x), torch.from_numpy(arrays.test_y)),
        n_classes=N_CLASSES,
    )


def build(cfg: SMNISTConfig, ctx: DataContext) -> OnlineStream:
    """The dataset contract: the S-MNIST stream from ``ctx.root``, cached under ``ctx.cache/streams``.

    Returns the stream on ``ctx.device``, images in ``ctx.dtype``.
    """
    stream = build_stream(cfg, ctx.root, cache=ctx.cache, download=ctx.download, progress=ctx.progress)
    return OnlineStream(
        train=Batch(stream.train.x.to(ctx.device, ctx.dtype), stream.train.y.to(ctx.device)),
        test=Batch(stream.test.x.to(ctx.device, ctx.dtype), stream.test.y.to(ctx.device)),
        n_classes=stream.n_classes,
    )
