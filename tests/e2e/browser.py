"""Helpers for the dashboard's browser tests: Debian's chromium under Playwright, screenshots,
and reading what the page shows (pixels and bytes of an <img>)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, Playwright, ViewportSize, expect

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright never downloads a browser
SHOTS = REPO / "test-output" / "e2e"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT: ViewportSize = {"width": 1200, "height": 800}
UI_TIMEOUT_MS = 15_000  # a page reaction: a fetch and a render on a loaded machine
JOB_TIMEOUT_MS = 150_000  # a small training job on a shared 2-core CPU


def launch(playwright: Playwright) -> Browser:
    """Debian's chromium, headless, with a fresh temporary profile (Playwright's default)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def shot(page: Page, name: str, full_page: bool = True) -> Path:
    """A screenshot under test-output/e2e/ (git-ignored), one per stage of a test."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def save_small_png(page: Page, path: Path, colors: int = 128) -> int:
    """The viewport as a palette PNG (UI colours and grey digits survive 128 colours), for
    the README; returns its size in bytes."""
    from PIL import Image  # a core dependency; imported here, where it is needed

    raw = shot(page, path.stem + "-raw", full_page=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(raw) as image:
        small = image.convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
    return path.stat().st_size


def sign_in(page: Page, base_url: str, token: str) -> None:
    """Through the form, as a person would: the job list shows afterwards."""
    page.goto(base_url + "/")
    page.locator("#token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible(timeout=UI_TIMEOUT_MS)


def open_job(page: Page, job_id: str) -> None:
    page.goto(f"{page.url.split('#')[0]}#/jobs/{job_id}")
    expect(page.locator("#job-id")).to_have_text(job_id, timeout=UI_TIMEOUT_MS)


def wait_for_image(img: Locator, step: int) -> None:
    """Until `img` shows the grid of `step` and the browser has decoded it."""
    expect(img).to_have_attribute("data-step", str(step), timeout=UI_TIMEOUT_MS)
    img.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=10_000
    )


# Hashes, in the page, of what an <img> shows: its decoded pixels (drawn on a canvas) and the
# bytes behind its blob: URL. 127.0.0.1 is a secure context, so crypto.subtle is there.
_IMAGE_DIGESTS = """async (img) => {
  const hex = (buffer) => [...new Uint8Array(buffer)]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const bytes = await (await fetch(img.src)).arrayBuffer();
  return {
    src: img.src,
    width: img.naturalWidth,
    height: img.naturalHeight,
    pixels: hex(await crypto.subtle.digest("SHA-256", pixels)),
    bytes: hex(await crypto.subtle.digest("SHA-256", bytes)),
  };
}"""


def image_digests(img: Locator) -> dict[str, Any]:
    result: dict[str, Any] = img.evaluate(_IMAGE_DIGESTS)
    return result


# Records, on every DOM change, the step, status and chart points the job page shows: proof
# that the page changed while the job ran, without sampling it with sleeps.
RECORDER = """() => {
  window.__seen = [];
  const record = () => {
    const step = document.querySelector("#job-step");
    if (!step || step.dataset.step === undefined) return;
    const chart = document.querySelector("#charts .chart");
    const entry = {
      job: document.querySelector("#job-id")?.textContent || "",
      step: Number(step.dataset.step),
      status: document.querySelector("#job-status")?.textContent || "",
      points: chart ? Number(chart.dataset.points) : 0,
    };
    const last = window.__seen[window.__seen.length - 1];
    if (!last || ["job", "step", "status", "points"].some((k) => last[k] !== entry[k])) {
      window.__seen.push(entry);
    }
  };
  new MutationObserver(record).observe(document.body,
    { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def seen(page: Page) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = page.evaluate("() => window.__seen")
    return entries


def job_id_from_url(page: Page) -> str:
    match = re.search(r"#/jobs/([^/?]+)", page.url)
    assert match, f"not on a job page: {page.url}"
    return match.group(1)
