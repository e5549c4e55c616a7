"""The memory planner against a real GPU: for each zoo model and three batch sizes, the
predicted peak step memory (from the CPU probe, CUDA-rounded) vs the peak the CUDA caching
allocator reports for the same first training step. Needs CUDA; goal: within ±5%.

    python -m bench.gpu_memory_check
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import torch

from shared.planning import predict
from shared.schemas import JobSpecAdapter
from workers.trainer.memory import tensor_bytes
from workers.trainer.probe import _synthetic, probe
from workers.trainer.recipes import make_recipe

CASES: list[tuple[dict[str, Any], tuple[int, int, int], tuple[int, ...]]] = [
    ({"task": "classifier", "model": "book_cnn"}, (1, 28, 28), (1, 64, 512)),
    ({"task": "classifier", "model": "book_mlp"}, (1, 28, 28), (1, 64, 512)),
    ({"task": "gan", "model": "conv_gan"}, (1, 28, 28), (1, 64, 512)),
    ({"task": "cgan", "model": "conv_cgan"}, (1, 28, 28), (1, 64, 512)),
    ({"task": "cgan", "model": "book_cgan"}, (1, 28, 28), (1, 64, 512)),
    ({"task": "gan", "model": "book_conv_gan", "resize": 128}, (3, 128, 128), (1, 16, 64)),
    ({"task": "gan", "model": "book_mlp_gan", "resize": [218, 178]}, (3, 218, 178), (1, 16, 64)),
]


def measured_on_cuda(body: dict[str, Any], image: tuple[int, int, int], batch: int) -> int:
    device = torch.device("cuda")
    torch.manual_seed(0)
    spec = JobSpecAdapter.validate_python({**body, "batch_size": batch})
    data = _synthetic(image, 10, batch).to(device)
    recipe = make_recipe(spec, data, device)
    state = tensor_bytes(recipe.state_dict().values())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    recipe.train_step(data.train_x, recipe.train_labels)
    torch.cuda.synchronize()
    peak = state + torch.cuda.max_memory_allocated() - before
    del recipe, data
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (the CPU check is tests/unit/test_planning)")
        return 2
    print(
        f"{torch.cuda.get_device_name()}: predicted (CPU probe, 512-byte blocks) vs "
        "torch.cuda.max_memory_allocated() over one training step\n"
    )
    print(f"{'model':<15}{'batch':>6}{'predicted MiB':>15}{'measured MiB':>14}{'error':>9}")
    worst = 0.0
    for body, image, batches in CASES:
        result = probe(JobSpecAdapter.validate_python(body), image, 10)
        for batch in batches:
            predicted = predict(result, batch)[1]
            measured = measured_on_cuda(body, image, batch)
            error = (predicted - measured) / measured
            worst = max(worst, abs(error))
            print(
                f"{body['model']:<15}{batch:>6}{predicted / 2**20:>15.1f}"
                f"{measured / 2**20:>14.1f}{error:>+9.1%}"
            )
    print(f"\nworst |error| {worst:.1%} (goal 5%)")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
