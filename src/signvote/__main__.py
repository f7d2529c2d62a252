"""``python -m signvote`` runs the ``signvote`` command."""

from signvote.entry import run

raise SystemExit(run())
