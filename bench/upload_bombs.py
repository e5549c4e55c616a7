"""Upload bombs against a real API process: the API's RSS growth and the time to refuse each,
against an honest upload of about the same size as the baseline.

    python -m bench.upload_bombs [--repeat 3]

The bombs are issue 14's: a 3 MB gzip IDX file whose header and pixels expand to 3 GiB, and a
zip of 600 RGB PNGs of 1024x1024 (3 MB here; 1.8 GiB of pixels). The honest uploads are a
gzip IDX file of random pixels and a zip of small random PNGs of about the same compressed
sizes (accepted, 201). Goals: each bomb refused (413) in under 1 s with the API's RSS growing by
under 100 MiB. RSS growth is the API process's peak (VmHWM, reset before each request through
/proc/<pid>/clear_refs, or sampled every 5 ms where that is not allowed) minus its VmRSS
before the request."""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import struct
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.stack import local_stack

MIB = 2**20
RSS_GOAL_MIB, TIME_GOAL_S = 100, 1.0


def gzip_idx_bomb() -> bytes:
    """3 MB of gzip -> 3 GiB: a real IDX header for 3072 images of 1024x1024, then zeros.
    Built as 48 gzip members of 64 MiB each (a gzip file may hold several; readers join them),
    so one member is compressed once."""
    zeros = gzip.compress(bytes(64 * MIB), compresslevel=9)
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 3072, 1024, 1024)
    return gzip.compress(header) + zeros * 48


def honest_idx(size: int) -> bytes:
    """A gzip IDX file of random 28x28 images, about `size` bytes (random pixels do not
    compress)."""
    n = size // 784
    pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", n, 28, 28)
    return gzip.compress(header + pixels.tobytes(), compresslevel=1)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def big_images_zip() -> bytes:
    one = _png(Image.new("RGB", (1024, 1024), (10, 20, 30)))
    return _zip({f"class{i % 3}/{i}.png": one for i in range(600)})


def honest_zip(size: int) -> bytes:
    """A zip of random 32x32 RGB PNGs in 3 classes, about `size` bytes."""
    rng = np.random.default_rng(0)
    entries: dict[str, bytes] = {}
    total = 0
    while total < size:
        data = _png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        entries[f"class{len(entries) % 3}/{len(entries)}.png"] = data
        total += len(data)
    return _zip(entries)


def _status(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure(http: httpx.Client, pid: int, name: str, data: bytes) -> tuple[int, float, int]:
    """(status, seconds to the whole answer, RSS growth in bytes) for one upload."""
    before = _status(pid)["VmRSS"]
    exact = _reset_peak(pid)
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            sampled.append(_status(pid)["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    response = http.post("/v1/datasets", files=[("files", (name, data, "application/gzip"))])
    took = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = _status(pid)["VmHWM"] if exact else max(sampled)
    return response.status_code, took, max(peak, max(sampled)) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("building uploads...", flush=True)
    bomb_gz, bomb_zip = gzip_idx_bomb(), big_images_zip()
    cases = [
        ("gzip IDX bomb (3 GiB)", "train-images-idx3-ubyte.gz", bomb_gz, 413),
        ("honest gzip IDX", "train-images-idx3-ubyte.gz", honest_idx(len(bomb_gz)), 201),
        ("zip of 600 1024x1024 RGB PNGs", "big.zip", bomb_zip, 413),
        ("honest zip of small PNGs", "small.zip", honest_zip(len(bomb_zip)), 201),
    ]
    overrides = {"TRAINYARD_DATASETS_MAX_PER_OWNER": str(10**6)}
    with local_stack(workers=0, overrides=overrides) as stack:
        pid = stack.api.pid()
        assert pid is not None, "no pid for the API"
        headers = {"Authorization": f"Bearer {stack.config.api_token}"}
        with httpx.Client(base_url=stack.config.api_url, headers=headers, timeout=120) as http:
            measure(http, pid, *cases[1][1:3])  # warm-up: imports, first Redis/S3 calls
            print(f"API pid {pid}, RSS {_status(pid)['VmRSS'] / MIB:.0f} MiB after warm-up")
            print(f"{'upload':32} {'bytes':>10} {'status':>6} {'time s':>8} {'RSS +MiB':>9}")
            results: dict[str, tuple[float, float]] = {}
            for label, name, data, expected in cases:
                runs = [measure(http, pid, name, data) for _ in range(args.repeat)]
                statuses = {status for status, _, _ in runs}
                took = statistics.median(t for _, t, _ in runs)
                grew = max(g for _, _, g in runs) / MIB
                results[label] = (took, grew)
                flag = "" if statuses == {expected} else f"  (expected {expected})"
                print(
                    f"{label:32} {len(data):>10} {'/'.join(map(str, sorted(statuses))):>6} "
                    f"{took:>8.3f} {grew:>9.1f}{flag}"
                )
    print()
    for bomb, honest in ((cases[0][0], cases[1][0]), (cases[2][0], cases[3][0])):
        (took, grew), (base_took, _) = results[bomb], results[honest]
        ok = took < TIME_GOAL_S and grew < RSS_GOAL_MIB
        print(
            f"{bomb}: refused in {took:.3f} s (goal < {TIME_GOAL_S} s; {took / base_took:.2f}x "
            f"the honest upload), RSS +{grew:.1f} MiB (goal < {RSS_GOAL_MIB} MiB): "
            f"{'meets the goals' if ok else 'MISSES the goals'}"
        )


if __name__ == "__main__":
    main()
