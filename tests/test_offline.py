"""EFFCONV_OFFLINE=1: every dataset comes without a network, with the shape, classes and
length of the real one; nothing is downloaded and nothing is written to the data folder."""

import socket

import pytest
import torch
import torchvision.datasets as tv

from effconv_ref import data
from effconv_ref.runtime import offline

# name: (training length, test length, image side, number of classes) of the real datasets
REAL = {
    "cifar10": (50_000, 10_000, 32, 10),
    "cifar100": (50_000, 10_000, 32, 100),
    "stl10": (5_000, 8_000, 96, 10),
    "shapes": (data.SHAPES_TRAIN_LEN, data.SHAPES_TEST_LEN, 32, 10),
}


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Offline, with an empty data folder; any download or connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    for source in (tv.CIFAR10, tv.CIFAR100, tv.STL10):
        monkeypatch.setattr(source, "download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("EFFCONV_OFFLINE", "1")
    monkeypatch.setenv("EFFCONV_DATA", str(tmp_path))
    return tmp_path


def test_every_dataset_is_covered():
    assert set(REAL) == set(data.DATASETS)


@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize("train", [True, False])
def test_offline_dataset_has_the_real_shape_classes_and_length(no_network, name, train):
    train_len, test_len, side, num_classes = REAL[name]
    dataset = data.get_dataset(name, train=train)
    assert len(dataset) == (train_len if train else test_len)
    assert len(dataset.classes) == num_classes == data.NUM_CLASSES[name]
    assert len(set(dataset.classes)) == num_classes
    for index in (0, 1, len(dataset) - 1):
        image, label = dataset[index]
        assert image.shape == (3, side, side) and image.dtype == torch.float32
        assert 0 <= int(label) < num_classes
    assert list(no_network.iterdir()) == []  # nothing downloaded or written


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_offline_images_are_deterministic_and_balanced(no_network, name):
    test = data.get_dataset(name, train=False)
    again = data.get_dataset(name, train=False)
    for index in (0, 7, 999):
        assert torch.equal(test[index][0], again[index][0]) and test[index][1] == again[index][1]
    train = data.get_dataset(name, train=True)
    train.transform = test.transform  # no augmentation: compare the images themselves
    assert not torch.equal(train[0][0], test[0][0])  # the splits differ
    classes = len(test.classes)
    labels = torch.tensor([int(test[i][1]) for i in range(3 * classes)])
    assert torch.bincount(labels, minlength=classes).tolist() == [3] * classes


def test_offline_images_are_the_shapes_patterns(no_network):
    """CIFAR-10's stand-in draws the ``shapes`` patterns (a network can learn them, so a chapter's
    "it learns" checks hold offline); CIFAR-100's tints them with one of ten colours per ten
    classes, so that its hundred classes can be told apart too."""
    block = data.SYNTHETIC_BLOCK
    images10 = data.synthetic_block(2, 32, 10, seed=1)  # images 2000.. of the test split
    shapes, shape_labels = data.make_shapes(block, seed=1002)
    pixels = (shapes * data.SHAPES_STD + data.SHAPES_MEAN).clamp(0, 1) * 255
    assert images10.shape == (block, 32, 32, 3) and images10.dtype == torch.uint8
    assert (images10.permute(0, 3, 1, 2).float() - pixels).abs().max() <= 0.5 + 1e-3
    test = data.get_dataset("cifar10", train=False)
    assert [test[2 * block + i][1] for i in range(20)] == shape_labels[:20].tolist()
    images100 = data.synthetic_block(2, 32, 100, seed=1)
    family = (2 * block + torch.arange(block)) // 10 % 10
    expected = pixels * data.SYNTHETIC_TINTS[family].view(-1, 3, 1, 1)
    assert (images100.permute(0, 3, 1, 2).float() - expected).abs().max() <= 0.5 + 1e-3
    assert len(data.SYNTHETIC_TINTS.unique(dim=0)) == 10
    assert data.synthetic_block(0, 96, 10, seed=0).shape == (block, 96, 96, 3)  # STL-10's
    with pytest.raises(ValueError, match="num_classes must be 10 or 100"):
        data.synthetic_block(0, 32, 7, seed=0)


def test_offline_training_is_augmented_like_the_real_set(no_network):
    train = data.get_dataset("cifar10", train=True)
    torch.manual_seed(0)
    first = train[3][0]
    torch.manual_seed(1)
    assert not torch.equal(first, train[3][0])  # random crop and flip, as for CIFAR-10


def test_offline_loaders_and_size(no_network):
    train_loader, test_loader, num_classes = data.get_loaders("cifar100", batch_size=16, size=40)
    images, labels = next(iter(train_loader))
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,) and num_classes == 100
    assert len(train_loader.dataset) == len(test_loader.dataset) == 40
    assert len(train_loader.dataset.classes) == 100


def test_without_the_switch_the_real_download_is_tried(no_network, monkeypatch):
    monkeypatch.delenv("EFFCONV_OFFLINE")
    with pytest.raises(AssertionError, match="the network was used"):
        data.get_dataset("cifar10", train=False)


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("no", False),
                                             ("1", True), ("true", True), (" YES ", True)])
def test_offline_reads_the_variable(monkeypatch, value, expected):
    monkeypatch.setenv("EFFCONV_OFFLINE", value)
    assert offline() is expected


def test_offline_rejects_other_values(monkeypatch):
    monkeypatch.setenv("EFFCONV_OFFLINE", "sometimes")
    with pytest.raises(ValueError, match=r"EFFCONV_OFFLINE='sometimes' .* 1 .* 0"):
        offline()
    monkeypatch.delenv("EFFCONV_OFFLINE")
    assert offline() is False
