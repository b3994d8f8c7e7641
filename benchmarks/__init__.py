"""Benchmarks: measured claims, each run side by side with its baseline. Run each one as a module
from the repository root, ``python -m benchmarks.NAME``; the shared machinery is ``benchmarks.harness``."""
