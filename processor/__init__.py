"""Voxline: a Kafka-driven text-to-speech stream processor."""

__version__ = "0.1.0"
PROCESSOR_NAME = "voxline"
