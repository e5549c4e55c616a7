"""The GPU check script must not first fail on the day a GPU is lent: smoke-run it on CPU."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_speed


def test_mnist_sized_shifts_real_digits_and_keeps_labels() -> None:
    data = gpu_speed.mnist_sized(300)
    assert data.train_x.shape == (300, 1, 28, 28) and data.train_y.shape == (300,)
    assert data.train_x.dtype == torch.uint8 and int(data.train_x.float().mean()) > 10
    assert len(data.train_y.unique()) == 10


def test_gpu_check_runs_end_to_end_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--images", "640", "--epochs", "1", "--gan-steps", "1"]
    assert gpu_speed.main([*argv, "--gan-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "book_cnn fast (batch 128, no flags), 640 images" in out and "images/s" in out
    assert "book_cnn fast (batch 128, amp + channels_last), 640 images" in out
    assert "book_conv_gan book (batch 1, no flags)" in out and "GPU memory" not in out  # no host


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_says_it_needs_cuda() -> None:
    assert gpu_speed.main([]) == 2
