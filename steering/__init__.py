"""phpo.steering: ask-and-tell optimizers (imports phpo.schemas only)."""

from .base import FAILED, HistoryItem, Optimizer, OptimizerConfig, Result

__all__ = ["FAILED", "HistoryItem", "Optimizer", "OptimizerConfig", "Result"]
