"""The ``signvote`` process's entry point (the console script and ``python -m signvote``).

Ctrl-C while torch and the rest are still being imported (the first second or so) must
end the process as it does later: one line, exit 130. An interrupt raised inside an
extension module's import can surface as another error (numpy's "cannot load module more
than once per process"), so :func:`run` does not let it interrupt the imports: it notes a
SIGINT that arrives during them and acts on it once they are done.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""


def interrupted() -> int:
    print("\nsignvote: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def run() -> int:
    """Run ``signvote`` with ``sys.argv``; its exit code."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: seen.append(number))
    try:
        from signvote.cli import main
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:
        return interrupted()
    try:
        return main()
    except KeyboardInterrupt:
        return interrupted()
