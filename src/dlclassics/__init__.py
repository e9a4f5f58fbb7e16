"""dlclassics: the classic deep-learning course experiments as one tested library and CLI."""

__version__ = "0.1.0"
