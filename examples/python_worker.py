#!/usr/bin/env python3
"""aio-credentials-pool's worker loop, in Python, against `credpool serve`.

N worker threads each loop: acquire a credential over credpool's HTTP API,
"work" a random while, and release it. SIGINT (Ctrl-C) or SIGTERM stops them
gracefully: no new acquires, and every lease held, including one whose acquire
was in flight when the signal came, is released before the program exits
(so stopping can take up to --wait, while a long-poll finishes).
Python 3.11's standard library only.

Run it with `credpool serve`:

    credpool import accounts.json            # or: credpool add NAME ...
    credpool serve --listen 127.0.0.1:8080 &
    python3 examples/python_worker.py --url http://127.0.0.1:8080 \\
        --pool default --workers 4 --duration 10

With auth on (`CREDPOOL_WORKER_TOKEN=... credpool serve ...`, or --auth-file),
pass the same token with --token TOKEN or in $CREDPOOL_TOKEN.

Options:
    --url URL          the server [default: http://127.0.0.1:8080]
    --pool NAME        the pool [default: default]
    --workers N        worker threads [default: 4]
    --duration SECS    stop after this long; 0 or absent: run until a signal
    --token TOKEN      a worker (or admin) bearer token [default: $CREDPOOL_TOKEN]
    --work-ms A..B     how long one piece of work takes, in ms [default: 5..50]
    --ttl D, --wait D  the lease TTL and the long-poll wait asked for
                       [default: 30s and 5s]
    --hold-log FILE    append one line per lease released,
                       `name lease_id start_ns end_ns` (time.monotonic_ns just
                       after the 201 arrived and just before the release was
                       sent), for a checker
    -v, --verbose      one line on stderr per lease (the name, never the secret)

At the end one line goes to stdout, e.g.
`python_worker: 123 leases, 0 errors, 0 held at exit`. The exit status is 0,
1 if any lease could not be released, 2 if a worker met an error that retrying
cannot fix (a bad token, an unknown pool). Neither a secret nor a lease token
is ever printed.

The API used (errors are `{"error": CODE, "message": TEXT}`):
    POST /v1/pools/{pool}/leases                 {"wait": "5s", "ttl": "30s"}
         201: token, name, secret, extra, units, lease_id, expires_at, ...
         503 none_free (Retry-After): none came free within `wait`
         503 shutting_down: the server stops
    POST /v1/pools/{pool}/leases/{token}/renew   {"ttl": "30s"}
    POST /v1/pools/{pool}/leases/{token}/release {"outcome": "success"}
         or {"outcome": "cool-down", "for": "1s"}; 200 {"released": true}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PROG = "python_worker"

# One release in this many rests the credential a while ("slow down"), to
# show release outcomes other than success.
COOL_DOWN_ONE_IN = 20
COOL_DOWN_FOR = "1s"
# The longest pause after a 503 none_free, whatever its Retry-After says.
MAX_RETRY_PAUSE = 1.0
# The pause after an error that retrying may fix (connection refused, a 5xx).
ERROR_PAUSE = 1.0
RELEASE_ATTEMPTS = 3

_stderr_lock = threading.Lock()


def say(message: str):
    """One whole line on stderr, never interleaved with another thread's."""
    with _stderr_lock:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()


class ApiError(Exception):
    """An HTTP error answer, or no answer at all (status None)."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Fatal(Exception):
    """An error no retry fixes: the worker stops."""


def parse_duration(text: str) -> float:
    """Seconds from `1.5`, `500ms`, `5s`, `2m`, `1h`, `1m 30s`."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    total, pos = 0.0, 0
    for match in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        if match.start() != pos or match.group(2) not in units:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"not a duration: {text!r}")
    return total


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("..")
    low = int(lo)
    high = int(hi) if sep else low
    if low < 0 or high < low:
        raise ValueError(f"not a range A..B with 0 <= A <= B: {text!r}")
    return low, high


def redact(message: str, token: str | None) -> str:
    """The server's message without any part of a lease token in it."""
    if token:
        for n in range(len(token), 3, -1):
            if token[:n] in message:
                message = message.replace(token[:n], "<lease>")
                break
    return message


