"""Make ``pump_controller`` importable when these tests run from a fleetcloud checkout
(``uv run pytest examples/device_app/tests``); an installed package needs nothing."""

import sys
from pathlib import Path

SRC = str(Path(__file__).parents[1] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
