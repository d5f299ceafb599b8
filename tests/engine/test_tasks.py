"""The device-resident N-way K-shot sampler (``metacli.engine.data.images``) on synthetic class images.

Every image of the synthetic splits encodes its own (class, index) in its pixels, so a test can read back
exactly which images a task holds and check the contract: N distinct classes, labels 0..N-1 consistent
with the classes, K + Q distinct images per class, no support/query overlap, one seed -> one task set.
"""

from __future__ import annotations

import pytest
import torch

from metacli.engine.data.images import ClassImages, FewShotConfig, FewShotImages, rotation_permutations
from metacli.errors import DataError

CPU = torch.device("cpu")


def coded_images(n_classes: int, per_class: int, side: int = 6, channels: int = 1) -> torch.Tensor:
    """uint8 (classes, per_class, C, side, side): pixel (0, 0) = class, pixel (0, 1) = index in class."""
    x = torch.zeros(n_classes, per_class, channels, side, side, dtype=torch.uint8)
    x[:, :, :, 0, 0] = torch.arange(n_classes, dtype=torch.uint8)[:, None, None]
    x[:, :, :, 0, 1] = torch.arange(per_class, dtype=torch.uint8)[None, :, None]
    return x


def dataset(
    ways: int = 5, shots: int = 2, queries: int = 3, rotations: bool = False, **kw: object
) -> FewShotImages:
    cfg = FewShotConfig(ways=ways, shots=shots, queries=queries, **kw)  # type: ignore[arg-type]
    splits = {
        "train": ClassImages(coded_images(12, 10), CPU, rotations),
        "val": ClassImages(coded_images(7, 10) + 100, CPU, rotations),
        "test": ClassImages(coded_images(8, 10) + 200, CPU, rotations),
    }
    return FewShotImages(cfg, splits)


def codes(x: torch.Tensor) -> torch.Tensor:
    """(class code, index) of each image of a (B, n, C, H, W) float batch in [0, 1]."""
    px = (x * 255).round().long()
    return torch.stack([px[..., 0, 0, 0], px[..., 0, 0, 1]], dim=-1)


def test_task_shapes_dtype_device_and_labels() -> None:
    ds = dataset()
    tasks = ds.sample("train", 4, torch.Generator().manual_seed(0), CPU, torch.float64)
    assert tasks.support.x.shape == (4, 10, 1, 6, 6) and tasks.query.x.shape == (4, 15, 1, 6, 6)
    assert tasks.support.x.dtype == torch.float64 and tasks.support.y.dtype == torch.int64
    assert tasks.support.x.device == CPU
    for b in range(4):
        assert sorted(tasks.support.y[b].tolist()) == sorted(list(range(5)) * 2)
        assert sorted(tasks.query.y[b].tolist()) == sorted(list(range(5)) * 3)


def test_each_label_is_one_class_and_support_query_disjoint() -> None:
    ds = dataset()
    tasks = ds.sample("train", 6, torch.Generator().manual_seed(1), CPU)
    s, q = codes(tasks.support.x), codes(tasks.query.x)
    for b in range(6):
        label_class = {}
        for (cls, _), y in zip(
            s[b].tolist() + q[b].tolist(),
            tasks.support.y[b].tolist() + tasks.query.y[b].tolist(),
            strict=True,
        ):
            assert label_class.setdefault(y, cls) == cls  # one class per label, in support and query
        assert len(set(label_class.values())) == 5  # N distinct classes
        images = [tuple(c) for c in s[b].tolist() + q[b].tolist()]
        assert len(set(images)) == len(images)  # no image twice: support and query disjoint


def test_splits_draw_from_their_own_classes() -> None:
    ds = dataset()
    g = torch.Generator().manual_seed(2)
    for split, offset, n in (("train", 0, 12), ("val", 100, 7), ("test", 200, 8)):
        cls = codes(ds.sample(split, 5, g, CPU).support.x)[..., 0]
        assert int(cls.min()) >= offset and int(cls.max()) < offset + n


