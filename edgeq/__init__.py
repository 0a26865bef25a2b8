"""edgeq: from a QLoRA fine-tune to an artifact that fits an edge device."""

__version__ = "0.1.0"
