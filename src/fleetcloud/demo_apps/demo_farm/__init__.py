"""The demo farm's processors: a pump controller and a cold room.

Each is installed on one demo device, subscribed to its ``sensors`` channel (readings
every few seconds) and its ``ui_cmds`` channel (what users do in the console). Their
state between invocations lives in the app's tags, as a stateless processor's must.
"""
