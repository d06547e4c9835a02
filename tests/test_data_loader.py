"""Device-side batches: crops, flips, offset distribution, determinism, exact resume, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.data import TrainBatches, eval_batches
from workbench.data.loader import CROP_RATIO, CROP_SCALE, sample_resized_crops
from workbench.errors import DataError

RAW = {
    "mean": (0.0, 0.0, 0.0),
    "std": (1 / 255, 1 / 255, 1 / 255),
}  # normalisation that leaves pixel values as they are


def coordinate_images(count: int, size: int = 32) -> torch.Tensor:
    """uint8 images whose channels hold row + 1, column + 1 and 255: every pixel says where it came from."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    cols = torch.arange(1, size + 1, dtype=torch.uint8).view(1, size).expand(size, size)
    image = torch.stack([rows, cols, torch.full((size, size), 255, dtype=torch.uint8)])
    return image.expand(count, 3, size, size).clone()


def random_images(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count) % 10


def decode_crop(sample: torch.Tensor, size: int = 32, pad: int = 4) -> tuple[int, int, bool]:
    """Offsets (0..2*pad) and flip of one augmented coordinate image; asserts it is a clean shifted crop."""
    rows, cols, valid = sample[0].round().long(), sample[1].round().long(), sample[2] > 127
    assert valid.any()
    i, j = valid.nonzero(as_tuple=True)
    offset_y = set((rows[i, j] - 1 - i + pad).tolist())
    assert len(offset_y) == 1, "rows must shift by one offset (vertical flips are not allowed)"
    forward = set((cols[i, j] - 1 - j + pad).tolist())
    backward = set((cols[i, j] - 1 - (size - 1 - j) + pad).tolist())
    flipped = len(forward) != 1
    offset_x = backward if flipped else forward
    assert len(offset_x) == 1, "columns must be one shifted run, mirrored or not"
    oy, ox = offset_y.pop(), offset_x.pop()
    assert 0 <= oy <= 2 * pad and 0 <= ox <= 2 * pad
    expected_valid = (size - abs(oy - pad)) * (size - abs(ox - pad))
    assert int(valid.sum()) == expected_valid, "crop must lie inside the padded image; outside the image is zero"
    assert torch.all(sample[:, ~valid] == 0)
    return oy, ox, flipped


def test_cifar_crops_stay_inside_the_padded_image_and_flips_are_horizontal():
    batches = TrainBatches(
        coordinate_images(256), torch.zeros(256, dtype=torch.long), 64, augment="cifar", device="cpu", seed=1, **RAW
    )
    seen_flips = set()
    for images, _ in batches:
        for sample in images:
            seen_flips.add(decode_crop(sample)[2])
    assert seen_flips == {True, False}


def test_cifar_offsets_are_uniform_and_flips_fair():
    count, epochs = 512, 12
    batches = TrainBatches(
        coordinate_images(count),
        torch.zeros(count, dtype=torch.long),
        256,
        augment="cifar",
        device="cpu",
        seed=7,
        **RAW,
    )
    offsets_y, offsets_x, flips = torch.zeros(9), torch.zeros(9), 0
    for _ in range(epochs):
        for images, _ in batches:
            for sample in images:
                oy, ox, flipped = decode_crop(sample)
                offsets_y[oy] += 1
                offsets_x[ox] += 1
                flips += flipped
    draws = count * epochs
    expected = draws / 9
    critical = 26.12  # chi-square, 8 degrees of freedom, p = 0.001
    for counts in (offsets_y, offsets_x):
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        assert chi_square < critical, f"offsets not uniform: {counts.tolist()}"
    assert abs(flips - draws / 2) < 4 * math.sqrt(draws / 4)


def test_each_epoch_is_a_permutation_that_changes_with_the_epoch():
    images = coordinate_images(10)
    labels = torch.arange(10)
    batches = TrainBatches(images, labels, 3, augment=None, device="cpu", drop_last=False, seed=0, **RAW)
    assert len(batches) == 4
    first = torch.cat([y for _, y in batches])
    second = torch.cat([y for _, y in batches])
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)
    dropping = TrainBatches(images, labels, 3, augment=None, device="cpu", seed=0, **RAW)
    assert len(dropping) == 3
    assert len(torch.cat([y for _, y in dropping]).unique()) == 9


