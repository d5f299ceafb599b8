"""The datasets' configs: the ``data:`` section of a run spec, without torch or numpy.

One pydantic model per dataset, selected by its ``name`` (the discriminated union :data:`DataConfig`),
the constants their validators check against (classes per split, images per class, S-MNIST's set
sizes), and :data:`ONLINE_DATASET_NAMES`, the task streams of the online protocol. A run spec is
validated from this module alone (by the spec module), so a bad ``data:`` field is reported without
importing torch or decoding anything. Each dataset's builder imports its config from here
(:mod:`metacli.engine.data.sinusoid`, ``.omniglot``, ``.miniimagenet``, ``.cifar``, ``.smnist``; the
shared N-way K-shot fields from :mod:`metacli.engine.data.images`), and each config names its builder
(``factory``, :mod:`.registry`), from which :mod:`metacli.engine.data` derives its registries.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from metacli.engine.config.fields import Bounded, Count, Seed
from metacli.engine.config.registry import Named, online_names

Split = Literal["train", "val", "test"]
"""A class split of an episodic dataset: meta-training, validation, meta-test."""


# Sinusoid regression (metacli.engine.data.sinusoid)


class SinusoidConfig(Named):
    """Sinusoid regression tasks with random amplitude and phase."""

    factory: ClassVar[str] = "metacli.engine.data.sinusoid:build"

    name: Literal["sinusoid"] = "sinusoid"
    """Dataset name (discriminator)."""
    shots: Count = 5
    """K: support points per task."""
    queries: Count = 10
    """Query points per task."""
    amplitude: tuple[Bounded, Bounded] = (0.1, 5.0)
    """Range of the uniform amplitude A."""
    phase: tuple[Bounded, Bounded] = (0.0, math.pi)
    """Range of the uniform phase, in radians."""
    x_range: tuple[Bounded, Bounded] = (-5.0, 5.0)
    """Range of the uniform inputs x."""

    @model_validator(mode="after")
    def _ordered_ranges(self) -> SinusoidConfig:
        for field in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, field)
            if low > high:
                raise ValueError(f"{field}: low {low} > high {high}; write it as [low, high]")
        return self

    def input_shape(self) -> tuple[int, ...]:
        """One input x: a scalar."""
        return (1,)

    def outputs(self) -> int:
        """One output y."""
        return 1

    def task_examples(self) -> int:
        """Points of one task: support and query."""
        return self.shots + self.queries


# N-way K-shot image tasks (metacli.engine.data.images)


class FewShotConfig(Named):
    """Fields shared by every N-way K-shot image dataset (subclassed per dataset with its ``name``)."""

    ways: Annotated[Count, Field(ge=2)] = 5
    """N: classes per task."""
    shots: Count = 1
    """K: support images per class."""
    queries: Count = 15
    """Q: query images per class."""
    train_shots: Count | None = None
    """Support images per class in meta-training tasks only (Reptile's train-shots); default: shots."""

    @model_validator(mode="after")
    def _fits_a_class(self) -> FewShotConfig:
        smallest = min(self.split_classes().values(), default=None)
        if smallest is not None and self.ways > smallest:
            sizes = ", ".join(f"{s} {n}" for s, n in self.split_classes().items())
            raise ValueError(
                f"ways = {self.ways}, but the smallest split of this dataset has {smallest} classes "
                f"({sizes}); lower ways"
            )
        per_class = self.images_per_class()
        need = max(self.shots, self.train_shots or 0) + self.queries
        if per_class is not None and need > per_class:
            raise ValueError(
                f"shots + queries = {need} images per class, but every class of this dataset has only "
                f"{per_class}; lower queries or shots"
            )
        return self

    def images_per_class(self) -> int | None:
        """How many images every class holds, when the dataset fixes it (checked at validation)."""
        return None

    def split_classes(self) -> dict[Split, int]:
        """Classes per split of the real dataset, when fixed (checked at validation; fixtures hold fewer)."""
        return {}

    def shots_for(self, split: Split) -> int:
        """K of a task of ``split``: ``train_shots`` in meta-training when set, else ``shots``."""
        return self.train_shots if split == "train" and self.train_shots is not None else self.shots

    def input_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one image, as the dataset's builder delivers it."""
        raise NotImplementedError(f"{type(self).__name__} does not give its image shape")

    def outputs(self) -> int:
        """One logit per way."""
        return self.ways

    def task_examples(self) -> int:
        """Images of the largest task: ways x (the larger of shots and train_shots, plus queries)."""
        return self.ways * (max(self.shots, self.train_shots or 0) + self.queries)


# Omniglot (metacli.engine.data.omniglot)

DRAWERS = 20
"""Images (drawers) per Omniglot character."""


class OmniglotConfig(FewShotConfig):
    """Omniglot N-way K-shot tasks (Vinyals or Lake split, optional rotation classes)."""

    factory: ClassVar[str] = "metacli.engine.data.omniglot:build"
    name: Literal["omniglot"] = "omniglot"
    """Dataset name (discriminator)."""
    queries: Count = 5
    """Q: query images per class. 5 keeps 1- and 5-shot tasks within the 20 drawers (cbfinn/maml uses
    Q = K, e.g. 1 for 1-shot); run configs set it explicitly."""
    split: Literal["vinyals", "lake"] = "vinyals"
    """Class split: ``vinyals`` (1028 / 172 / 423 characters) or ``lake`` (background minus a validation
    subset / that subset / evaluation)."""
    rotations: bool = True
    """Also offer every character rotated by 90, 180, 270 degrees as three new classes (MAML, torchmeta)."""
    image_size: Annotated[Count, Field(le=105)] = 28
    """Side of the square images after resizing from 105 (28 in MAML and most few-shot work)."""
    lake_val_characters: Annotated[Count, Field(le=963)] = 100
    """Lake split only: background characters held out for validation (cbfinn/maml: 100)."""
    split_seed: Seed = 0
    """Lake split only: seed of the draw of the validation characters."""

    def images_per_class(self) -> int:
        """Every character has 20 drawers."""
        return DRAWERS

    def input_shape(self) -> tuple[int, ...]:
        """Grey images of image_size x image_size."""
        return (1, self.image_size, self.image_size)

    def split_classes(self) -> dict[Split, int]:
        """Characters per split (x 4 with rotations): Vinyals 1028 / 172 / 423; Lake 964 - v / v / 659."""
        if self.split == "vinyals":
            characters: dict[Split, int] = {"train": 1028, "val": 172, "test": 423}
        else:
            v = self.lake_val_characters
            characters = {"train": 964 - v, "val": v, "test": 659}
        return {s: n * (4 if self.rotations else 1) for s, n in characters.items()}


# miniImageNet (metacli.engine.data.miniimagenet)

MINIIMAGENET_PER_CLASS = 600
"""Images per class in the real miniImageNet."""
MINIIMAGENET_SIDE = 84
"""Side of the square miniImageNet images."""
MINIIMAGENET_SPLIT_CLASSES: dict[Split, int] = {"train": 64, "val": 16, "test": 20}
"""Classes per split in the Ravi & Larochelle split (documentation; fixtures may have fewer)."""


class MiniImageNetConfig(FewShotConfig):
    """N-way K-shot tasks from miniImageNet (Ravi & Larochelle split, 600 images of 84×84 per class)."""

    factory: ClassVar[str] = "metacli.engine.data.miniimagenet:build"
    name: Literal["miniimagenet"] = "miniimagenet"
    """Dataset name (discriminator)."""
    format: Literal["auto", "pickle", "folder"] = "auto"
    """Source layout: ``auto`` reads the pickles when all three exist, else the image folder."""
    normalize: Literal["none", "imagenet"] = "none"
    """``none``: x / 255 (as cbfinn/maml); ``imagenet``: then (x - mean) / std with ImageNet statistics."""
    queries: Count = 15
    """Q: query images per class (15, as in the MAML miniImageNet experiments)."""

    def images_per_class(self) -> int | None:
        """600: every miniImageNet class has 600 images."""
        return MINIIMAGENET_PER_CLASS

    def input_shape(self) -> tuple[int, ...]:
        """RGB images of 84 x 84."""
        return (3, MINIIMAGENET_SIDE, MINIIMAGENET_SIDE)

    def split_classes(self) -> dict[Split, int]:
        """64 / 16 / 20 (Ravi & Larochelle)."""
        return dict(MINIIMAGENET_SPLIT_CLASSES)


# CIFAR-FS and FC100 (metacli.engine.data.cifar)

CIFAR_PER_CLASS = 600
"""Images per CIFAR-100 class once train and test are pooled (500 + 100)."""
CIFAR_SIDE = 32
"""Side of the square CIFAR-100 images."""
CIFARSplitName = Literal["cifar-fs", "fc100"]
"""The two class splits of CIFAR-100: CIFAR-FS and FC100."""
CIFAR_SPLIT_CLASSES: dict[CIFARSplitName, dict[Split, int]] = {
    "cifar-fs": {"train": 64, "val": 16, "test": 20},
    "fc100": {"train": 60, "val": 20, "test": 20},
}
"""Fine classes per split (documentation and a check of the packaged JSONs)."""


class CIFARFewShotConfig(FewShotConfig):
    """Fields shared by CIFAR-FS and FC100 (600 images of 32×32 per class)."""

    normalize: Literal["none", "cifar100"] = "none"
    """``none``: x / 255; ``cifar100``: then (x - mean) / std with CIFAR-100's channel statistics."""
    queries: Count = 15
    """Q: query images per class."""

    def images_per_class(self) -> int | None:
        """600: train and test images pooled."""
        return CIFAR_PER_CLASS

    def input_shape(self) -> tuple[int, ...]:
        """RGB images of 32 x 32."""
        return (3, CIFAR_SIDE, CIFAR_SIDE)


class CIFARFSConfig(CIFARFewShotConfig):
    """N-way K-shot tasks from CIFAR-FS (Bertinetto et al. 2019: 64 / 16 / 20 CIFAR-100 classes)."""

    factory: ClassVar[str] = "metacli.engine.data.cifar:build_cifar_fs"
    name: Literal["cifar_fs"] = "cifar_fs"
    """Dataset name (discriminator)."""

    def split_classes(self) -> dict[Split, int]:
        """64 / 16 / 20."""
        return dict(CIFAR_SPLIT_CLASSES["cifar-fs"])


class FC100Config(CIFARFewShotConfig):
    """N-way K-shot tasks from FC100 (Oreshkin et al. 2018: 12 / 4 / 4 superclasses, 60 / 20 / 20 classes)."""

    factory: ClassVar[str] = "metacli.engine.data.cifar:build_fc100"
    name: Literal["fc100"] = "fc100"
    """Dataset name (discriminator)."""

    def split_classes(self) -> dict[Split, int]:
        """60 / 20 / 20."""
        return dict(CIFAR_SPLIT_CLASSES["fc100"])


# S-MNIST, the online task stream (metacli.engine.data.smnist)

TransformName = Literal["rotate", "flip", "scale", "shift"]
ALL_TRANSFORMS: tuple[TransformName, ...] = ("rotate", "flip", "scale", "shift")
"""Every transform, in the order of the pipeline (and of the random draws)."""

MNIST_TRAIN_IMAGES = 60000
"""Images of the MNIST training set, which S-MNIST chunks into its tasks' train sets."""
MNIST_TEST_IMAGES = 10000
"""Images of the MNIST test set, chunked into the tasks' test sets."""
MNIST_SIDE = 28
"""Side of the square grey MNIST images."""
MNIST_CLASSES = 10
"""Digits: the classes of every S-MNIST task."""


class SMNISTConfig(Named):
    """The S-MNIST stream of MOML: MNIST chunked into tasks, each class of each task transformed."""

    factory: ClassVar[str] = "metacli.engine.data.smnist:build"
    online: ClassVar[bool] = True

    name: Literal["smnist"] = "smnist"
    """Dataset name (discriminator)."""
    tasks: Count = 1000
    """Number of rounds T; must divide 60000 and 10000 (60000/T train and 10000/T test images per task)."""
    seed: Seed = 17
    """Seed of the permutations and of the per-(task, class) transform draws (the MOML script uses 17)."""
    transforms: tuple[TransformName, ...] = ALL_TRANSFORMS
    """Transforms to apply. All draws are always made, so turning one off leaves the others identical.
    As in the official code, the 4-pixel shift fills with 0 in normalised space (a grey bar, not the
    black background) and the half-scale uses Pillow's bicubic resize."""

    @property
    def train_per_task(self) -> int:
        """Training images per task (60 for T = 1000)."""
        return MNIST_TRAIN_IMAGES // self.tasks

    def input_shape(self) -> tuple[int, ...]:
        """Grey 28 x 28 digits."""
        return (1, MNIST_SIDE, MNIST_SIDE)

    def outputs(self) -> int:
        """The ten digits."""
        return MNIST_CLASSES

    def task_examples(self) -> int:
        """A task's training images, all fine-tuned on at once when it is evaluated."""
        return self.train_per_task

    @field_validator("tasks")
    @classmethod
    def _tasks_divide(cls, value: int) -> int:
        """T must split both sets into equal chunks (the stream is one dense array per split)."""
        if value < 1 or MNIST_TRAIN_IMAGES % value or MNIST_TEST_IMAGES % value:
            raise ValueError(
                f"tasks must be a positive divisor of both 60000 and 10000 (i.e. of 10000), "
                f"so that every task gets the same number of images, e.g. 10, 20, 100, 1000; got {value}"
            )
        return value

    @field_validator("transforms")
    @classmethod
    def _no_duplicates(cls, value: tuple[TransformName, ...]) -> tuple[TransformName, ...]:
        """Each transform is on or off; listing one twice is a mistake."""
        if len(set(value)) != len(value):
            raise ValueError(f"transforms lists a transform more than once: {list(value)}")
        return value


# The union of them all, and the online ones

DataConfig = Annotated[
    SinusoidConfig | OmniglotConfig | MiniImageNetConfig | CIFARFSConfig | FC100Config | SMNISTConfig,
    Field(discriminator="name"),
]
"""The ``data:`` section: the config that ``name`` selects; a wrong name lists the valid ones."""

ONLINE_DATASET_NAMES: frozenset[str] = online_names(DataConfig)
"""The task streams of the online protocol; every other dataset is episodic (few-shot tasks)."""
