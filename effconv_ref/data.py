"""Datasets by name: CIFAR-10, CIFAR-100 and STL-10 from torchvision, and ``shapes``, a
small image set generated offline so that every chapter can train something real on a
CPU without a network.

``get_dataset(name, train)`` returns one split; ``get_loaders(name)`` returns seeded
training and test loaders and the number of classes. When a download fails,
``DownloadError`` says where torchvision downloads from and how to place the files by hand.
With ``EFFCONV_OFFLINE=1`` nothing is downloaded: each torchvision set is replaced by the
``shapes`` patterns drawn at its image size, with its classes and length, behind the same
transforms (``synthetic_dataset``).
"""

import http.client
import math
import os
import shlex
import urllib.error
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .runtime import offline

DATASETS = ("cifar10", "cifar100", "stl10", "shapes")

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "shapes": 10}

# Per-channel mean and standard deviation of each training set (pixels in [0, 1]).
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}

DEFAULT_ROOT = "~/.cache/effconv_ref/datasets"


def data_root(root=None) -> Path:
    """Where torchvision data lives: ``root``, else ``$EFFCONV_DATA``, else
    ``~/.cache/effconv_ref/datasets``."""
    if root is None:
        root = os.environ.get("EFFCONV_DATA") or DEFAULT_ROOT
    return Path(root).expanduser()


# --------------------------------------------------------------------------------------
# shapes: ten spatial patterns in random colours
# --------------------------------------------------------------------------------------

SHAPES_CLASSES = (
    "disc",
    "ring",
    "square outline",
    "filled square",
    "cross",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "triangle",
)

SHAPES_SIZE = 32
SHAPES_TRAIN_SEED = 0
SHAPES_TEST_SEED = 1
SHAPES_TRAIN_LEN = 10_000
SHAPES_TEST_LEN = 2_000
SHAPES_MEAN = 0.5
SHAPES_STD = 0.25


def _shape_mask(kind, cx, cy, r, w, sign, size):
    """Foreground masks ``(n, size, size)`` of class ``kind`` (an index into
    ``SHAPES_CLASSES``) centred at ``(cx, cy)``, half-size ``r``, line/stripe width ``w``."""
    coords = torch.arange(size, dtype=torch.float32)
    dx = coords.view(1, 1, size) - cx.view(-1, 1, 1)
    dy = coords.view(1, size, 1) - cy.view(-1, 1, 1)
    r, w, sign = r.view(-1, 1, 1), w.view(-1, 1, 1), sign.view(-1, 1, 1)
    box = torch.maximum(dx.abs(), dy.abs())  # Chebyshev distance from the centre
    inside = box <= r

    def bands(t):  # alternating bands of width w
        return torch.floor(t / w).remainder(2) == 0

    name = SHAPES_CLASSES[kind]
    if name in ("disc", "ring"):
        dist = torch.sqrt(dx * dx + dy * dy)
        return (dist <= r) if name == "disc" else (dist <= r) & (dist >= r - w)
    if name == "square outline":
        return inside & (box >= r - w)
    if name == "filled square":
        return inside
    if name == "cross":
        return inside & ((dx.abs() <= w / 2) | (dy.abs() <= w / 2))
    if name == "horizontal stripes":
        return inside & bands(dy)
    if name == "vertical stripes":
        return inside & bands(dx)
    if name == "diagonal stripes":  # either diagonal
        return inside & bands((dx + sign * dy) / math.sqrt(2.0))
    if name == "checkerboard":
        return inside & (bands(dx) ^ bands(dy))
    # triangle, pointing up or down
    return (dy.abs() <= r) & (dx.abs() <= (sign * dy + r) / 2)


