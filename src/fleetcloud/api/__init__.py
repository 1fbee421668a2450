"""The HTTP and websocket API (an ASGI app built on Starlette)."""
