"""MNIST classifiers from Make Your First GAN With PyTorch (Tariq Rashid), ch. 3, §3.1.6
(docs/book.md). Both end in Sigmoid: the book trains them with BCELoss against one-hot targets."""

from __future__ import annotations

from torch import Tensor, nn


class BookCNN(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1.6, the MNIST CNN: 3,720 parameters.

    (N, 1, 28, 28) or (N, 784) pixels in [0, 1] -> (N, 10) class scores in (0, 1)."""

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


class BookMLP(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1.6, the fully-connected baseline: 159,410
    parameters.

    (N, 1, 28, 28) or (N, 784) pixels in [0, 1] -> (N, 10) class scores in (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, 200),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(200),
            nn.Linear(200, 10),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, 784))  # (N, 10)
