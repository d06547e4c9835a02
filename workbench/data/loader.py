"""Device-side batches: the whole dataset stays resident as uint8 on the training device.

Shuffling, augmentation and normalisation are batched tensor ops on that device (no PIL, no
per-sample Python). All randomness comes from CPU generators seeded from (seed, epoch) for the
permutation and (seed, epoch, batch index) for augmentation, so any batch can be reproduced on its
own: a run resumed from `state_dict()` gets exactly the batches an uninterrupted run would have had,
on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from workbench.errors import DataError

Augment = Literal["cifar", "folder"] | None

CIFAR_PAD = 4
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (seed, epoch, batch, stream)."""
    entropy = [part % 2**64 for part in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)


class Normalizer:
    """Turns uint8-range images into float32 (x / 255 - mean) / std on one device, optionally channels_last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive in every channel; got {std_t.flatten().tolist()}")
        self.scale = (1.0 / (255.0 * std_t)).to(device)
        self.shift = (-mean_t / std_t).to(device)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise uint8 images into a new float32 tensor; float32 input (our own scratch) is normalised in place."""
        out = images if images.dtype == torch.float32 else images.to(torch.float32)
        out = out.mul_(self.scale).add_(self.shift)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


class CropAndFlip:
    """Zero-pad by `pad`, crop back to height x width at offsets 0..2*pad, mirror horizontally where asked.

    Each of the (2*pad+1)^2 * 2 possible (offset_y, offset_x, flip) outcomes is one precomputed row of
    source-pixel indices and a validity mask, so a batch costs two small table lookups, one gather
    and one masking multiply, on any device and dtype.
    """

    def __init__(self, height: int, width: int, pad: int, device: torch.device) -> None:
        self.height, self.width, self.pad = height, width, pad
        span = 2 * pad + 1
        offsets = torch.arange(span)
        rows = offsets.view(-1, 1) - pad + torch.arange(height)
        cols = offsets.view(-1, 1) - pad + torch.arange(width)
        cols = torch.stack([cols, cols.flip(1)], dim=1)
        row_ok = (rows >= 0) & (rows < height)
        col_ok = (cols >= 0) & (cols < width)
        source_rows = rows.clamp(0, height - 1).view(span, 1, 1, height, 1)
        source_cols = cols.clamp(0, width - 1).view(1, span, 2, 1, width)
        pixel = source_rows * width + source_cols
        valid = row_ok.view(span, 1, 1, height, 1) & col_ok.view(1, span, 2, 1, width)
        self.source = pixel.reshape(span * span * 2, height * width).to(device)
        self.valid = valid.reshape(span * span * 2, height * width).to(device, torch.uint8)

    def __call__(
        self, images: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        batch, channels = images.shape[:2]
        code = (offset_y * (2 * self.pad + 1) + offset_x) * 2 + flip.long()
        source = self.source.index_select(0, code).view(batch, 1, -1).expand(batch, channels, -1)
        out = images.reshape(batch, channels, -1).gather(2, source)
        out *= self.valid.index_select(0, code).view(batch, 1, -1).to(images.dtype)
        return out.view(batch, channels, self.height, self.width)


def sample_resized_crops(
    batch: int, height: int, width: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random-resized-crop boxes as fractions of the image (width, height, centre x, centre y), like torchvision's.

    Area in CROP_SCALE and aspect ratio in CROP_RATIO (log-uniform); of CROP_TRIES candidates the first
    that fits is used, else the whole image.
    """
    area = torch.empty(batch, CROP_TRIES).uniform_(*CROP_SCALE, generator=generator) * (height * width)
    log_ratio = torch.empty(batch, CROP_TRIES).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator
    )
    ratio = log_ratio.exp()
    crop_w = (area * ratio).sqrt() / width
    crop_h = (area / ratio).sqrt() / height
    fits = (crop_w <= 1) & (crop_h <= 1)
    first = fits.int().argmax(dim=1, keepdim=True)
    any_fits = fits.any(dim=1)
    crop_w = torch.where(any_fits, crop_w.gather(1, first).squeeze(1), torch.ones(batch))
    crop_h = torch.where(any_fits, crop_h.gather(1, first).squeeze(1), torch.ones(batch))
    centre_x = crop_w / 2 + torch.rand(batch, generator=generator) * (1 - crop_w)
    centre_y = crop_h / 2 + torch.rand(batch, generator=generator) * (1 - crop_h)
    return crop_w, crop_h, centre_x, centre_y


def resized_crop_and_flip(
    images: torch.Tensor,
    crop_w: torch.Tensor,
    crop_h: torch.Tensor,
    centre_x: torch.Tensor,
    centre_y: torch.Tensor,
    flip: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Crop each box (fractions of the image), resize it to size x size bilinearly and mirror where `flip`.

    One affine grid + grid_sample for the whole batch; returns float32 in the 0..255 range.
    """
    batch = images.shape[0]
    sign = 1.0 - 2.0 * flip.float()
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = crop_w * sign
    theta[:, 0, 2] = 2 * centre_x - 1
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = 2 * centre_y - 1
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class TrainBatches:
    """Shuffled, augmented, normalised training batches from a dataset held on `device` as uint8.

    Iterating yields (float images, int64 labels) for the rest of the current epoch; when the epoch is
    already complete it first moves on to the next one, so plain repeated `for` loops walk through
    epochs. `state_dict()` records the next batch to produce ({epoch, position, seed}; position ==
    len(self) means the epoch is complete), and `load_state_dict` continues from there exactly.

    With `shard=(rank, ranks)` (data-parallel training) each batch is rank's contiguous share of the global
    batch of `batch_size` images, with the augmentation one process would have drawn for those images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        augment: Augment,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        channels_last: bool = False,
        seed: int = 0,
        drop_last: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if augment not in ("cifar", "folder", None):
            raise ValueError(f"augment must be 'cifar', 'folder' or None; got {augment!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard is (rank, ranks) with 0 <= rank < ranks; got {shard}")
        if images.shape[0] == 0 or (drop_last and images.shape[0] < batch_size):
            raise DataError(
                f"the training set has {images.shape[0]} images, fewer than one batch of {batch_size}; "
                "use a smaller batch size or more data"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.ranks = shard
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self._crop = (
            CropAndFlip(images.shape[2], images.shape[3], CIFAR_PAD, self.device) if augment == "cifar" else None
        )
        self._epoch = 0
        self._position = 0

    def __len__(self) -> int:
        count = self.images.shape[0]
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (or that was just completed, when position == len)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Index within the epoch of the next batch to produce."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch; a no-op when it is already the current epoch (resume)."""
        if epoch < 0:
            raise ValueError(f"epoch cannot be negative; got {epoch}")
        if epoch != self._epoch:
            self._epoch = epoch
            self._position = 0

    def state_dict(self) -> dict[str, int]:
        """Where the batches stand: the next batch is batch `position` of epoch `epoch`, drawn with `seed`."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()`; the next batch is exactly the one an uninterrupted run would get."""
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ValueError(f"batch state lacks {', '.join(sorted(missing))}; got {sorted(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(
                f"batch state epoch {epoch}, position {position} does not fit {len(self)} batches per epoch"
            )
        self._epoch, self._position, self.seed = epoch, position, int(state["seed"])

    def permutation(self, epoch: int) -> torch.Tensor:
        """The image order of one epoch (CPU), fixed by (seed, epoch)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _PERMUTATION_STREAM))
        return torch.randperm(self.images.shape[0], generator=generator)

    def batch(self, epoch: int, index: int, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of epoch `epoch`, computed from scratch (pass the epoch's order to skip recomputing it)."""
        if order is None:
            order = self.permutation(epoch).to(self.device)
        picked = order[index * self.batch_size : (index + 1) * self.batch_size]
        count = picked.shape[0]
        # Augmentation is drawn for the whole global batch, then cut like the images.
        mine = slice(self.rank * count // self.ranks, (self.rank + 1) * count // self.ranks)
        picked = picked[mine]
        images = self.images.index_select(0, picked)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index, _AUGMENT_STREAM))
        _, _, height, width = images.shape
        if self.augment == "cifar":
            offsets = torch.randint(0, 2 * CIFAR_PAD + 1, (2, count), generator=generator)[:, mine]
            flip = (torch.rand(count, generator=generator) < 0.5)[mine]
            offsets, flip = offsets.to(self.device), flip.to(self.device)
            images = self._crop(images, offsets[0], offsets[1], flip)
        elif self.augment == "folder":
            boxes = [b[mine].to(self.device) for b in sample_resized_crops(count, height, width, generator)]
            flip = (torch.rand(count, generator=generator) < 0.5)[mine]
            images = resized_crop_and_flip(images, *boxes, flip.to(self.device), size=height)
        return self.normalize(images), self.labels.index_select(0, picked)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._position >= len(self):
            self._epoch += 1
            self._position = 0
        epoch = self._epoch
        order = self.permutation(epoch).to(self.device)
        while self._position < len(self) and self._epoch == epoch:
            index = self._position
            batch = self.batch(epoch, index, order)
            self._position = index + 1
            yield batch


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (images, labels) batches in order, without augmentation; the last batch may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8; got {images.dtype}")
    device = torch.device(device)
    normalize = Normalizer(mean, std, device, channels_last)
    for start in range(0, images.shape[0], batch_size):
        batch_images = images[start : start + batch_size].to(device, non_blocking=True)
        yield normalize(batch_images), labels[start : start + batch_size].to(device, torch.int64)
