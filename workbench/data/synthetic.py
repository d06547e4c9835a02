"""The embedded default dataset: 10 classes of coloured shapes and textures at 32x32, made on the fly.

A class is a shape (disk, square, triangle, ring, cross) times a texture (solid or striped). Every
image draws its own colours (foreground and background, so colour says nothing about the class),
position, size, rotation, stripe angle and period, a background gradient, a few distractor blobs and
pixel noise. A linear model on the pixels does little better than chance, while a small CNN learns
the classes, so depth and shortcuts have room to matter. Deterministic by seed; vectorised in torch.
"""

from __future__ import annotations

import math

import torch

from workbench.data.base import Splits
from workbench.errors import DataError

SHAPES = ("disk", "square", "triangle", "ring", "cross")
TEXTURES = ("solid", "striped")
CLASS_NAMES = [f"{texture} {shape}" for shape in SHAPES for texture in TEXTURES]
IMAGE_SIZE = 32
DISTRACTORS = 3
NOISE_STD = 0.05
CHUNK = 2048


def _uniform(generator: torch.Generator, n: int, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=generator)


def _signed_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (positive inside, in units of the shape radius) of each shape: (5, n, H, W)."""
    radius = torch.sqrt(u.square() + v.square())
    disk = 1.0 - radius
    square = 0.8 - torch.maximum(u.abs(), v.abs())
    edges = [0.55 - (u * math.cos(a) + v * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    triangle = torch.minimum(torch.minimum(edges[0], edges[1]), edges[2])
    ring = 0.22 - (radius - 0.72).abs()
    bar_across = torch.minimum(0.28 - v.abs(), 0.95 - u.abs())
    bar_down = torch.minimum(0.28 - u.abs(), 0.95 - v.abs())
    cross = torch.maximum(bar_across, bar_down)
    return torch.stack([disk, square, triangle, ring, cross])


def _render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one image per label: float (n, 3, 32, 32) in 0..1."""
    n = labels.shape[0]
    shape_index = labels // len(TEXTURES)
    striped = (labels % len(TEXTURES) == 1).float().view(n, 1, 1, 1)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    centre_x = _uniform(generator, n, 10.0, 22.0, 1, 1)
    centre_y = _uniform(generator, n, 10.0, 22.0, 1, 1)
    radius = _uniform(generator, n, 6.5, 11.0, 1, 1)
    angle = _uniform(generator, n, 0.0, 2 * math.pi, 1, 1)
    dx, dy = xs - centre_x, ys - centre_y
    u = (torch.cos(angle) * dx + torch.sin(angle) * dy) / radius
    v = (-torch.sin(angle) * dx + torch.cos(angle) * dy) / radius
    distance = _signed_distances(u, v)
    chosen = distance.gather(0, shape_index.view(1, n, 1, 1).expand(1, n, IMAGE_SIZE, IMAGE_SIZE))[0]
    mask = torch.sigmoid(chosen * radius * 2.5).unsqueeze(1)

    stripe_angle = _uniform(generator, n, 0.0, math.pi, 1, 1)
    period = _uniform(generator, n, 3.0, 5.0, 1, 1)
    phase = _uniform(generator, n, 0.0, 2 * math.pi, 1, 1)
    wave = torch.sin(2 * math.pi * (dx * torch.cos(stripe_angle) + dy * torch.sin(stripe_angle)) / period + phase)
    stripe = torch.sigmoid(wave * 4.0).unsqueeze(1)

    background = torch.rand(n, 3, 1, 1, generator=generator)
    first = (background + _uniform(generator, n, 0.25, 0.42, 3, 1, 1)) % 1.0
    second = (background + _uniform(generator, n, 0.58, 0.75, 3, 1, 1)) % 1.0
    fill = first * (1 - striped) + striped * (first * stripe + second * (1 - stripe))

    slope = _uniform(generator, n, -0.15, 0.15, 2, 1, 1)
    gradient = (slope[:, :1] * (xs - 16) + slope[:, 1:] * (ys - 16)) / 16
    image = (background + gradient) * (1 - mask) + fill * mask

    for _ in range(DISTRACTORS):
        blob_x = _uniform(generator, n, 0.0, IMAGE_SIZE, 1, 1)
        blob_y = _uniform(generator, n, 0.0, IMAGE_SIZE, 1, 1)
        spread = _uniform(generator, n, 1.0, 2.2, 1, 1)
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        weight = 0.9 * torch.exp(-((xs - blob_x).square() + (ys - blob_y).square()) / (2 * spread.square()))
        weight = weight.unsqueeze(1)
        image = image * (1 - weight) + colour * weight

    image = image + NOISE_STD * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1)


def generate(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images (uint8, N x 3 x 32 x 32) with balanced int64 labels, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(CLASS_NAMES))[torch.randperm(count, generator=generator)]
    images = torch.empty(count, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for start in range(0, count, CHUNK):
        part = _render(labels[start : start + CHUNK], generator)
        images[start : start + CHUNK] = (part * 255).round().to(torch.uint8)
    return images, labels


def check_counts(train_count: int, test_count: int) -> None:
    """DataError unless both splits hold at least one image per class."""
    if train_count < len(CLASS_NAMES) or test_count < len(CLASS_NAMES):
        raise DataError(
            f"the synthetic dataset needs at least {len(CLASS_NAMES)} train and test images (one per class); "
            f"got {train_count} train and {test_count} test"
        )


def class_count(count: int, label: int) -> int:
    """How many of `count` generated images have `label` (labels are balanced, see `generate`)."""
    return count // len(CLASS_NAMES) + (1 if label < count % len(CLASS_NAMES) else 0)


def make_synthetic(train_count: int, test_count: int, seed: int) -> Splits:
    """Train and test splits drawn from independent streams of the same seed."""
    check_counts(train_count, test_count)
    stream = torch.Generator().manual_seed(seed)
    train_seed, test_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=stream))
    train_images, train_labels = generate(train_count, train_seed)
    test_images, test_labels = generate(test_count, test_seed)
    return Splits(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=list(CLASS_NAMES),
        source="embedded generator",
        augment="cifar",
    )
