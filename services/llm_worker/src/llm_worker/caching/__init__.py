"""Caching: provider prompt-cache preparation and the exact-match response cache."""
