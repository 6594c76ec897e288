"""Write shardrun generators in Python as plain functions (standard library only).

A generator function takes one item and returns (or yields) its rows::

    item = {"index": 7, "key": "AAPL|2024-01-02", "seed": 1234,
            "fields": {"ticker": "AAPL", "date": "2024-01-02"}}

``key`` is always a string, ``seed`` an integer, ``fields`` a dict of strings (empty for range,
list and file items). Each row is a list or tuple with one value per output column, in the order
of ``output.columns``; values are written with ``str()`` (``None`` as an empty field) and quoted
as CSV needs.

Persistent mode (``generator: {mode: persistent}``): the process is started once per slot and
serves many items, so slow imports and model loads are paid once::

    import random
    import shardrun_gen

    def rows(item):
        rng = random.Random(item["seed"])
        for i in range(3):
            yield [item["key"], i, rng.random()]

    if __name__ == "__main__":
        shardrun_gen.serve(rows)

Per-item mode (the default) runs the script once per item; ``run_once(rows)`` reads the item from
stdin (the worker writes it there in both modes) and writes its rows, so the same function
serves both.

The protocol ``serve`` speaks: one JSON object per line on stdin, one per item; for each, the
item's CSV records on stdout, then a line holding only the end-of-item marker (the ASCII record
separator ``\\x1e`` by default, or ``$SHARDRUN_MARKER`` when set), then a flush. EOF on stdin
ends the process with exit status 0.

Supported: Python 3.8 or newer, standard library only (tested with the ``python3`` of the test
machine; values with CR are quoted on every version, see ``write_rows``).

Decisions:

* An exception in the function (also while its rows are being iterated) prints the item's key and
  the traceback to stderr, which goes to the shard log, and ends the process with exit status 1.
  The worker fails that item (as a crash) and starts a new process for the next one, paying the
  start-up again. The protocol has no per-item error reply, and a process in an unknown state
  after an exception is better replaced. Rows of the failed item that already reached the worker
  are discarded by it.
* While ``serve`` runs, ``sys.stdout`` points to stderr, so a stray ``print()`` goes to the log
  instead of corrupting the item's output, and ``sys.stdin`` is empty, so nothing can consume the
  next request. Output written to stdout before ``serve`` is called (a ``print`` at import time)
  still reaches the worker: avoid it.
"""

import csv
import io
import json
import os
import sys
import traceback

__all__ = ["MARKER", "serve", "run_once", "write_rows"]

#: The default end-of-item marker: the ASCII record separator.
MARKER = "\x1e"

_OUT_BUFFER = 1 << 16


def _open_stdout():
    """A text stream on file descriptor 1: UTF-8, no newline translation, 64 KiB buffer."""
    sys.__stdout__.flush()
    raw = io.FileIO(sys.__stdout__.fileno(), "wb", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw, _OUT_BUFFER), encoding="utf-8", newline="", write_through=False
    )


def _quoted(value):
    """A field as CSV needs it, quoted when it holds a comma, a quote, LF or CR."""
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_rows(rows, out=None):
    """Writes ``rows`` (an iterable of lists or tuples) as CSV records to ``out`` (default: stdout)."""
    out = sys.stdout if out is None else out
    writerow = csv.writer(out, lineterminator="\n").writerow
    for row in rows:
        if isinstance(row, (str, bytes)):
            raise TypeError(
                "a row must be a list or tuple of values, not %s %r" % (type(row).__name__, row)
            )
        fields = ["" if v is None else str(v) for v in row]
        if any("\r" in f for f in fields):
            # Before Python 3.13, csv.writer with lineterminator="\n" leaves a lone CR unquoted,
            # and a reader takes it for a line break: such a row is quoted here instead.
            out.write(",".join(_quoted(f) for f in fields) + "\n")
        else:
            writerow(fields)


def _fail(item):
    key = item.get("key") if isinstance(item, dict) else None
    sys.stderr.write("shardrun_gen: item %r failed:\n%s" % (key, traceback.format_exc()))
    sys.stderr.flush()
    # Rows of the item still in the buffer are dropped with the process.
    os._exit(1)


def serve(fn, marker=None):
    """Serves items from stdin until EOF: calls ``fn(item)`` per item and writes its rows, then
    the marker line. Never returns: exits with status 0 at EOF, 1 when ``fn`` raises."""
    if marker is None:
        marker = os.environ.get("SHARDRUN_MARKER", MARKER)
    if not marker or "\n" in marker or "\r" in marker:
        raise ValueError("the end-of-item marker must be a non-empty string without line breaks")
    end = marker + "\n"
    requests = sys.stdin.buffer
    out = _open_stdout()
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull)
    try:
        while True:
            line = requests.readline()
            if not line:
                break
            if not line.strip():
                continue
            item = None
            try:
                item = json.loads(line)
                write_rows(fn(item), out)
            except Exception:
                _fail(item)
            out.write(end)
            out.flush()
    except BrokenPipeError:
        # The worker is gone: nobody is left to read anything.
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


def run_once(fn, item=None):
    """Per-item mode: writes the rows of ``item`` (default: the JSON object read from stdin) to
    stdout. An exception propagates (Python exits with status 1 and prints the traceback)."""
    if item is None:
        item = json.loads(sys.stdin.buffer.read())
    out = _open_stdout()
    write_rows(fn(item), out)
    out.flush()
