#!/venv/bin/python3
"""CI stand-ins for `minio` and `mc` (installed under both names; argv[0] picks one).

minio server DIR [--address HOST:PORT] [--console-address ...] [--certs-dir ...]
    Runs SeaweedFS (`weed server`) with S3 on --address (default :9000), data under DIR and
    MINIO_ROOT_USER / MINIO_ROOT_PASSWORD as the S3 credentials. The console is not served, and
    there is no TLS.
mc alias set NAME URL ACCESS_KEY SECRET_KEY | mc mb [--ignore-existing] NAME/BUCKET |
mc ready NAME
    The three `mc` commands trainyard's compose file and healthchecks use, on the minio SDK;
    aliases live in $MC_CONFIG_DIR (default ~/.mc)/config.json as with the real mc. The alias
    `local` is http://127.0.0.1:9000 with the MINIO_ROOT_* credentials unless it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio


def minio_server(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="minio")
    parser.add_argument("command", choices=["server"])
    parser.add_argument("dir")
    parser.add_argument("--address", default=":9000")
    parser.add_argument("--console-address", default=":9001")
    parser.add_argument("--certs-dir")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    data = Path(args.dir)
    identities = {
        "identities": [
            {
                "name": "root",
                "credentials": [
                    {
                        "accessKey": os.environ["MINIO_ROOT_USER"],
                        "secretKey": os.environ["MINIO_ROOT_PASSWORD"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data / ".standin-s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    os.execvp(
        "weed",
        [
            "weed",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",  # how the components (all in this container) reach each other
            f"-ip.bind={host or '0.0.0.0'}",
            "-s3",
            f"-s3.port={port}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
        ],
    )


def _config_file() -> Path:
    folder = os.environ.get("MC_CONFIG_DIR") or str(Path.home() / ".mc")
    return Path(folder) / "config.json"


def _aliases() -> dict[str, dict[str, str]]:
    path = _config_file()
    aliases: dict[str, dict[str, str]] = {
        "local": {
            "url": "http://127.0.0.1:9000",
            "accessKey": os.environ.get("MINIO_ROOT_USER", ""),
            "secretKey": os.environ.get("MINIO_ROOT_PASSWORD", ""),
        }
    }
    if path.exists():
        aliases.update(json.loads(path.read_text())["aliases"])
    return aliases


def _client(alias: str) -> Minio:
    entry = _aliases()[alias]
    url = urlsplit(entry["url"])
    return Minio(
        url.netloc,
        access_key=entry["accessKey"],
        secret_key=entry["secretKey"],
        secure=url.scheme == "https",
    )


def mc(argv: list[str]) -> int:
    if argv[:2] == ["alias", "set"] and len(argv) == 6:
        name, url, access, secret = argv[2:]
        aliases = _aliases()
        aliases[name] = {"url": url, "accessKey": access, "secretKey": secret}
        path = _config_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": "10", "aliases": aliases}))
        path.chmod(0o600)
        print(f"Added `{name}` successfully.")
        return 0
    if argv[:1] == ["mb"]:
        rest = [a for a in argv[1:] if a not in ("--ignore-existing", "-p")]
        alias, _, bucket = rest[0].partition("/")
        # S3 can refuse while SeaweedFS's filer is still starting: retry for a minute.
        deadline = time.monotonic() + 60
        while True:
            try:
                client = _client(alias)
                if client.bucket_exists(bucket):
                    if "--ignore-existing" not in argv:
                        print(f"mc: bucket {bucket} exists", file=sys.stderr)
                        return 1
                else:
                    client.make_bucket(bucket)
                print(f"Bucket created successfully `{alias}/{bucket}`.")
                return 0
            except Exception as exc:
                if time.monotonic() > deadline:
                    print(f"mc: {exc}", file=sys.stderr)
                    return 1
                time.sleep(1)
    if argv[:1] == ["ready"] and len(argv) == 2:
        try:
            _client(argv[1]).list_buckets()  # a signed round trip through the filer
        except Exception as exc:
            print(f"mc: not ready: {exc}", file=sys.stderr)
            return 1
        print(f"The cluster '{argv[1]}' is ready")
        return 0
    print(f"mc stand-in: unsupported command {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    if Path(sys.argv[0]).name == "minio":
        minio_server(sys.argv[1:])
    sys.exit(mc(sys.argv[1:]))
