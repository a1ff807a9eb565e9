"""The core layer: model references and loading, data and built-in tasks, files, the job substrate
and the cache. It imports nothing else from paraknow (tests/test_architecture.py holds the layers)."""

__version__ = "0.1.0"
