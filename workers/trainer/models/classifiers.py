"""MNIST classifiers from BOOK.md §2."""

from __future__ import annotations

from torch import Tensor, nn


class BookCNN(nn.Module):
    """The book's convolutional classifier: 3,720 parameters, Sigmoid outputs for BCELoss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5, stride=2),  # (N, 10, 12, 12)
            nn.LeakyReLU(0.02),
            nn.BatchNorm2d(10),
            nn.Conv2d(10, 10, kernel_size=3, stride=2),  # (N, 10, 5, 5)
            nn.LeakyReLU(0.02),
            nn.BatchNorm2d(10),
            nn.Flatten(),  # (N, 250)
            nn.Linear(250, 10),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.view(-1, 1, 28, 28))  # (N, 10) class scores in (0, 1)
