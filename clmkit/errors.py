"""User mistakes become one line each and exit code 2, never a traceback."""

import json
import os
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


def read_json_object(path, label, advice):
    """A JSON file that must hold an object; every way it can fail is one line: '<label> <path>: ...; <advice>'."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{label}{path}: no such file; {advice}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{label}{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}; "
                         f"fix it or {advice}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{label}{path}: cannot read it ({err}); {advice}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{label}{path}: expected a JSON object; {advice}")
    return value


def first_process() -> bool:
    """Rank 0 of a launched run, or the only process: the one that prints notices for all of them."""
    return int(os.environ.get("RANK") or 0) == 0


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
