#!/usr/bin/env python3
"""A Consul lock client that follows the Go API's `Lock` (hashicorp/consul `api/lock.go`) step
by step, with Python 3.11's standard library only: Baton's foreign candidate for the Consul
store. It prints one JSON line per transition on stdout, flushed:

    {"event":"became_leader","candidate":"py-1","t":12345.678901}
    {"event":"lost_leadership","candidate":"py-1","t":12349.012345,"reason":"lost"}

`t` is CLOCK_BOOTTIME in seconds (Baton's `boot_ns`). `reason` is `lost` (the monitor saw the
lock go: `monitorLock` closing `leaderCh`), `error` (a request failed where `Lock` returns an
error) or `stopped` (SIGTERM or SIGINT while leading, printed before `Unlock` sends the release: the
application stops acting as leader first).

The steps, in `Lock(stopCh)`'s order:
1. `createSession`: PUT /v1/session/create with `Name` (`DefaultLockSessionName`, "Consul API
   Lock"), `TTL` (`DefaultLockSessionTTL`, 15s) and `LockDelay` (omitted when 0, so the
   agent's 15 s default applies, as Go's `omitempty` does); then `RenewPeriodic` in the
   background: renew every TTL/2, every 1 s after an error, give up after a TTL without a
   renewal or when the session is gone (404).
2. WAIT: a blocking GET of the key with `index` (`WaitIndex`, 0 at first) and `wait`
   (`DefaultLockWaitTime`, 15s). Flags other than `LockFlagValue` are `ErrLockConflict`; our
   own session is already HELD; another session sets `WaitIndex` to the answer's index and
   waits again.
3. Acquire: PUT ?acquire=SESSION&flags=LockFlagValue with `Value` (`lockEntry`). If refused:
   read again without blocking; another session means WAIT on that index; none means a
   lock-delay, so sleep `DefaultLockRetryTime` (5s) and WAIT.
4. HELD: `monitorLock`: blocking GETs while the pair's session is ours; anything else (or a
   failed request, `MonitorRetries` being 0) ends leadership.
`Unlock`: PUT ?release=SESSION&flags=LockFlagValue with the value, then the renewer's
`doneCh` destroys the session.

Like `consul lock`, it campaigns again after losing the lock (unless `--once`), with a new
session. The one addition is the value: `LockOptions.Value` is this candidate's id, so the pair
shows who holds it.
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18  # api/lock.go LockFlagValue
DEFAULT_LOCK_RETRY_TIME = 5.0  # api/lock.go DefaultLockRetryTime

_print_lock = threading.Lock()


def boot_time():
    """CLOCK_BOOTTIME in seconds: one clock for every process on the machine."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def emit(event, candidate, **extra):
    line = {"event": event, "candidate": candidate, "t": boot_time()}
    line.update(extra)
    with _print_lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def go_duration(text):
    """Seconds of a Go duration such as 10s, 1m30s, 500ms."""
    total, number, i = 0.0, "", 0
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in ("ns", "us", "ms") else c
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total


class Agent:
    """The Go API client's requests: JSON, the token header, errors as exceptions."""

    def __init__(self, addr, token, timeout):
        self.base = "http://" + addr
        self.token = token
        self.timeout = timeout

    def call(self, method, path, body=None, wait=0.0):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout + wait) as resp:
                return resp.status, resp.headers.get("X-Consul-Index"), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("X-Consul-Index"), e.read()

    def get(self, key, index, wait):
        """`kv.Get` with `QueryOptions{WaitIndex, WaitTime}`: (pair or None, LastIndex)."""
        path = "/v1/kv/" + key
        if index:
            path += "?index=%d&wait=%dms" % (index, int(wait * 1000))
        status, last, body = self.call("GET", path, wait=wait if index else 0.0)
        if status == 404:
            return None, int(last or 0)
        if status != 200:
            raise RuntimeError("GET %s: %d %s" % (key, status, body[:200]))
        return json.loads(body)[0], int(last or 0)


