"""An example signvote plugin (see its pyproject.toml for the entry points).

- ``aggregators.TrimmedVote``: the majority vote of what is left after dropping the ``k``
  largest and ``k`` smallest values of every coordinate; ``aggregators.sign_of_median``:
  a plain function, the simplest aggregator there is.
- ``attacks.MeanInversion``: every Byzantine worker sends ``-s`` times the honest mean.
- ``models.tiny_mlp``: ``in -> hidden -> n_classes``, a ReLU between.
- ``datasets.blobs``: Gaussian blobs around one centre per class.
"""
