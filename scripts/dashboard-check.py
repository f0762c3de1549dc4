#!/usr/bin/env python3
"""Prove that `credpool serve`'s dashboard renders live data in a real browser.

Starts headless Chromium, opens the dashboard, waits for snapshots, then
acquires two leases over HTTP and waits for the page to show them (without
a reload), takes a screenshot while they are held, releases one as a success
and one as a disable, and waits for the page to show the disabled credential
with its reason. Prints one JSON line and exits 0, or explains what it
expected and what the page showed and exits 1.

Python 3.11 standard library only; the DevTools WebSocket is implemented here.

  scripts/dashboard-check.py --url http://127.0.0.1:8080 --pool default \
      --screenshot /tmp/shot.png [--token TOKEN] [--chromium /usr/bin/chromium]
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

REASON = "banned in the browser check"


class CheckFailed(Exception):
    """The check failed; the message says what was expected and what was seen."""


# --- A minimal WebSocket client (RFC 6455), enough for the DevTools protocol ---


class WebSocket:
    def __init__(self, url, timeout=30.0):
        parts = urllib.parse.urlsplit(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\n"
                f"Host: {parts.hostname}:{parts.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CheckFailed(f"DevTools closed the WebSocket during the handshake: {head!r}")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise CheckFailed(f"DevTools refused the WebSocket upgrade: {status.decode(errors='replace')}")

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CheckFailed("DevTools closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode, payload):
        header = bytes([0x80 | opcode])  # FIN + opcode
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])  # client frames are always masked
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self):
        """The next whole text (or binary) message; answers pings on the way."""
        message, first_opcode = b"", None
        while True:
            b0, b1 = self._read(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode == 0x8:  # close
                raise CheckFailed("DevTools closed the WebSocket")
            if opcode != 0x0:  # a new message (text or binary), not a continuation
                first_opcode = opcode
                message = b""
            message += payload
            if fin:
                return message.decode() if first_opcode == 0x1 else message

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class DevTools:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        wanted = self.next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") != wanted:
                continue  # an event, or a reply we no longer wait for
            if "error" in reply:
                raise CheckFailed(f"DevTools {method} failed: {reply['error']}")
            return reply.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CheckFailed(f"the page threw evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")


# --- Chromium ---


def start_chromium(binary, profile, log):
    args = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    # Its own process group, so that the whole tree (renderers, zygote) is stopped.
    return subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_chromium(process):
    """Stop chromium and its children: its process group (it leads it)."""
    if process is None:
        return
    group = process.pid
    try:
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, so that it no longer counts
            os.killpg(group, 0)  # raises ProcessLookupError once the group is gone
            time.sleep(0.05)
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def devtools_port(process, profile, log_path, timeout=20.0):
    path = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"chromium exited with {process.returncode} before DevTools was up:\n{tail(log_path)}")
        try:
            with open(path) as file:
                first = file.readline().strip()
            if first:
                return int(first)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise CheckFailed(f"expected {path} within {timeout:.0f} s; chromium log:\n{tail(log_path)}")


def page_target(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            targets = json.load(response)
        pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise CheckFailed(f"expected a page target at /json/list; got {targets}")
        time.sleep(0.2)


def tail(path, lines=20):
    try:
        with open(path, errors="replace") as file:
            return "".join(file.readlines()[-lines:])
    except OSError:
        return "(no log)"


# --- The server's API ---


def api(base, path, body, token, expect):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    except urllib.error.URLError as error:
        raise CheckFailed(f"POST {path}: no answer from {base}: {error.reason}")
    if status != expect:
        raise CheckFailed(f"POST {path}: expected HTTP {expect}, got {status}: {text}")
    return json.loads(text) if text else {}


# --- What the page shows ---

STATE_JS = """(() => {
  const body = document.body;
  if (!body) return null;
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
  const login = document.getElementById("login");
  return {
    snapshots: Number(body.dataset.snapshots || 0),
    events: Number(body.dataset.events || 0),
    total: t("count-total"), available: t("count-available"), leased: t("count-leased"),
    cooling: t("count-cooling"), disabled: t("count-disabled"), leases: t("count-leases"),
    waiters: t("count-waiters"), grants_per_second: t("grants-per-second"),
    acquired_events: document.querySelectorAll('li.event[data-kind="acquired"]').length,
    disabled_table: t("disabled"),
    status: t("status"),
    login_shown: login ? getComputedStyle(login).display !== "none" : false,
    text: body.innerText,
  };
})()"""


def number(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def wait_for(tools, what, condition, timeout):
    """Poll the page until condition(state) holds; the last state is returned either way."""
    deadline = time.monotonic() + timeout
    state = None
    while True:
        state = tools.evaluate(STATE_JS)
        if state is not None and condition(state):
            return state
        login = state is not None and state.get("login_shown")
        if login or time.monotonic() > deadline:
            shown = dict(state or {})
            text = shown.pop("text", "")
            if login:
                when = "; the page shows its login form instead (give --token, or a valid one)"
            else:
                when = f" within {timeout:.0f} s"
            raise CheckFailed(
                f"expected {what}{when}; the page showed:\n"
                f"{json.dumps(shown, indent=2, ensure_ascii=False)}\n--- body innerText ---\n{text}"
            )
        time.sleep(0.2)


def counts(state):
    keys = ("total", "available", "leased", "cooling", "disabled", "leases", "waiters")
    return {key: number(state[key]) for key in keys}


def check(args, tools):
    base = args.url.rstrip("/")
    pool_path = "/v1/pools/" + urllib.parse.quote(args.pool, safe="")
    tools.call("Page.enable")
    tools.call("Runtime.enable")
    if args.token:
        tools.call(
            "Page.addScriptToEvaluateOnNewDocument",
            source=f"sessionStorage.setItem('credpool-token', {json.dumps(args.token)});",
        )
    page_url = base + "/?pool=" + urllib.parse.quote(args.pool, safe="")
    navigated = tools.call("Page.navigate", url=page_url)
    if navigated.get("errorText"):
        raise CheckFailed(f"expected the browser to load {page_url}; it said {navigated['errorText']}")

    before = wait_for(
        tools,
        "at least 2 snapshots and a number in #count-total",
        lambda s: s["snapshots"] >= 2 and number(s["total"]) is not None,
        15,
    )
    l0, d0 = number(before["leases"]), number(before["disabled"])
    if l0 is None or d0 is None:
        raise CheckFailed(f"expected numbers in #count-leases and #count-disabled; got {before['leases']!r}, {before['disabled']!r}")

    held = []  # (token, name) of the leases this check holds
    try:
        for _ in range(2):
            lease = api(base, pool_path + "/leases", {"ttl": "30s"}, args.token, 201)
            held.append((lease["token"], lease.get("name")))

        during = wait_for(
            tools,
            f"#count-leases == {l0 + 2} and an li.event[data-kind=acquired]",
            lambda s: number(s["leases"]) == l0 + 2 and s["acquired_events"] >= 1,
            10,
        )
        shot = tools.call("Page.captureScreenshot", format="png")
        with open(args.screenshot, "wb") as file:
            file.write(base64.b64decode(shot["data"]))

        (ok_token, ok_name), (off_token, off_name) = held
        api(base, f"{pool_path}/leases/{ok_token}/release", {"outcome": "success"}, args.token, 200)
        held.pop(0)
        api(
            base,
            f"{pool_path}/leases/{off_token}/release",
            {"outcome": "disable", "reason": REASON},
            args.token,
            200,
        )
        held.pop(0)
    finally:
        for token, _ in held:  # a failure midway: give back what is still held
            try:
                api(base, f"{pool_path}/leases/{token}/release", {"outcome": "success"}, args.token, 200)
            except CheckFailed as error:
                print(f"warning: could not release a lease: {error}", file=sys.stderr)

    after = wait_for(
        tools,
        f"#count-disabled == {d0 + 1}, #count-leases == {l0} and {REASON!r} in the #disabled table",
        lambda s: number(s["disabled"]) == d0 + 1
        and number(s["leases"]) == l0
        and REASON in (s["disabled_table"] or ""),
        10,
    )
    return {
        "ok": True,
        "url": page_url,
        "pool": args.pool,
        "screenshot": args.screenshot,
        "before": counts(before),
        "during": counts(during),
        "after": counts(after),
        "leased": [ok_name, off_name],
        "disabled": off_name,
        "snapshots": after["snapshots"],
        "events": after["events"],
        "acquired_events": after["acquired_events"],
        "status": after["status"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--pool", required=True, help="the pool to show and lease from")
    parser.add_argument("--screenshot", required=True, help="where to write the PNG")
    parser.add_argument("--token", help="a worker or admin bearer token, if the server needs one")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="dashboard-check-")
    profile = os.path.join(root, "profile")
    log_path = os.path.join(root, "chromium.log")
    process = tools = None
    try:
        with open(log_path, "wb") as log:
            process = start_chromium(args.chromium, profile, log)
        port = devtools_port(process, profile, log_path)
        tools = DevTools(page_target(port))
        print(json.dumps(check(args, tools)))
        return 0
    except CheckFailed as error:
        print(f"dashboard check FAILED: {error}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as error:
        print(f"dashboard check FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        if tools is not None:
            tools.ws.close()
        stop_chromium(process)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