def make_shapes(n: int, seed: int = 0, size: int = SHAPES_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, size, size)`` of the ten ``SHAPES_CLASSES`` and their labels.

    Image ``i`` has class ``i % 10`` (so every prefix is class-balanced), a random centre,
    half-size, stripe width and orientation, a random background colour and a foreground
    colour at least 0.3 away from it in every channel (so colour alone does not tell the
    class), plus uniform noise. Normalised by ``SHAPES_MEAN``/``SHAPES_STD``. Deterministic
    for ``seed``, and the first ``k`` images do not depend on ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # two streams, so that image i reads the same numbers whatever n is
    u = torch.rand(n, 11, generator=torch.Generator().manual_seed(2 * seed))
    noise = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2 * seed + 1))
    labels = torch.arange(n) % len(SHAPES_CLASSES)
    r = size * (0.16 + 0.16 * u[:, 0])  # half-size 5..10 pixels at 32x32
    cx = r + u[:, 1] * (size - 1 - 2 * r)
    cy = r + u[:, 2] * (size - 1 - 2 * r)
    w = torch.maximum(r * (0.25 + 0.15 * u[:, 3]), torch.tensor(1.5))
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    background = u[:, 5:8]
    foreground = (background + 0.3 + 0.4 * u[:, 8:11]).remainder(1.0)
    mask = torch.empty(n, 1, size, size, dtype=torch.bool)
    step = len(SHAPES_CLASSES)
    for kind in range(step):  # images kind, kind + 10, kind + 20, ... have class kind
        rows = slice(kind, None, step)
        mask[rows, 0] = _shape_mask(kind, cx[rows], cy[rows], r[rows], w[rows], sign[rows], size)
    images = torch.where(mask, foreground.view(n, 3, 1, 1), background.view(n, 3, 1, 1))
    images = images.add_(noise.sub_(0.5).mul_(0.2)).clamp_(0.0, 1.0)
    return images.sub_(SHAPES_MEAN).div_(SHAPES_STD), labels


class ShapesDataset(TensorDataset):
    """``make_shapes`` as a dataset of ``(image, label)`` pairs, with ``classes``."""

    def __init__(self, n: int, seed: int = 0) -> None:
        images, labels = make_shapes(n, seed)
        super().__init__(images, labels)
        self.classes = list(SHAPES_CLASSES)
        self.seed = seed


# --------------------------------------------------------------------------------------
# torchvision datasets
# --------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """A torchvision dataset could not be downloaded; the message says how to place it by hand."""


# what a failed download raises: no network, a refused connection, a timeout, a bad reply
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]


def download_help(name: str, root=None) -> str:
    """How to place the dataset ``name`` by hand: fetch torchvision's archive into the root,
    where torchvision finds it, checks its md5 and extracts it on the next run."""
    source = _torchvision_class(name)
    root = data_root(root)
    archive = root / source.filename
    return (
        f"place it by hand: mkdir -p {shlex.quote(str(root))} && "
        f"curl -L {source.url} -o {shlex.quote(str(archive))} "
        f"and run again (torchvision checks the archive and extracts it to {root / source.base_folder})"
    )


