"""bkdbench: long-tailed classification benchmarks centred on Balanced Knowledge Distillation."""

__version__ = "0.1.0"
