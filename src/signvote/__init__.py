"""signvote: Byzantine-fault-tolerant distributed training with SignSGD/Signum and majority vote.

The data path of every engine (see docs/design.md)::

    params x -> honest gradients G[n, d] -> worker rule M[n, d] -> attack M'[n, d]
             -> aggregator v[d] -> update x <- x - lr * (v + weight_decay * x)
"""

__version__ = "0.1.0"
