"""Connectors: protocol adapters between devices and fleetcloud.

Each connector is an ``async with`` service (run by ``create_app(services=[...])``) that
delivers commands from the ``device_commands`` topic to devices over its protocol and
bridges the devices' uplinks into channels. The protocol-independent part of delivery
lives in ``fleetcloud.commands.delivery``.

- ``mqtt``: ``fleetcloud serve --mqtt-url mqtt://HOST:PORT`` (aiomqtt, Mosquitto);
  ``mosquitto`` generates the broker's password and ACL files.
- ``coap``: ``fleetcloud serve --coap-bind HOST:PORT`` (aiocoap): a CoAP server devices
  talk to; ``coap_wire`` is its resource layout and command envelope.
"""
