#!/usr/bin/env python3
"""Example command generator with a slow start-up, usable per item or persistent.

Columns: key,seed,value (three rows per item, values a deterministic function of key and seed,
identical in both modes).

    # per item: one process per item, the start-up is paid every time
    python3 examples/slow_import_gen.py --item 17 --seed 12345
    # persistent: one process serves items from stdin (see python/shardrun_gen.py)
    python3 examples/slow_import_gen.py --serve

conf/persistent-example.yaml runs it in persistent mode.
"""

import argparse
import hashlib
import os
import sys
import time

# Simulates a slow import (numpy, torch, a model or a big lookup table being loaded): half a
# second per process start, so once per item in per-item mode and once per slot in persistent
# mode.
time.sleep(0.5)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python"))
import shardrun_gen  # noqa: E402

ROWS_PER_ITEM = 3


def rows(item):
    """The item's rows: [key, seed, value] with value in [0, 1)."""
    key = str(item["key"])
    seed = int(item["seed"])
    for i in range(ROWS_PER_ITEM):
        digest = hashlib.blake2b(("%d:%s:%d" % (seed, key, i)).encode(), digest_size=8).digest()
        yield [key, seed, "%.6f" % (int.from_bytes(digest, "big") / 2.0**64)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help="persistent mode: serve items from stdin")
    mode.add_argument("--item", metavar="KEY", help="per-item mode: the item's key")
    parser.add_argument("--seed", type=int, help="per-item mode: the item's seed")
    args = parser.parse_args()
    if args.serve:
        shardrun_gen.serve(rows)
    if args.seed is None:
        parser.error("--item needs --seed")
    shardrun_gen.run_once(rows, {"key": args.item, "seed": args.seed})


if __name__ == "__main__":
    main()