class Client:
    def __init__(self, url: str, pool: str, token: str | None):
        self.base = url.rstrip("/") + "/v1/pools/" + urllib.parse.quote(pool, safe="")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def post(self, path: str, body: dict, timeout: float) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers=self.headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            with error:
                raw = error.read()
            try:
                answer = json.loads(raw)
                code, message = answer.get("error", "?"), answer.get("message", "")
            except (ValueError, AttributeError):
                code, message = "?", raw[:200].decode(errors="replace")
            retry_after = None
            header = error.headers.get("Retry-After") if error.headers else None
            if header is not None:
                try:
                    retry_after = float(header)
                except ValueError:
                    pass
            raise ApiError(error.code, code, f"HTTP {error.code} {code}: {message}", retry_after)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(None, "unreachable", f"no answer from the server: {reason}")

    def acquire(self, wait: str, ttl: str, timeout: float) -> dict:
        _, lease = self.post("/leases", {"wait": wait, "ttl": ttl}, timeout)
        return lease

    def renew(self, lease_token: str, ttl: str, timeout: float) -> dict:
        path = "/leases/" + urllib.parse.quote(lease_token, safe="") + "/renew"
        _, answer = self.post(path, {"ttl": ttl}, timeout)
        return answer

    def release(self, lease_token: str, outcome: dict, timeout: float) -> dict:
        path = "/leases/" + urllib.parse.quote(lease_token, safe="") + "/release"
        _, answer = self.post(path, outcome, timeout)
        return answer


class Tally:
    def __init__(self, hold_log: str | None):
        self.lock = threading.Lock()
        self.leases = 0
        self.released = 0
        self.errors = 0
        self.fatal = False
        self.log = open(hold_log, "a", buffering=1, encoding="utf-8") if hold_log else None

    def acquired(self):
        with self.lock:
            self.leases += 1

    def gave_back(self, name: str, lease_id, start_ns: int, end_ns: int):
        with self.lock:
            self.released += 1
            if self.log:
                self.log.write(f"{name} {lease_id} {start_ns} {end_ns}\n")

    def error(self, worker: int, message: str, fatal: bool = False):
        with self.lock:
            self.errors += 1
            self.fatal = self.fatal or fatal
        say(f"worker {worker}: {message}")

    def held(self) -> int:
        with self.lock:
            return self.leases - self.released


