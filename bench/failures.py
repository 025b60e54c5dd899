"""Why a run failed, in one line, from its log and exit status.

run_clm.py reports a user's mistake as `error: ...` lines and exit code 2; anything else ends in an exception, an
out-of-memory sentence, or a signal. The launcher's own output is mixed in the same log, so the lines are read from
the end."""

import re
import signal

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::|$)")
HOST_OOM = ("can't allocate memory", "cannot allocate memory")


def failure_reason(log_text, exit_code):
    """run_clm.py's own `error:` lines; else the last out-of-memory line; else the last exception (not the
    launcher's CalledProcessError, which only says a worker failed); else the signal or exit code."""
    lines = log_lines(log_text)
    usage = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if usage:
        return shorten("; ".join(usage))
    for line in reversed(lines):
        if "out of memory" in line.lower() or any(words in line.lower() for words in HOST_OOM):
            return describe_oom(line)
    for line in reversed(lines):
        if EXCEPTION.match(line) and "CalledProcessError" not in line:
            return shorten(line)
    killer = signal_of(exit_code)
    if killer:
        return f"killed by {killer}" + (" (host out of memory?)" if killer == "SIGKILL" else "")
    return f"exit code {exit_code}" + (f": {shorten(lines[-1])}" if lines else "")


def log_lines(log_text):
    """Non-empty lines without colours; a progress bar's carriage returns split it into the lines it drew."""
    pieces = (ANSI.sub("", piece).strip() for line in log_text.splitlines() for piece in line.split("\r"))
    return [piece for piece in pieces if piece]


def signal_of(code):
    """The signal behind an exit status: -9 (Popen), 137 (a shell's 128+9) or 247 (the launcher's sys.exit(-9))."""
    if code is None or 0 <= code <= 128:
        return None
    number = -code if code < 0 else code - 128 if code < 192 else 256 - code
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_oom(line):
    start = line.find("CUDA out of memory")
    if start >= 0:  # "CUDA out of memory. Tried to allocate 1.53 GiB. GPU 0 has ...": the first two sentences
        return shorten(". ".join(line[start:].split(". ")[:2]))
    if any(words in line.lower() for words in HOST_OOM):
        return shorten(f"host out of memory: {line}")
    return shorten(line)


def shorten(text, limit=200):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def last_lines(text, n=3):
    return shorten(" | ".join(line for line in text.strip().splitlines()[-n:]))
