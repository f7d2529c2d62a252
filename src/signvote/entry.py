"""The ``signvote`` process's entry point (the console script and ``python -m signvote``).

It imports the command line only inside :func:`run`, so that Ctrl-C while torch and the
rest are still being imported (the first second or so) ends the process with one line and
exit 130, as it does later, instead of Python's KeyboardInterrupt traceback.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""


def run() -> int:
    """Run ``signvote`` with ``sys.argv``; its exit code."""
    try:
        from signvote.cli import main

        return main()
    except KeyboardInterrupt:
        print("\nsignvote: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
