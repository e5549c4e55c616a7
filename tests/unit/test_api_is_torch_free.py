from __future__ import annotations

import subprocess
import sys


def test_api_and_shared_never_import_torch() -> None:
    code = (
        "import sys, services.api.main, trainyard.client, trainyard.cli, shared.state.jobs, "
        "shared.state.events, shared.storage, shared.broker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
