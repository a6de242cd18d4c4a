"""LeNet (LeCun et al. 1998), the optimizee of the paper's digit classification (Sec. IV.A.1, Fig. 2 bottom).

Two convolution + max-pool stages and three fully connected layers (120, 84, classes). For MNIST's
28x28 images it is LeNet-5 as usually written for PyTorch: 5x5 kernels, the first padded by 2, so the
feature maps are 28 -> 14 -> 10 -> 5 and the first linear layer reads 16 * 5 * 5 = 400 features.

scikit-learn's bundled digits are 8x8: a 5x5 kernel would leave nothing after two pools, so the
adapted LeNet keeps the layer sequence and widths but uses 3x3 kernels padded by 1 (8 -> 4 -> 2) and
reads 16 * 2 * 2 = 64 features. Any other square size of at least 8 pixels uses the 3x3 form.
"""

from __future__ import annotations

import torch
from torch import nn


def lenet_kernel(image_size: int) -> tuple[int, int, int]:
    """(kernel size, first padding, second padding) of the LeNet for ``image_size`` x ``image_size`` images."""
    if image_size == 28:
        return 5, 2, 0  # LeNet-5 on MNIST
    return 3, 1, 1


class LeNet(nn.Module):
    """LeNet for ``(batch, 1, H, H)`` or ``(batch, H, H)`` images; returns ``(batch, n_classes)`` logits.

    :param image_size: H, the side of the square input images (28 for MNIST, 8 for scikit-learn's digits).
    :param n_classes: number of output logits (2 for the paper's binary tasks).
    """

    def __init__(self, image_size: int = 28, n_classes: int = 2) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"LeNet needs images of at least 8x8 pixels, got image_size={image_size}.")
        if n_classes < 2:
            raise ValueError(f"LeNet needs at least 2 classes, got {n_classes}.")
        self.image_size = int(image_size)
        self.n_classes = int(n_classes)
        kernel, pad1, pad2 = lenet_kernel(self.image_size)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = (self.image_size + 2 * pad1 - kernel + 1) // 2
        side = (side + 2 * pad2 - kernel + 1) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} leaves no feature map after LeNet's two pools.")
        self.n_features = 16 * side * side
        self.classifier = nn.Sequential(
            nn.Linear(self.n_features, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, self.n_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(1)  # (batch, H, W) -> (batch, 1, H, W)
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, self.image_size, self.image_size):
            raise ValueError(
                f"LeNet(image_size={self.image_size}) expects images of shape (batch, 1, {self.image_size}, "
                f"{self.image_size}) or (batch, {self.image_size}, {self.image_size}), got {tuple(images.shape)}."
            )
        return self.classifier(self.features(images).flatten(1))


__all__ = ["LeNet", "lenet_kernel"]