def test_labels_are_permuted_per_task() -> None:
    """Label 0 is not always the same class: the class order is drawn per task."""
    tasks = dataset().sample("train", 20, torch.Generator().manual_seed(3), CPU)
    first = codes(tasks.support.x)[:, 0, 0]  # class of the first image, which has label 0
    assert bool((tasks.support.y[:, 0] == 0).all())
    assert len(set(first.tolist())) > 3


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    a = dataset().sample("test", 5, torch.Generator().manual_seed(1234), CPU)
    b = dataset().sample("test", 5, torch.Generator().manual_seed(1234), CPU)
    c = dataset().sample("test", 5, torch.Generator().manual_seed(1235), CPU)
    assert torch.equal(a.support.x, b.support.x) and torch.equal(a.query.x, b.query.x)
    assert not torch.equal(a.support.x, c.support.x)


def test_train_shots_only_in_training_tasks() -> None:
    ds = dataset(shots=1, train_shots=4, queries=2)
    g = torch.Generator().manual_seed(0)
    assert ds.sample("train", 2, g, CPU).support.x.shape[1] == 5 * 4
    assert ds.sample("test", 2, g, CPU).support.x.shape[1] == 5 * 1


def test_rotation_permutations_are_rot90() -> None:
    img = torch.arange(25).view(5, 5)
    perms = rotation_permutations(5)
    for r in range(4):
        assert torch.equal(img.flatten()[perms[r]], torch.rot90(img, r, dims=(0, 1)).flatten())


def test_rotated_classes_are_rotated_copies() -> None:
    """Class 4c + r is class c rotated by r * 90 degrees, drawn in the same gather."""
    base = torch.randint(
        0, 256, (3, 4, 1, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    split = ClassImages(base, CPU, rotations=True)
    assert split.n_classes == 12
    classes = torch.tensor([[0, 5, 10, 7]])
    picks = torch.tensor([[[0, 1], [2, 3], [1, 0], [3, 2]]])
    x = split.gather(classes, picks)
    for j, c in enumerate(classes[0].tolist()):
        for s, i in enumerate(picks[0, j].tolist()):
            assert torch.equal(x[0, j, s], torch.rot90(base[c // 4, i], c % 4, dims=(-2, -1)))


def test_normalisation_mean_std() -> None:
    cfg = FewShotConfig(ways=2, shots=1, queries=1)
    images = torch.full((3, 2, 3, 4, 4), 255, dtype=torch.uint8)
    ds = FewShotImages(cfg, {"train": ClassImages(images, CPU)}, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = ds.sample("train", 1, torch.Generator().manual_seed(0), CPU).support.x
    assert torch.allclose(x[0, 0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))


def test_too_many_ways_or_shots_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="fewer than ways"):
        FewShotImages(
            FewShotConfig(ways=9, shots=1, queries=1), {"val": ClassImages(coded_images(7, 10), CPU)}
        )
    with pytest.raises(DataError, match="images per class"):
        FewShotImages(
            FewShotConfig(ways=2, shots=6, queries=5), {"val": ClassImages(coded_images(7, 10), CPU)}
        )


@pytest.mark.gpu
def test_tasks_on_cuda_equal_tasks_on_cpu() -> None:
    """The draws come from the CPU generator, so one seed gives the same tasks on every device."""
    cuda = torch.device("cuda")
    cfg = FewShotConfig(ways=5, shots=2, queries=3)
    images = coded_images(12, 10)
    on_cpu = FewShotImages(cfg, {"train": ClassImages(images, CPU, True)})
    on_gpu = FewShotImages(cfg, {"train": ClassImages(images, cuda, True)})
    a = on_cpu.sample("train", 4, torch.Generator().manual_seed(0), CPU)
    b = on_gpu.sample("train", 4, torch.Generator().manual_seed(0), cuda)
    assert b.support.x.device.type == "cuda"
    assert torch.equal(a.support.x, b.support.x.cpu()) and torch.equal(a.query.y, b.query.y.cpu())