class Worker:
    def __init__(self, index: int, args, client: Client, tally: Tally, stop: threading.Event):
        self.index = index
        self.args = args
        self.client = client
        self.tally = tally
        self.stop = stop
        self.rng = random.Random()
        self.wait_s = parse_duration(args.wait)
        # Generous: the server answers a long-poll within `wait`.
        self.acquire_timeout = self.wait_s + 30.0
        self.timeout = 30.0

    def run(self):
        try:
            while not self.stop.is_set():
                lease = self.acquire()
                if lease is None:
                    continue
                # Even if the signal came while the acquire was in flight, the
                # lease is ours now: work (cut short by a stop), then release.
                self.work_and_release(lease)
        except Fatal as error:
            self.tally.error(self.index, str(error), fatal=True)
            self.stop.set()
        except Exception as error:  # a bug: say so, but never leave a lease out silently
            self.tally.error(self.index, f"unexpected {type(error).__name__}: {error}", fatal=True)
            self.stop.set()

    def acquire(self) -> dict | None:
        try:
            lease = self.client.acquire(self.args.wait, self.args.ttl, self.acquire_timeout)
        except ApiError as error:
            if error.code == "none_free":
                pause = min(error.retry_after if error.retry_after is not None else MAX_RETRY_PAUSE,
                            MAX_RETRY_PAUSE)
                self.stop.wait(max(pause, 0.0))
                return None
            if error.code == "shutting_down":
                say(f"worker {self.index}: the server is shutting down; stopping")
                self.stop.set()
                return None
            if error.status in (400, 401, 403, 404, 409, 422):
                raise Fatal(error.message)
            # Unreachable or a 5xx: it may come back.
            self.tally.error(self.index, error.message)
            self.stop.wait(ERROR_PAUSE)
            return None
        lease["_start_ns"] = time.monotonic_ns()
        lease["_got_at"] = time.monotonic()
        self.tally.acquired()
        if self.args.verbose:
            say(f"worker {self.index}: working as {lease.get('name')}")
        return lease

    def work_and_release(self, lease: dict):
        low, high = self.args.work_range
        work_s = self.rng.uniform(low, high) / 1000.0
        ttl_s = float(lease.get("ttl_seconds") or parse_duration(self.args.ttl))
        renew_at = lease["_got_at"] + ttl_s / 2.0
        deadline = lease["_got_at"] + work_s
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= renew_at:
                next_in = self.renew(lease)
                if next_in is None:
                    return  # lost: nothing to give back
                renew_at = time.monotonic() + next_in
                continue
            self.stop.wait(min(deadline, renew_at) - now)
        if not self.stop.is_set() and self.rng.randrange(COOL_DOWN_ONE_IN) == 0:
            outcome = {"outcome": "cool-down", "for": COOL_DOWN_FOR}
        else:
            outcome = {"outcome": "success"}
        self.release(lease, outcome)

    def renew(self, lease: dict) -> float | None:
        """Extend the lease's TTL. Seconds until the next renew is due (half
        the new TTL; after a failure that may pass, a short pause), or None if
        the lease is lost."""
        token = lease["token"]
        try:
            answer = self.client.renew(token, self.args.ttl, self.timeout)
        except ApiError as error:
            if error.status in (404, 410):
                self.tally.error(self.index, f"lease {lease.get('lease_id')} on "
                                 f"{lease.get('name')} lost: {redact(error.message, token)}")
                return None
            self.tally.error(self.index, f"renew: {redact(error.message, token)}")
            return ERROR_PAUSE
        return float(answer.get("ttl_seconds") or parse_duration(self.args.ttl)) / 2.0

    def release(self, lease: dict, outcome: dict) -> bool:
        token = lease["token"]
        end_ns = time.monotonic_ns()
        retried = False
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                answer = self.client.release(token, outcome, self.timeout)
            except ApiError as error:
                retryable = error.status is None or (error.status >= 500 and error.code != "shutting_down")
                if retryable and attempt + 1 < RELEASE_ATTEMPTS:
                    retried = True
                    time.sleep(0.2 * (attempt + 1))
                    continue
                hint = (" (an earlier attempt got no answer: it may have been released)"
                        if retried and error.status == 404 else "")
                self.tally.error(self.index, f"could not release lease {lease.get('lease_id')} "
                                 f"on {lease.get('name')}: {redact(error.message, token)}{hint}")
                return False
            if answer.get("released") in (True, "pending"):
                self.tally.gave_back(str(lease.get("name")), lease.get("lease_id"),
                                     lease["_start_ns"], end_ns)
                return True
            self.tally.error(self.index, f"release of lease {lease.get('lease_id')} answered "
                             f"released={answer.get('released')!r}")
            return False
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python_worker.py",
        description="aio-credentials-pool's worker loop against `credpool serve`.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--pool", default="default")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds; 0 or absent: until SIGINT or SIGTERM")
    parser.add_argument("--token", default=os.environ.get("CREDPOOL_TOKEN"),
                        help="bearer token [default: $CREDPOOL_TOKEN]")
    parser.add_argument("--work-ms", default="5..50", help="A..B milliseconds")
    parser.add_argument("--ttl", default="30s")
    parser.add_argument("--wait", default="5s")
    parser.add_argument("--hold-log", metavar="FILE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.work_range = parse_range(args.work_ms)
        parse_duration(args.ttl)
        parse_duration(args.wait)
    except ValueError as error:
        parser.error(str(error))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.duration < 0:
        parser.error("--duration must not be negative")

    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum, _frame):
        signals["count"] += 1
        if signals["count"] == 1:
            say(f"{signal.Signals(signum).name}: stopping, every lease is given back")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    client = Client(args.url, args.pool, args.token)
    tally = Tally(args.hold_log)
    threads = [
        threading.Thread(target=Worker(i, args, client, tally, stop).run, name=f"worker-{i}")
        for i in range(args.workers)
    ]
    for thread in threads:
        thread.start()

    if args.duration > 0:
        stop.wait(args.duration)
    else:
        while not stop.wait(1.0):
            pass
    stop.set()
    # Join with a timeout so that signals are still handled meanwhile.
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)

    held = tally.held()
    print(f"{PROG}: {tally.leases} leases, {tally.errors} errors, {held} held at exit", flush=True)
    if tally.log:
        tally.log.close()
    if held:
        return 1
    return 2 if tally.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
