"""TTS backends: one module per server family, all behind ``Backend``."""
