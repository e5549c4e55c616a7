"""Make docs/dashboard-job.png, the README's picture of the dashboard: a fresh local stack
trains a GAN long enough for digits to appear, and Debian's chromium photographs its page.

    .venv/bin/python -m tests.e2e.docs_screenshot [--steps 600]

Several minutes on a CPU. The browser tests make the same picture of a shorter job under
test-output/e2e/dashboard-job.png on every run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from devstack.stack import Stack, StackConfig
from shared.status import JobStatus
from tests.e2e.browser import (
    REPO,
    VIEWPORT,
    launch,
    open_job,
    save_small_png,
    sign_in,
    wait_for_image,
)
from trainyard.client import Client

OUT = REPO / "docs" / "dashboard-job.png"
MAX_BYTES = 150_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps of the GAN")
    args = parser.parse_args()
    spec = {
        "task": "gan",
        "model": "conv_gan",
        "name": "README picture",
        "max_steps": args.steps,
        "sample_every": max(1, args.steps // 6),
        "log_every": max(1, args.steps // 60),
    }
    with tempfile.TemporaryDirectory(prefix="trainyard-docs-") as root:
        stack = Stack(StackConfig.fresh(Path(root), preferred=False))
        try:
            stack.up()
            with Client(stack.config.api_url, stack.config.api_token) as client:
                job = client.wait(client.submit(spec).id, timeout=3600, poll=1)
            if job.status is not JobStatus.SUCCEEDED:
                raise SystemExit(f"the job ended {job.status}: {job.error}")
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport=VIEWPORT)
                sign_in(page, stack.config.api_url, stack.config.api_token)
                open_job(page, job.id)
                wait_for_image(page.locator("#sample-img"), args.steps)
                expect(page.locator("#memory-card")).to_contain_text("from memory.json")
                size = save_small_png(page, OUT)
                browser.close()
        finally:
            stack.down()
    print(f"wrote {OUT.relative_to(REPO)} ({size:,} bytes)")
    if size > MAX_BYTES:
        raise SystemExit(f"{OUT} is over {MAX_BYTES:,} bytes: use fewer colours")


if __name__ == "__main__":
    main()
