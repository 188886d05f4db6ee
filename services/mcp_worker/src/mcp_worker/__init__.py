"""Ferryman's mcp worker (package skeleton; the worker itself comes with its own issue)."""
