"""The reference the benches compare against: torchvision's CIFAR pipeline through a DataLoader."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms


class PilCifar(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 class does per item: a PIL image from an HWC uint8 array, then transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def textbook_loader(data, batch_size: int, workers: int) -> DataLoader:
    """RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize on PIL images, shuffled."""
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(data.info.mean, data.info.std),
    ])
    return DataLoader(PilCifar(data.train_images, data.train_labels, transform), batch_size=batch_size,
                      shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
