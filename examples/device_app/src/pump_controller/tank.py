"""The tank the pump empties. On a real device the level comes from a sensor (a 4–20 mA
level transmitter, say) and the pump is a relay output; this stand-in moves the level by a
fixed amount per loop, so the app's behaviour is the same in tests and on a bench."""

from dataclasses import dataclass


@dataclass
class Tank:
    level: float = 50.0  # % full

    def advance(self, inflow: float, outflow: float) -> float:
        """One loop of inflow and pumping; the new level, kept within 0–100 %."""
        self.level = min(100.0, max(0.0, self.level + inflow - outflow))
        return self.level
