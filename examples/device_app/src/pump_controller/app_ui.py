"""What the Pump Controller shows on the device's page in the console."""

from fleetcloud.sdk import ui


class PumpUI:
    def __init__(self) -> None:
        self.level = ui.NumericVariable(
            "level",
            "Tank Level",
            precision=1,
            units="%",
            ranges=[
                ui.Range("Low", 0, 20, ui.Colour.blue),
                ui.Range("Normal", 20, 80, ui.Colour.green),
                ui.Range("High", 80, 100, ui.Colour.red),
            ],
        )
        self.pump_on = ui.BooleanVariable("pump_on", "Pump Running")
        self.mode = ui.TextVariable("mode", "Mode")
        self.start = ui.Action("start", "Start Pump", colour=ui.Colour.green)
        self.stop = ui.Action("stop", "Stop Pump", colour=ui.Colour.red)
        self.auto = ui.Action("auto", "Automatic", requires_confirm=False)
        self.start_level = ui.NumericParameter(
            "start_level", "Start Level", min_val=0, max_val=100, units="%"
        )
        self.alerts = ui.AlertStream()

    def fetch(self) -> tuple[ui.Element, ...]:
        return (
            self.level,
            self.pump_on,
            self.mode,
            self.start,
            self.stop,
            self.auto,
            self.start_level,
            self.alerts,
        )

    def update(self, level: float, pump_on: bool, mode: str) -> None:
        self.level.update(level)
        self.pump_on.update(pump_on)
        self.mode.update(mode)