class Lock:
    def __init__(self, agent, args):
        self.agent = agent
        self.key = args.key.rstrip("/") + "/.lock"  # consul lock's layout
        self.args = args
        self.value = args.id.encode()
        self.session = None
        self.renew_done = None

    def lock_entry_path(self, verb):
        return "/v1/kv/%s?%s=%s&flags=%d" % (self.key, verb, self.session, LOCK_FLAG_VALUE)

    def create_session(self):
        entry = {"Name": "Consul API Lock", "TTL": self.args.session_ttl}
        if go_duration(self.args.lock_delay) > 0:
            entry["LockDelay"] = self.args.lock_delay
        status, _, body = self.agent.call("PUT", "/v1/session/create", entry)
        if status != 200:
            raise RuntimeError("failed to create session: %d %s" % (status, body[:200]))
        return json.loads(body)["ID"]

    def renew_periodic(self, session, done):
        """`Session.RenewPeriodic`."""
        ttl = go_duration(self.args.session_ttl)
        wait = ttl / 2
        last = time.monotonic()
        while True:
            if time.monotonic() - last > ttl:
                return
            if done.wait(wait):
                self.agent.call("PUT", "/v1/session/destroy/" + session)
                return
            try:
                status, _, body = self.agent.call("PUT", "/v1/session/renew/" + session)
            except OSError:
                wait = 1.0
                continue
            if status == 404:
                return  # ErrSessionExpired
            if status != 200:
                wait = 1.0
                continue
            ttl = go_duration(json.loads(body)[0]["TTL"])
            wait = ttl / 2
            last = time.monotonic()

    def lock(self, stop):
        """`Lock(stopCh)`: True once held, False when stopped."""
        self.session = self.create_session()
        self.renew_done = threading.Event()
        threading.Thread(
            target=self.renew_periodic, args=(self.session, self.renew_done), daemon=True
        ).start()
        wait = go_duration(self.args.lock_wait)
        index = 0
        while True:  # WAIT
            if stop.is_set():
                return False
            pair, last = self.agent.get(self.key, index, wait)
            if pair is not None and pair["Flags"] != LOCK_FLAG_VALUE:
                raise RuntimeError("Existing key does not match lock use")  # ErrLockConflict
            if pair is not None and pair.get("Session") == self.session:
                return True  # HELD
            if pair is not None and pair.get("Session"):
                index = last
                continue
            body = self.value
            status, _, answer = self.agent.call("PUT", self.lock_entry_path("acquire"), body)
            if status != 200:
                raise RuntimeError("failed to acquire lock: %d %s" % (status, answer[:200]))
            if json.loads(answer) is True:
                return True  # HELD
            pair, last = self.agent.get(self.key, 0, wait)
            if pair is not None and pair.get("Session"):
                index = last
                continue
            if stop.wait(DEFAULT_LOCK_RETRY_TIME):
                return False
            index = 0

    def monitor(self, stop):
        """`monitorLock`: returns when the lock is no longer ours (or on stop)."""
        wait = go_duration(self.args.lock_wait)
        index = 0
        while not stop.is_set():
            try:
                pair, last = self.agent.get(self.key, index, wait)
            except (OSError, RuntimeError):
                return "error"
            if pair is not None and pair.get("Session") == self.session:
                index = last
                continue
            return "lost"
        return "stopped"

    def unlock(self):
        """`Unlock`: release with the lock entry, then end the session (the renewer's `doneCh`;
        destroyed here, synchronously, so that the process can exit right after)."""
        try:
            self.agent.call("PUT", self.lock_entry_path("release"), self.value)
        finally:
            self.end_session()
            self.agent.call("PUT", "/v1/session/destroy/" + self.session)

    def end_session(self):
        if self.renew_done is not None:
            self.renew_done.set()
            self.renew_done = None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", required=True, help="the agent, HOST:PORT")
    parser.add_argument("--key", required=True, help="the prefix; the lock is PREFIX/.lock")
    parser.add_argument("--id", required=True, help="this candidate's id (the lock's value)")
    parser.add_argument("--token", default=None)
    parser.add_argument("--session-ttl", default="15s")
    parser.add_argument("--lock-delay", default="15s")
    parser.add_argument("--lock-wait", default="15s")
    parser.add_argument("--request-timeout", type=float, default=5.0)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent = Agent(args.addr, args.token, args.request_timeout)

    # The campaign runs in a thread; the main thread takes the signal at once and, while the
    # lock is held, unlocks (a blocking query in the monitor could otherwise delay the stop by
    # up to --lock-wait). `state` hands the held lock from one to the other.
    state = {"held": None, "done": False, "code": 0}
    guard = threading.Lock()

    def run():
        while not stop.is_set():
            lock = Lock(agent, args)
            try:
                held = lock.lock(stop)
            except (OSError, RuntimeError) as e:
                sys.stderr.write("lock failed: %s\n" % e)
                lock.end_session()
                if stop.wait(1.0):
                    break
                continue
            with guard:
                if not held or state["done"]:
                    lock.end_session()
                    break
                state["held"] = lock
                emit("became_leader", args.id)
            why = lock.monitor(stop)
            with guard:
                if state["done"]:
                    return
                state["held"] = None
                emit("lost_leadership", args.id, reason=why)
            lock.end_session()
            if args.once:
                state["code"] = 1
                break

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        worker.join(0.05)
    with guard:
        state["done"] = True
        lock = state["held"]
        if lock is not None:
            # The application stops acting as leader before it calls Unlock, so the term
            # ends here: once the release is sent, another candidate may hold the lock
            # before this process could print a line after it.
            emit("lost_leadership", args.id, reason="stopped")
            lock.unlock()
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker (a daemon thread) may still be inside an HTTP call; finalising the
    # interpreter under it can abort the process. Everything is said and released.
    os._exit(state["code"])


if __name__ == "__main__":
    main()
