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


def run_cli(main, argv=None) -> None:
    """Call main(argv); turn a UsageError into 'error: ...' lines on stderr and exit code 2, and a Ctrl-C that
    stops at once (the second one during training, or any before it) into one line and exit code 130."""
    try:
        main(argv)
    except UsageError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT_CODE)
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
