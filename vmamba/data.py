"""An embedded image-classification dataset: scikit-learn's handwritten digits, upscaled to RGB images.

The 1,797 8x8 grey digits (0..9) ship inside the scikit-learn wheel, so ``tools/train.py`` can train and validate a
real backbone with no download. The images are upscaled bilinearly to ``image_size`` (default 32), repeated to 3
channels and normalised to [-1, 1] (mean = std = 0.5). The train/val split is fixed: a seeded permutation
(``numpy.random.RandomState(0)``) puts 1,438 images in ``train`` and 359 in ``val``.

Example::

    from vmamba.data import DigitsDataset
    train = DigitsDataset('train', image_size=32, max_shift=2)   # random translations for training
    image, label = train[0]                                      # (3, 32, 32) float32, int
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ['DigitsDataset', 'SyntheticImages', 'load_digits_split', 'DIGITS_MEAN', 'DIGITS_STD', 'DIGITS_NUM_CLASSES', 'DIGITS_SPLITS']

DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
DIGITS_NUM_CLASSES = 10
DIGITS_SPLITS = ('train', 'val')
_VAL_FRACTION = 0.2
_SPLIT_SEED = 0


def _import_sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            'the embedded digits dataset needs scikit-learn: pip install scikit-learn '
            '(or pip install -e ".[tools]")') from err
    return load_digits


@lru_cache(maxsize=8)
def _load_split_uint8(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 8, 8) float32 in [0, 16], labels (N,) int64) of one split, cached per process."""
    import numpy as np
    if split not in DIGITS_SPLITS:
        raise ValueError(f'digits split must be one of {DIGITS_SPLITS}, got {split!r}')
    digits = _import_sklearn_digits()()
    images = np.asarray(digits.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(digits.target, dtype=np.int64)
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))
    num_val = int(round(len(labels) * _VAL_FRACTION))
    index = order[num_val:] if split == 'train' else order[:num_val]
    index = np.sort(index)  # stable, readable order inside a split
    return torch.from_numpy(images[index]), torch.from_numpy(labels[index])


def load_digits_split(split: str, image_size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, image_size, image_size) float32 in [-1, 1] and labels (N,) int64 of ``split``."""
    if image_size < 8:
        raise ValueError(f'image_size must be >= 8 (the digits are 8x8), got {image_size}')
    images, labels = _load_split_uint8(split)
    images = images.unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode='bilinear', align_corners=False)
    images = (images.clamp(0, 1) - DIGITS_MEAN[0]) / DIGITS_STD[0]
    return images.expand(-1, 3, -1, -1).contiguous(), labels.clone()


class DigitsDataset(Dataset):
    """scikit-learn digits as a (3, image_size, image_size) image dataset with a fixed train/val split.

    Args:
        split: 'train' or 'val'.
        image_size: output height and width (bilinear upscaling of the 8x8 digits).
        max_shift: training augmentation: translate each image by a random integer offset in
            [-max_shift, max_shift] pixels per axis (background-filled). Draws from torch's global RNG, so runs are
            reproducible from ``torch.manual_seed`` (use ``num_workers=0`` or seeded workers).
    """
    num_classes = DIGITS_NUM_CLASSES
    classes = [str(i) for i in range(DIGITS_NUM_CLASSES)]

    def __init__(self, split: str = 'train', image_size: int = 32, max_shift: int = 0):
        self.split = split
        self.image_size = image_size
        if max_shift < 0:
            raise ValueError(f'max_shift must be >= 0, got {max_shift}')
        self.max_shift = max_shift
        self.images, self.labels = load_digits_split(split, image_size)
        self.targets = self.labels.tolist()
        self._background = -DIGITS_MEAN[0] / DIGITS_STD[0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.max_shift:
            s = self.max_shift
            dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
            padded = F.pad(image, (s, s, s, s), value=self._background)
            image = padded[:, s + dy:s + dy + self.image_size, s + dx:s + dx + self.image_size]
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(split={self.split!r}, images={len(self)}, image_size={self.image_size}, '
                f'max_shift={self.max_shift})')


class SyntheticImages(Dataset):
    """Random, already-normalised images with labels ``index % num_classes``, for throughput / scaling runs.

    A pool of ``pool_size`` fixed images (seeded) is reused, so loading costs nothing. Items: ((3, H, W) float, int).
    """

    def __init__(self, num_samples: int, image_size: int = 224, num_classes: int = 1000, pool_size: int = 64,
                 seed: int = 0):
        if num_samples < 1 or image_size < 1 or num_classes < 1:
            raise ValueError(f'SyntheticImages needs num_samples, image_size, num_classes >= 1, got '
                             f'{num_samples}, {image_size}, {num_classes}')
        self.num_samples, self.num_classes = num_samples, num_classes
        generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(min(pool_size, num_samples), 3, image_size, image_size, generator=generator)
        self.targets = [i % num_classes for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.pool[index % len(self.pool)], self.targets[index]
