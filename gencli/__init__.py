"""gencli: generate text with GPT-2 and see how generation works inside."""

__version__ = "0.1.0"
