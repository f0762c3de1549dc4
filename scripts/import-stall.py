#!/usr/bin/env python3
"""How long a command holds other writers of a SQLite store back.

Runs COMMAND while this connection commits a one-row write (to a table of
its own, `side`) every 2 ms, and prints how many writes it made meanwhile
and the longest it waited for the write lock. For BENCHMARKS.md's import
figures:

    scripts/import-stall.py store.db target/release/credpool --db store.db --pool big import big.json
"""
import sqlite3
import subprocess
import sys
import time

db, command = sys.argv[1], sys.argv[2:]
connection = sqlite3.connect(db, isolation_level=None, timeout=30)
connection.execute("CREATE TABLE IF NOT EXISTS side (x INTEGER)")
process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
started = time.time()
waits = []
while process.poll() is None:
    before = time.time()
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO side VALUES (1)")
    connection.execute("COMMIT")
    waits.append(time.time() - before)
    time.sleep(0.002)
waits.sort()
print(
    "command %.2fs, %d writes during it, longest wait %.3fs, median %.4fs"
    % (time.time() - started, len(waits), waits[-1] if waits else 0, waits[len(waits) // 2] if waits else 0)
)
