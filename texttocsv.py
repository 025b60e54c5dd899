#!/usr/bin/env python3
"""Turn plain-text files into one-column csv files (header `text`) for fine-tuning.

The training script reads csv files with a `text` column; this tool makes them from
.txt files, keeping line breaks inside the cells.

Usage:
  python texttocsv.py                          train.txt -> train.csv, validation.txt -> validation.csv
  python texttocsv.py a.txt b.txt              a.csv and b.csv next to the inputs
  python texttocsv.py a.txt --output_dir out   out/a.csv
  python texttocsv.py --from_folder texts      texts.csv: one csv from every texts/*.txt
  python texttocsv.py --from_folder texts --output all.csv
  python texttocsv.py --overwrite              replace csv files that hold something else
"""

import argparse
import codecs
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

DEFAULT_INPUTS = ("train.txt", "validation.txt")
DEFAULT_ENCODING = "utf-8-sig"
UTF8_NAMES = ("utf-8", "utf-8-sig")


class InputError(Exception):
    """A problem the user can fix; its message is printed as one line, no traceback."""


# ---------------------------------------------------------------- command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert text files into csv files with one column, `text`, for "
        "fine-tuning. Line breaks are kept inside the cells; Windows (CRLF) and old Mac "
        "(CR) line breaks become \\n, so the csv reads back as the text with \\n line "
        "breaks. A UTF-8 byte order mark is dropped.",
        epilog="Either name text files (each becomes FILE.csv) or give --from_folder "
        "(all its .txt files, sorted by name, go into one csv); not both. With neither, "
        "train.txt and validation.txt in the current folder are converted. Nothing is "
        "written unless every input is readable; input files are never overwritten, and "
        "an existing csv only with --overwrite (unless it already holds what would be written). "
        "Exit code 2 means bad input; each problem is printed on one line.",
    )
    parser.add_argument(
        "files", nargs="*", metavar="FILE",
        help="text files to convert; each one becomes a csv with the same name and "
        ".csv in place of its extension (default: train.txt validation.txt)",
    )
    parser.add_argument(
        "--from_folder", metavar="DIR", type=Path,
        help="convert every .txt file (.TXT too, any case) directly inside DIR, sorted by name, "
        "into ONE csv, DIR.csv next to the folder unless --output is given (not inside DIR)",
    )
    parser.add_argument(
        "--output", metavar="CSV", type=Path,
        help="the csv to write for --from_folder (default: DIR.csv)",
    )
    parser.add_argument(
        "--output_dir", metavar="DIR", type=Path,
        help="write the csv files into this existing folder instead of next to the inputs",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a csv that already exists and holds other rows (without it such a csv is "
        "left alone and nothing is written)",
    )
    parser.add_argument(
        "--split", choices=("file", "line", "paragraph"), default="file",
        help="what one row holds: 'file' the whole text of a file (default), 'line' "
        "each non-blank line, 'paragraph' each block of lines between blank lines "
        "(line breaks inside it kept)",
    )
    parser.add_argument(
        "--encoding", default=DEFAULT_ENCODING, metavar="NAME",
        help="encoding of the input files (default: utf-8, with or without a byte "
        "order mark); e.g. latin-1 or cp1252 for older files",
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------- planning
# A plan is a list of (output csv, [input files]); it is checked in full before
# anything is written, so one run reports every problem at once.


def plan_jobs(args):
    """Work out which inputs go into which csv; raise InputError listing misuse."""
    if args.from_folder is not None:
        if args.files:
            raise InputError("give either FILE arguments or --from_folder, not both")
        if args.output_dir is not None and args.output is not None:
            raise InputError("give either --output or --output_dir, not both")
        folder = args.from_folder
        if args.output is not None:
            output = args.output
        elif args.output_dir is not None:
            output = args.output_dir / (folder.resolve().name + ".csv")
        else:
            output = folder_csv(folder)
        return [(output, folder_texts(folder))]

    if args.output is not None:
        raise InputError(
            "--output is only for --from_folder; use --output_dir to choose where "
            "the csv files of FILE arguments go")
    files = [Path(f) for f in (args.files or DEFAULT_INPUTS)]
    return [(csv_path_for(f, args.output_dir), [f]) for f in files]


def folder_csv(folder):
    """DIR.csv next to the folder."""
    name = folder.resolve().name + ".csv"
    if folder.name in ("", "."):  # "." has no name of its own to put beside
        return folder.resolve().parent / name
    return folder.parent / name


def folder_texts(folder):
    if not folder.exists():
        raise InputError(f"--from_folder {folder}: no such folder; check the path")
    if not folder.is_dir():
        raise InputError(
            f"--from_folder {folder}: is a file, not a folder; name the file "
            f"without --from_folder to convert it")
    # By name as a person reads it (a.txt before B.TXT), not by character code; ties in case by the exact name.
    texts = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file()),
                   key=lambda p: (p.name.casefold(), p.name))
    if not texts:
        raise InputError(
            f"--from_folder {folder}: has no .txt files; put the texts in "
            f"{folder / '*.txt'} or name the files directly")
    return texts


