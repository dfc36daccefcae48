"""Fuzzing harness for the sans-IO protocol core (``python -m fuzz``; see docs/fuzzing.md).

Nothing here is imported by the gateway. This package must not import ``gateway`` at module
level: the coverage-guided engine instruments gateway modules as they are first imported.
"""
