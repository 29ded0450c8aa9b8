"""dupmae: DupMAE (RetroMAE-2) pre-training of retrieval-oriented encoders."""

__version__ = "0.1.0"
