"""The embedded synthetic dataset: deterministic, balanced, quick to build, and not linearly separable."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.data import load_dataset
from workbench.data.synthetic import CLASS_NAMES, generate
from workbench.errors import DataError
from workbench.spec import DataSpec


def test_default_synthetic_dataset_shape_balance_and_info():
    data = load_dataset(DataSpec(name="synthetic"))
    assert data.train_images.shape == (10000, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (2000, 3, 32, 32)
    assert data.info.class_names == CLASS_NAMES and len(CLASS_NAMES) == 10
    assert data.info.class_counts == {"train": [1000] * 10, "test": [200] * 10}
    assert data.info.source == "embedded generator" and data.info.augment == "cifar"
    assert min(data.info.std) > 0.2 and max(data.info.mean) < 0.8
    json.dumps(data.info.to_dict())


def test_same_seed_same_images_other_seed_other_images():
    a_images, a_labels = generate(300, seed=5)
    b_images, b_labels = generate(300, seed=5)
    c_images, _ = generate(300, seed=6)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert not torch.equal(a_images, c_images)


def test_train_and_test_differ_and_options_apply():
    data = load_dataset(DataSpec(name="synthetic", synthetic_train=500, synthetic_test=100, validation_size=50, seed=2))
    assert data.info.counts == {"train": 450, "test": 100, "val": 50}
    assert not torch.equal(data.train_images[:100], data.test_images)
    subset = load_dataset(
        DataSpec(name="synthetic", synthetic_train=500, synthetic_test=100, classes=["striped ring", "solid disk"])
    )
    assert subset.info.class_names == ["striped ring", "solid disk"]
    assert subset.info.counts == {"train": 100, "test": 20}
    with pytest.raises(DataError, match="at least 10 train and test images"):
        load_dataset(DataSpec(name="synthetic", synthetic_train=5))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int = 64) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch + 1, batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


@pytest.fixture
def one_thread():
    """Small models train faster and more predictably on one thread, above all on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_linear_model_fails_where_a_small_cnn_learns(one_thread):
    torch.manual_seed(0)
    data = load_dataset(DataSpec(name="synthetic", synthetic_train=5000, synthetic_test=1000, seed=1))
    mean = torch.tensor(data.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.info.std).view(1, 3, 1, 1)
    x_train = (data.train_images.float() / 255 - mean) / std
    x_test = (data.test_images.float() / 255 - mean) / std

    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    _fit(linear, x_train, data.train_labels, epochs=8, lr=1e-3)
    linear_accuracy = _accuracy(linear, x_test, data.test_labels)

    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _fit(cnn, x_train, data.train_labels, epochs=4, lr=3e-3)
    cnn_accuracy = _accuracy(cnn, x_test, data.test_labels)

    assert linear_accuracy < 0.3, f"a linear model reached {linear_accuracy:.1%}: the classes are too easy"
    assert cnn_accuracy > 0.5, f"a small CNN reached only {cnn_accuracy:.1%}: the classes are not learnable"
    assert cnn_accuracy > linear_accuracy + 0.3
