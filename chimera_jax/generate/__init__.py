"""Decoding from any model family: ``Generator`` (engine.py) and the token choice (sampling.py)."""