def _transform(name: str, train: bool):
    from torchvision import transforms

    mean, std = _STATS[name]
    resolution = 96 if name == "stl10" else 32
    steps = []
    if train:  # pad by 1/8 of the side (4 pixels at 32x32), crop back, flip
        steps += [
            transforms.RandomCrop(resolution, padding=resolution // 8),
            transforms.RandomHorizontalFlip(),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


# --------------------------------------------------------------------------------------
# offline: synthetic images in place of a download (EFFCONV_OFFLINE=1)
# --------------------------------------------------------------------------------------

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# name: (training length, test length, image side, class names) of the real datasets
REAL_SHAPES = {
    "cifar10": (50_000, 10_000, 32, CIFAR10_CLASSES),
    "cifar100": (50_000, 10_000, 32, CIFAR100_CLASSES),
    "stl10": (5_000, 8_000, 96, STL10_CLASSES),
}
SYNTHETIC_BLOCK = 100  # images made per call of make_shapes (a multiple of 100 classes)
SYNTHETIC_TINTS = 0.4 + 0.6 * torch.rand(10, 3, generator=torch.Generator().manual_seed(12345))


def synthetic_block(block: int, side: int, num_classes: int, seed: int) -> torch.Tensor:
    """Images ``block * SYNTHETIC_BLOCK`` to ``(block + 1) * SYNTHETIC_BLOCK - 1`` of a synthetic
    set, as uint8 ``(SYNTHETIC_BLOCK, side, side, 3)``: the ``shapes`` patterns drawn at
    ``side x side`` (seed ``1000 * seed + block``), so that a network learns them as it learns
    the real set. Image ``i`` has class ``i % num_classes``: pattern ``i % 10`` and, for 100
    classes, one of ten fixed colour tints, ``SYNTHETIC_TINTS[(i // 10) % 10]``.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    if not 0 <= seed < 1000:
        raise ValueError(f"seed must be in [0, 1000), got {seed}")
    normalised, _ = make_shapes(SYNTHETIC_BLOCK, seed=1000 * seed + block, size=side)
    pixels = normalised.mul_(SHAPES_STD).add_(SHAPES_MEAN).clamp_(0.0, 1.0)
    if num_classes == 100:
        family = torch.arange(SYNTHETIC_BLOCK) // 10 % 10
        pixels.mul_(SYNTHETIC_TINTS[family].view(-1, 3, 1, 1))
    return pixels.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class SyntheticImages(Dataset):
    """``length`` synthetic images of ``side x side`` pixels (``synthetic_block``), made a block at
    a time when first read and returned as PIL images (as torchvision's sets return them)
    through ``transform``, with labels ``i % len(classes)`` and ``classes``. Deterministic;
    seeds 0 and 1 (training and test) share no image."""

    def __init__(self, length: int, side: int, classes, seed: int, transform=None) -> None:
        self.length, self.side, self.seed = length, side, seed
        self.classes = list(classes)
        self.transform = transform
        self._blocks = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        from PIL import Image

        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} images")
        block, offset = divmod(index, SYNTHETIC_BLOCK)
        if block not in self._blocks:
            self._blocks[block] = synthetic_block(block, self.side, len(self.classes), self.seed)
        image = Image.fromarray(self._blocks[block][offset].numpy())  # (side, side, 3) uint8: RGB
        if self.transform is not None:
            image = self.transform(image)
        return image, index % len(self.classes)


def synthetic_dataset(name: str, train: bool) -> SyntheticImages:
    """The offline stand-in for the torchvision set ``name`` (``EFFCONV_OFFLINE=1``): its length,
    image size, classes and transforms (augmentation included), with ``synthetic_block`` images."""
    train_len, test_len, side, classes = REAL_SHAPES[name]
    length, seed = (train_len, 0) if train else (test_len, 1)
    return SyntheticImages(length, side, classes, seed, transform=_transform(name, train))


def get_dataset(
    name: str,
    train: bool = True,
    root=None,
    download: bool = True,
    size: Optional[int] = None,
) -> Dataset:
    """One split of the dataset ``name`` (one of ``DATASETS``).

    torchvision sets are downloaded into ``data_root(root)`` on first use, normalised by
    their channel statistics and, for training, augmented with a padded random crop and a
    horizontal flip. ``size`` keeps only the first ``size`` samples (a ``Subset``), for
    smoke runs. Every returned dataset has a ``classes`` list. A failed download raises
    ``DownloadError`` with the URL, the folder and the command to place the files by hand.
    With ``EFFCONV_OFFLINE=1`` a torchvision set is ``synthetic_dataset(name, train)``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of samples, got {size}")

    if name == "shapes":
        full = SHAPES_TRAIN_LEN if train else SHAPES_TEST_LEN
        n = full if size is None else min(size, full)
        # the first n images of a split do not depend on how many are generated
        return ShapesDataset(n, seed=SHAPES_TRAIN_SEED if train else SHAPES_TEST_SEED)

    if offline():
        return _first(synthetic_dataset(name, train), size)

    source = _torchvision_class(name)
    folder = data_root(root)
    transform = _transform(name, train)
    try:
        if name == "stl10":
            split = "train" if train else "test"
            dataset = source(str(folder), split=split, transform=transform, download=download)
        else:
            dataset = source(str(folder), train=train, transform=transform, download=download)
    except NETWORK_ERRORS as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"could not download {name} from {source.url} ({_short(reason)}); {download_help(name, folder)}"
        ) from error
    if not hasattr(dataset, "classes"):
        dataset.classes = [str(i) for i in range(NUM_CLASSES[name])]
    return _first(dataset, size)


def _first(dataset: Dataset, size: Optional[int]) -> Dataset:
    """The first ``size`` samples of ``dataset`` (all of them for ``None``), with its ``classes``."""
    if size is None or size >= len(dataset):
        return dataset
    subset = Subset(dataset, range(size))
    subset.classes = dataset.classes
    return subset


def _short(reason) -> str:
    """A network error's reason without its errno prefix: 'Temporary failure in name resolution'."""
    text = str(getattr(reason, "strerror", None) or reason)
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return text


def get_loaders(
    name: str,
    batch_size: int = 128,
    root=None,
    size: Optional[int] = None,
    num_workers: int = 0,
    seed: int = 0,
    download: bool = True,
) -> Tuple[DataLoader, DataLoader, int]:
    """``(train_loader, test_loader, num_classes)`` for the dataset ``name``.

    The training loader shuffles with its own ``torch.Generator`` seeded by ``seed``;
    ``size`` limits both splits to their first ``size`` samples. Workers are started
    afresh each epoch (not persistent), so that every epoch draws the same random numbers
    whether or not the run was resumed in between.
    """
    train_set = get_dataset(name, train=True, root=root, download=download, size=size)
    test_set = get_dataset(name, train=False, root=root, download=download, size=size)
    pin = torch.cuda.is_available()
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin,
    )
    test_loader = DataLoader(
        test_set,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
    )
    return train_loader, test_loader, NUM_CLASSES[name]
