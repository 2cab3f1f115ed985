"""Streaming benchmark: see bench/run.py."""
