"""An example parser script for a device that takes ``KEY=VALUE`` text commands.

Upload it with ``fleetcloud parser upload example_parser.py`` and push with
``--parser example_parser.py``. Only the standard library is available.
"""


def format_command(command: dict, config: dict) -> bytes:
    """``set_led {"state": "on"}`` becomes ``b"SET_LED state=on id=<request_id>\\n"``."""
    fields = " ".join(f"{key}={value}" for key, value in sorted(command["payload"].items()))
    line = f"{command['command_type'].upper()} {fields} id={command['request_id']}\n"
    if len(line) > config.get("max_length", 256):
        raise ValueError("the command is too long for this device")
    return line.encode("ascii")


def parse(payload: bytes, metadata: dict, config: dict) -> dict:
    """``b"temp=21.5 hum=40"`` becomes ``{"temp": 21.5, "hum": 40.0}``."""
    values = {}
    for pair in payload.decode("ascii").split():
        key, _, value = pair.partition("=")
        values[key] = float(value)
    return values
