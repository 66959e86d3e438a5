"""Sandbox method handlers, one module per area; importing this package registers them all."""
