"""``python -m pump_controller``."""

from pump_controller import main

raise SystemExit(main())
