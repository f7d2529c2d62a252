"""signvote: Byzantine-fault-tolerant distributed training with SignSGD/Signum and majority vote.

The data path of every engine (see docs/design.md)::

    params x -> honest gradients G[n, d] -> worker rule M[n, d] -> attack M'[n, d]
             -> aggregator v[d] -> update x <- x - lr * (v + weight_decay * x)
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "train"]


def __getattr__(name: str) -> Any:
    """``signvote.train`` (:func:`signvote.api.train`), imported on first use, so that
    ``import signvote`` alone stays light (the command line imports torch once it runs)."""
    if name == "train":
        from signvote.api import train

        return train
    raise AttributeError(f"module 'signvote' has no attribute {name!r}")
