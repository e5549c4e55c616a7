"""The baseline every benchmark compares against: the loop a person would write by hand for
book_cnn on mnist-5k (tensors preloaded, Adam, BCELoss on one-hot targets), no pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workers.trainer.data import Batches, load_dataset
from workers.trainer.models import build_model


@dataclass
class BareResult:
    total_s: float  # model built, trained, evaluated on the test split
    images_per_s: float  # training throughput from the second step (fit() profiles its first)
    test_accuracy: float


def bare_loop(steps: int, batch: int, lr: float = 1e-2, seed: int = 0) -> BareResult:
    data = load_dataset("mnist-5k")  # cached in this process, as in a warm worker
    x_all, y_all = data.train_x.float().div_(255), data.train_y
    began = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model("book_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCELoss()
    batches = Batches(x_all, y_all, batch, seed=seed)
    done, epoch, started = 0, 0, began
    while done < steps:
        for x, y in batches.epoch(epoch):
            loss = loss_fn(model(x), F.one_hot(y, 10).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == 1:
                started = time.perf_counter()
            if done == steps:
                break
        epoch += 1
    loss.item()
    trained = time.perf_counter()
    with torch.no_grad():
        predicted = model(data.test_x.float().div_(255)).argmax(1)
    accuracy = (predicted == data.test_y).float().mean().item()
    return BareResult(
        total_s=time.perf_counter() - began,
        images_per_s=(steps - 1) * batch / max(trained - started, 1e-9),
        test_accuracy=accuracy,
    )
