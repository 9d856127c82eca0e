"""Datasets: the generated ``shapes`` set, and the torchvision loaders read from tiny
files written in the formats torchvision reads (no network)."""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.stl10 as tv_stl10
from torch.utils.data import Subset

from effconv_ref import data

# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


def test_shapes_is_deterministic_and_cifar_shaped():
    a = data.get_dataset("shapes", train=True, size=200)
    b = data.get_dataset("shapes", train=True, size=200)
    assert len(a) == 200
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    image, label = a[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= int(label) < 10
    assert a.classes == list(data.SHAPES_CLASSES) and len(a.classes) == 10


def test_shapes_train_and_test_differ():
    train = data.get_dataset("shapes", train=True, size=100)
    test = data.get_dataset("shapes", train=False, size=100)
    assert not torch.allclose(train.tensors[0], test.tensors[0])


def test_shapes_prefix_does_not_depend_on_size():
    small, _ = data.make_shapes(37, seed=5)
    large, _ = data.make_shapes(500, seed=5)
    assert torch.equal(small, large[:37])


def test_shapes_is_class_balanced():
    _, labels = data.make_shapes(1000, seed=0)
    assert torch.bincount(labels, minlength=10).tolist() == [100] * 10
    assert len(data.get_dataset("shapes", train=True)) == data.SHAPES_TRAIN_LEN
    assert len(data.get_dataset("shapes", train=False)) == data.SHAPES_TEST_LEN


def test_shapes_is_fast():
    import time

    start = time.perf_counter()
    data.make_shapes(10_000, seed=0)
    assert time.perf_counter() - start < 5.0  # about 0.7 s on one CPU core


def test_shapes_classes_are_not_told_by_mean_colour():
    """A nearest-centroid classifier on each image's mean colour stays near chance (10%),
    so telling the classes apart needs spatial features."""
    train, train_labels = data.make_shapes(5000, seed=0)
    test, test_labels = data.make_shapes(2000, seed=1)
    features, test_features = train.mean(dim=(2, 3)), test.mean(dim=(2, 3))
    centroids = torch.stack([features[train_labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(test_features, centroids).argmin(1)
    accuracy = (predicted == test_labels).float().mean().item()
    assert accuracy < 0.16
    # and the foreground is never the background colour: every pattern is visible
    pixels = test.flatten(2)
    spread = (pixels.max(dim=2).values - pixels.min(dim=2).values).amin(dim=1)
    assert spread.min() > 0.3 / data.SHAPES_STD


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError) as info:
        data.get_dataset("mnist")
    assert str(info.value) == "unknown dataset 'mnist'; choose one of: cifar10, cifar100, stl10, shapes"
    with pytest.raises(ValueError, match="size"):
        data.get_dataset("shapes", size=0)


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("EFFCONV_DATA", raising=False)
    assert data.data_root() == data.Path("~/.cache/effconv_ref/datasets").expanduser()
    monkeypatch.setenv("EFFCONV_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    assert data.data_root(tmp_path / "x") == tmp_path / "x"


def test_loaders_are_seeded():
    def first_labels(seed):
        train_loader, test_loader, num_classes = data.get_loaders("shapes", batch_size=16, size=64, seed=seed)
        assert num_classes == 10
        return next(iter(train_loader))[1]

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


# --------------------------------------------------------------------------------------
# torchvision formats, written small
# --------------------------------------------------------------------------------------


def _accept_any_file(monkeypatch):
    """torchvision checks the md5 of the real files; our tiny ones only need to exist."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_stl10, "check_integrity", exists)


def _pickle(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(n, side, offset):
    """uint8 images (n, 3, side, side) whose pixels encode their position."""
    values = np.arange(n * 3 * side * side, dtype=np.int64).reshape(n, 3, side, side)
    return ((values * 7 + offset) % 256).astype(np.uint8)


def _write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        images = _images(4, 32, offset=i)
        _pickle({"data": images.reshape(4, -1), "labels": [i % 10, 1, 2, 3]}, folder / f"data_batch_{i}")
    test = _images(3, 32, offset=100)
    _pickle({"data": test.reshape(3, -1), "labels": [9, 8, 7]}, folder / "test_batch")
    _pickle({"label_names": [f"class{k}" for k in range(10)]}, folder / "batches.meta")
    return test


def _write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle({"data": _images(6, 32, 3).reshape(6, -1), "fine_labels": [0, 10, 20, 30, 40, 99]}, folder / "train")
    test = _images(2, 32, 50)
    _pickle({"data": test.reshape(2, -1), "fine_labels": [98, 97]}, folder / "test")
    _pickle({"fine_label_names": [f"c{k}" for k in range(100)]}, folder / "meta")
    return test


def _write_stl10(root):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    # STL-10 stores each image channel by channel, column-major; labels are 1-based
    train = _images(3, 96, 5)
    train.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")
    np.array([1, 2, 10], dtype=np.uint8).tofile(folder / "train_y.bin")
    (folder / "unlabeled_X.bin").write_bytes(b"")
    test = _images(2, 96, 9)
    test.transpose(0, 1, 3, 2).tofile(folder / "test_X.bin")
    np.array([4, 5], dtype=np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"s{k}" for k in range(10)) + "\n")
    return test


def _normalised(images, name):
    mean, std = data._STATS[name]
    x = torch.from_numpy(images).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize(
    "name, write, side, train_len, train_labels, test_labels, num_classes",
    [
        ("cifar10", _write_cifar10, 32, 20, [1, 1, 2, 3, 2], [9, 8, 7], 10),
        ("cifar100", _write_cifar100, 32, 6, [0, 10, 20, 30, 40], [98, 97], 100),
        ("stl10", _write_stl10, 96, 3, [0, 1, 9], [3, 4], 10),
    ],
)
def test_torchvision_sets_read_offline(
    monkeypatch, tmp_path, name, write, side, train_len, train_labels, test_labels, num_classes
):
    _accept_any_file(monkeypatch)
    test_images = write(tmp_path)

    test = data.get_dataset(name, train=False, root=tmp_path, download=False)
    assert len(test) == len(test_labels)
    assert len(test.classes) == num_classes
    for i, label in enumerate(test_labels):
        image, target = test[i]
        assert target == label
        # test split: no augmentation, exactly ToTensor + channel normalisation
        torch.testing.assert_close(image, _normalised(test_images[i], name))

    train = data.get_dataset(name, train=True, root=tmp_path, download=False)
    assert len(train) == train_len
    assert [train[i][1] for i in range(len(train_labels))] == train_labels
    torch.manual_seed(0)
    image, _ = train[0]
    assert image.shape == (3, side, side)

    subset = data.get_dataset(name, train=True, root=tmp_path, download=False, size=2)
    assert isinstance(subset, Subset) and len(subset) == 2
    assert subset.classes == train.classes

    # the root can also come from the environment
    monkeypatch.setenv("EFFCONV_DATA", str(tmp_path))
    train_loader, test_loader, classes = data.get_loaders(name, batch_size=2, size=2, download=False)
    assert classes == num_classes
    images, targets = next(iter(train_loader))
    assert images.shape == (2, 3, side, side) and targets.shape == (2,)
    images, targets = next(iter(test_loader))
    torch.testing.assert_close(images[0], _normalised(test_images[0], name))


def test_training_augmentation_crops_and_flips(monkeypatch, tmp_path):
    _accept_any_file(monkeypatch)
    _write_cifar10(tmp_path)
    train = data.get_dataset("cifar10", train=True, root=tmp_path, download=False)
    plain = _normalised(_images(4, 32, offset=1)[0], "cifar10")
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(20)]
    assert any(not torch.equal(v, plain) for v in views)  # augmentation changes images
    assert all(v.shape == plain.shape for v in views)


def test_missing_files_without_download_fail(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        data.get_dataset("cifar10", root=tmp_path, download=False)
