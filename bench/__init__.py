"""Benchmarks of Voxline against the peers it is compared with (``python -m bench.run``)."""
