"""align: staged alignment recipes on transformers, TRL, PEFT and accelerate."""

__version__ = "0.1.0"
