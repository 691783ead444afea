"""Internals of ``raysys.serve``: not a public API."""