def collect(batches: TrainBatches, epochs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(epochs):
        out.extend(batches)
    return out


@pytest.mark.parametrize("augment", ["cifar", "folder", None])
def test_same_seed_gives_the_same_batches(augment):
    images, labels = random_images(100)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = TrainBatches(
            images, labels, 16, augment=augment, device="cpu", seed=seed, mean=(0.5,) * 3, std=(0.25,) * 3
        )
        return collect(batches, 2)

    a, b, c = run(3), run(3), run(4)
    assert len(a) == 12
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def take(batches: TrainBatches, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next `count` batches, walking through epochs and stopping mid-epoch like an interrupted run."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < count:
        for batch in batches:
            out.append(batch)
            if len(out) == count:
                break
    return out


@pytest.mark.parametrize("augment", ["cifar", "folder"])
@pytest.mark.parametrize(
    ("stop_after", "state"),
    [(0, (0, 0)), (4, (0, 4)), (6, (0, 6)), (7, (1, 1)), (11, (1, 5))],
)
def test_resume_from_state_dict_continues_with_identical_batches(augment, stop_after, state):
    images, labels = random_images(100)
    options = dict(augment=augment, device="cpu", seed=11, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    uninterrupted = take(TrainBatches(images, labels, 16, **options), 18)

    interrupted = TrainBatches(images, labels, 16, **options)
    take(interrupted, stop_after)
    saved = interrupted.state_dict()
    assert saved == {"epoch": state[0], "position": state[1], "seed": 11}

    resumed = TrainBatches(images, labels, 16, **{**options, "seed": 999})
    resumed.load_state_dict(saved)
    rest = take(resumed, 18 - stop_after)
    expected = uninterrupted[stop_after:]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(rest, expected, strict=True))
    assert resumed.state_dict() == {"epoch": 2, "position": 6, "seed": 11}


def test_set_epoch_and_single_batches_match_iteration():
    images, labels = random_images(64)
    batches = TrainBatches(images, labels, 16, augment="cifar", device="cpu", seed=2, **RAW)
    batches.set_epoch(5)
    epoch_five = list(batches)
    assert batches.epoch == 5 and batches.position == 4
    again = batches.batch(5, 2)
    assert torch.equal(again[0], epoch_five[2][0]) and torch.equal(again[1], epoch_five[2][1])
    batches.set_epoch(5)
    assert batches.position == 4, "set_epoch on the current epoch keeps the position (resume)"
    assert batches.epoch == 5
    next(iter(batches))
    assert batches.epoch == 6 and batches.position == 1
    batches.set_epoch(2)
    assert batches.state_dict() == {"epoch": 2, "position": 0, "seed": 2}


def test_bad_state_and_too_small_datasets_are_refused():
    images, labels = random_images(40)
    batches = TrainBatches(images, labels, 16, augment="cifar", device="cpu", **RAW)
    with pytest.raises(ValueError, match="does not fit 2 batches"):
        batches.load_state_dict({"epoch": 0, "position": 3, "seed": 0})
    with pytest.raises(ValueError, match="lacks position"):
        batches.load_state_dict({"epoch": 0, "seed": 0})
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        TrainBatches(images, labels, 64, augment="cifar", device="cpu", **RAW)
    with pytest.raises(ValueError, match="augment must be"):
        TrainBatches(images, labels, 8, augment="imagenet", device="cpu", **RAW)


def test_normalisation_and_channels_last():
    images, labels = random_images(200, size=16)
    mean = tuple((images.float() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((images.float() / 255).std(dim=(0, 2, 3)).tolist())
    out = torch.cat([x for x, _ in eval_batches(images, labels, 64, mean=mean, std=std, device="cpu")])
    assert out.dtype == torch.float32 and out.shape == (200, 3, 16, 16)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (out.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    expected = (images[5].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(out[5], expected, atol=1e-5)
    sizes = [len(y) for _, y in eval_batches(images, labels, 64, mean=mean, std=std, device="cpu")]
    assert sizes == [64, 64, 64, 8]

    batch, _ = next(iter(eval_batches(images, labels, 8, mean=mean, std=std, device="cpu", channels_last=True)))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    trained = TrainBatches(images, labels, 8, augment="folder", mean=mean, std=std, device="cpu", channels_last=True)
    assert next(iter(trained))[0].is_contiguous(memory_format=torch.channels_last)


def test_random_resized_crop_boxes_follow_torchvision_ranges():
    width, height, centre_x, centre_y = sample_resized_crops(20000, 64, 64, torch.Generator().manual_seed(0))
    assert torch.all(width <= 1) and torch.all(height <= 1)
    assert torch.all(centre_x - width / 2 >= -1e-6) and torch.all(centre_x + width / 2 <= 1 + 1e-6)
    assert torch.all(centre_y - height / 2 >= -1e-6) and torch.all(centre_y + height / 2 <= 1 + 1e-6)
    area, ratio = width * height, width / height
    assert area.min() >= CROP_SCALE[0] - 1e-6 and area.max() <= CROP_SCALE[1] + 1e-6
    assert ratio.min() >= CROP_RATIO[0] - 1e-4 and ratio.max() <= CROP_RATIO[1] + 1e-4
    assert 0.4 < area.mean() < 0.6


def test_folder_crops_sample_inside_the_image_and_flip_horizontally():
    count, size = 300, 32
    images = coordinate_images(count, size)
    batches = TrainBatches(
        images, torch.zeros(count, dtype=torch.long), 100, augment="folder", device="cpu", seed=3, **RAW
    )
    flips = 0
    for out, _ in batches:
        assert out.shape == (100, 3, size, size)
        rows, cols = out[:, 0], out[:, 1]
        assert rows.min() >= 1 - 1e-3 and rows.max() <= size + 1e-3
        assert cols.min() >= 1 - 1e-3 and cols.max() <= size + 1e-3
        assert torch.allclose(out[:, 2], torch.tensor(255.0), atol=1e-2), "crops sample inside the image only"
        row_steps = rows.diff(dim=1)
        assert torch.all(row_steps >= -1e-3), "rows keep their order: no vertical flip"
        assert torch.allclose(rows.diff(dim=2), torch.zeros(()), atol=1e-3), "rows do not change along a row"
        col_steps = cols.diff(dim=2)
        mirrored = col_steps.sum(dim=(1, 2)) < 0
        assert torch.all(torch.where(mirrored.view(-1, 1, 1), col_steps <= 1e-3, col_steps >= -1e-3))
        flips += int(mirrored.sum())
    assert 100 < flips < 200
