"""Parser scripts shipped with fleetcloud, usable by reference name (see docs/commands.md)."""