def csv_path_for(text_file, output_dir):
    csv_name = text_file.with_suffix(".csv").name
    return (output_dir if output_dir is not None else text_file.parent) / csv_name


def check_encoding(encoding):
    try:
        b"\n".decode(encoding, "replace")  # also rejects non-text codecs such as base64
    except LookupError:
        return [f"--encoding {encoding!r}: not a known text encoding; use a name such "
                f"as utf-8, latin-1 or cp1252"]
    return []


def check_outputs(jobs, args):
    """Problems with where the csv files would go; the inputs must stay untouched."""
    problems = []
    if args.output_dir is not None and not args.output_dir.is_dir():
        problems.append(f"--output_dir {args.output_dir}: not an existing folder; create it first")
        return problems
    inputs = {path.resolve(): path for _, paths in jobs for path in paths}
    seen = {}
    # Name the flag that chose the path, so the message says what to change.
    flag = "--output " if args.output is not None else ""
    other = "--output" if args.from_folder is not None else "--output_dir"
    for output, sources in jobs:
        key = output.resolve()
        if key in inputs or any(_same_file(output, p) for p in inputs.values()):
            problems.append(
                f"{flag}{output}: is an input file and would be overwritten; choose "
                f"another path with {other}")
        elif output.is_dir():
            problems.append(f"{flag}{output}: is a folder; choose another path with {other}")
        elif key in seen:
            problems.append(
                f"{output}: would be written from both {seen[key]} and {sources[0]}; "
                f"convert them in separate runs or rename one")
        elif not output.parent.is_dir():
            problems.append(f"{flag}{output}: folder {output.parent} does not exist; create it first")
        elif args.from_folder is not None and _same_file(output.parent, args.from_folder):
            # The folder holds the texts, and only them: a csv in it mixes what was made with what it was made of.
            problems.append(
                f"{flag}{output}: is inside --from_folder {args.from_folder}, the folder being read; write the "
                f"csv outside it, e.g. --output {folder_csv(args.from_folder)}")
        elif not os.access(output.parent, os.W_OK):
            problems.append(f"{flag}{output}: folder {output.parent} is not writable; "
                            f"choose another path with {other}")
        seen.setdefault(key, sources[0])
    return problems


def existing_csv_problems(rows_by_output, unread, unchanged, jobs, args):
    """Existing csv files this run would change: the user's data, replaced only when --overwrite says so.

    A csv that already holds exactly what would be written (`unchanged`: a rerun over the same text) is no problem;
    one whose inputs could not all be read is left to the run after the fix, which can compare it."""
    if args.overwrite:
        return []
    inputs = [path for _, paths in jobs for path in paths]
    flag = "--output CSV" if args.from_folder is not None else "--output_dir DIR"
    problems = []
    for output in rows_by_output:
        if output in unread or not output.is_file() or any(_same_file(output, p) for p in inputs):
            continue  # missing, or already reported as an input or a folder by check_outputs
        if output not in unchanged:
            problems.append(
                f"{output}: exists and holds other rows than this run would write; give --overwrite to "
                f"replace it, or write elsewhere with {flag}")
    return problems


def is_unchanged(output, rows):
    try:
        return output.is_file() and output.read_bytes() == render_csv(rows).encode("utf-8")
    except OSError:
        return False  # unreadable: it cannot be shown to be the same


def _same_file(a, b):
    # Catches hard links and case-insensitive file systems that resolve() misses.
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---------------------------------------------------------------- reading


