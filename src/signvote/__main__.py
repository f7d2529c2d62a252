"""``python -m signvote`` runs the ``signvote`` command."""

from signvote.cli import main

raise SystemExit(main())
