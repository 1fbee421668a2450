from fleetcloud.sdk import ui


class DeviceProcessorUI:
    def __init__(self):
        self.temperature = ui.NumericVariable("temperature", "Temperature", precision=1, units="°C")
        self.status = ui.TextVariable("status", "Status")
        self.last_seen = ui.TextVariable("last_seen", "Last report")

    def fetch(self):
        return self.temperature, self.status, self.last_seen

    def update_from_event(self, data):
        if "temperature" in data:
            self.temperature.update(data["temperature"])
        self.status.update(data.get("status", "unknown"))
        self.last_seen.update(data.get("reported_at", ""))
