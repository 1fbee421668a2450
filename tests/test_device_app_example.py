"""The example device app's own unit tests (examples/device_app/tests), collected here so
the repository's test run covers them too."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "device_app"
for path in (EXAMPLE / "src", EXAMPLE / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# (Imported after the paths above; every name is a test or a fixture for pytest.)
from test_pump_controller import *  # noqa: E402, F403
