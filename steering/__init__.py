"""phpo.steering: ask-and-tell optimizers (imports phpo.schemas only).

Optimizer libraries are imported only when an optimizer that needs them is created
(:func:`create_optimizer`), so importing this package stays cheap.
"""

from .base import FAILED, HistoryItem, Optimizer, OptimizerConfig, Result
from .registry import DEFAULT, available, create_optimizer

__all__ = [
    "DEFAULT",
    "FAILED",
    "HistoryItem",
    "Optimizer",
    "OptimizerConfig",
    "Result",
    "available",
    "create_optimizer",
]