def read_text(path, encoding, defaulted=False):
    """The text of one file, with \\n line breaks and no byte order mark."""
    if not path.exists():
        if defaulted:
            raise InputError(f"{path}: no such file; run in the folder holding "
                             f"{' and '.join(DEFAULT_INPUTS)} or name the text files to convert")
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder; to make one row per .txt file in it, use "
            f"--from_folder {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror})") from None
    text = decode(data, encoding, path)
    if not text.strip():
        raise InputError(f"{path}: is empty (no text); add text or leave the file out")
    # One line-break convention in the training data; csv readers keep \n as is.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode(data, encoding, path):
    # Strip a UTF-8 BOM ourselves so that error offsets count from the file's start.
    skip = 0
    if codecs.lookup(encoding).name in UTF8_NAMES and data.startswith(codecs.BOM_UTF8):
        skip, encoding = len(codecs.BOM_UTF8), "utf-8"
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as err:
        offset = skip + err.start
        raise InputError(
            f"{path}: byte 0x{data[offset]:02x} at byte offset {offset} is not valid "
            f"{_encoding_label(encoding)}; use --encoding to name the file's encoding "
            f"(e.g. --encoding latin-1)") from None
    return text.removeprefix("\ufeff")  # a BOM left by codecs other than UTF-8


def _encoding_label(encoding):
    name = codecs.lookup(encoding).name
    return "utf-8" if name in UTF8_NAMES else name


def split_text(text, mode):
    if mode == "file":
        return [text]
    if mode == "line":
        return [line for line in text.split("\n") if line.strip()]
    return paragraphs(text)


def paragraphs(text):
    """Blocks of non-blank lines; blank or whitespace-only lines separate them."""
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def read_rows(jobs, args):
    """Rows per output csv, every problem found in the inputs, and the outputs with an input not read."""
    rows, problems, unread = {}, [], set()
    defaulted = not args.files and args.from_folder is None
    for output, sources in jobs:
        rows[output] = []
        for source in sources:
            try:
                rows[output] += split_text(read_text(source, args.encoding, defaulted), args.split)
            except InputError as err:
                problems.append(str(err))
                unread.add(output)
    return rows, problems, unread


# ---------------------------------------------------------------- writing


def write_all(rows_by_output):
    """Write every csv to a temp file first, then move them all into place.

    A failure while writing leaves neither half-written nor partly-updated csv files.
    """
    staged = []
    try:
        for output, rows in rows_by_output.items():
            staged.append((stage_csv(output, rows), output))
    except BaseException:
        for temp, _ in staged:
            os.unlink(temp)
        raise
    for temp, output in staged:
        os.replace(temp, output)


def stage_csv(output, rows):
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="", dir=output.parent,
        prefix=f".{output.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(render_csv(rows))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # temp files are private (0600) by default
    except BaseException:
        os.unlink(handle.name)
        raise
    return handle.name


def render_csv(rows):
    """The csv file's text: a `text` header, then one quoted-as-needed cell per row, \n line ends."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(["text"])
    writer.writerows([row] for row in rows)
    return buffer.getvalue()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def report(rows_by_output, unchanged=()):
    for output, rows in rows_by_output.items():
        chars = sum(len(row) for row in rows)
        same = " (the file already held this; left as it was)" if output in unchanged else ""
        print(f"{output}: {len(rows):,} row{'s' if len(rows) != 1 else ''}, {chars:,} characters{same}")


# ---------------------------------------------------------------- main


def fail(problems):
    for problem in problems:
        print(f"texttocsv.py: error: {problem}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    try:
        jobs = plan_jobs(args)
    except InputError as err:
        fail([str(err)])
    problems = check_encoding(args.encoding)
    if problems:
        fail(problems)  # no point reading files with an encoding that does not exist
    problems += check_outputs(jobs, args)
    rows_by_output, read_problems, unread = read_rows(jobs, args)
    problems += read_problems
    unchanged = {output for output, rows in rows_by_output.items() if is_unchanged(output, rows)}
    problems += existing_csv_problems(rows_by_output, unread, unchanged, jobs, args)
    if problems:
        fail(problems)
    try:
        write_all({output: rows for output, rows in rows_by_output.items() if output not in unchanged})
    except OSError as err:
        fail([f"{err.filename or 'output'}: cannot write it ({err.strerror})"])
    report(rows_by_output, unchanged)


if __name__ == "__main__":
    main()
