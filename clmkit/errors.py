"""User mistakes become one line each and exit code 2, never a traceback."""

import signal
import sys

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """Something the user can fix: a file, flag or value. Holds one or more one-line messages."""

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def raise_if_any(problems: list[str]) -> None:
    """Report every problem found at once rather than one per run."""
    if problems:
        raise UsageError(*problems)


def run_cli(main, argv=None, after_error=None) -> None:
    """Call main(argv); turn a UsageError into 'error: ...' lines on stderr and exit code 2, and a Ctrl-C that
    stops at once (the second one during training, or any before it) into one line and exit code 130.
    after_error(lines), when given, is called with the error lines once they are printed."""
    try:
        main(argv)
    except UsageError as err:
        lines = [f"error: {problem}" for problem in err.problems]
        print("\n".join(lines), file=sys.stderr, flush=True)
        if after_error is not None:
            after_error(lines)
        sys.exit(USAGE_EXIT_CODE)
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
