"""A throwaway local stack (real Redis, SeaweedFS S3, API, Celery workers) for benchmarks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.stack import Stack, StackConfig


@contextmanager
def local_stack(
    workers: int = 1, overrides: dict[str, str] | None = None, storage_only: bool = False
) -> Iterator[Stack]:
    """Up on free ports in a temporary folder (only Redis and S3 if `storage_only`); down and
    removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    stack = Stack(StackConfig.fresh(root, workers=workers, preferred=False, overrides=overrides))
    try:
        if storage_only:
            stack.start_storage()
        else:
            stack.up()
        yield stack
    except BaseException:
        print(stack.logs(40))  # what the servers said, before the folder goes
        raise
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
