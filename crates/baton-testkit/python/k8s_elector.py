#!/usr/bin/env python3
"""One candidate of the Python `kubernetes` client's leader election, Baton's foreign candidate.

Runs `kubernetes.leaderelection` (PyPI `kubernetes` 37.x) with its `LeaseLock` against the API
server of a kubeconfig file, and prints one JSON line per transition on stdout, flushed:

    {"event":"became_leader","candidate":"py-1","t":12345.678901}
    {"event":"lost_leadership","candidate":"py-1","t":12349.012345,"reason":"renew_failed"}

`t` is CLOCK_BOOTTIME in seconds, the clock Baton's tools compare across processes (`boot_ns`
in `baton campaign --json`). `reason` is `renew_failed` (the library's renew loop gave up),
`error` (an exception escaped the library) or `stopped` (SIGTERM or SIGINT while leading).

What the library does, read from its source (docs/decisions.md, D65):
- a follower takes the Lease once `lease_duration` (its *own* setting, not the record's
  `leaseDurationSeconds`) has passed since it last saw the record change, judged on the wall
  clock (`time.time()`); an empty `holderIdentity` is free at once;
- every write is a PUT of the object as read, so it carries the resourceVersion;
- `acquireTime`/`renewTime` are written with `datetime.isoformat()`: `+00:00`, six fractional
  digits, none at all when the microseconds are 0;
- `leaseTransitions` is never written (kept as read);
- the library cannot be stopped and never releases; `LeaderElection.run()` returns once a
  leader failed to renew for `renew_deadline`, and does not campaign again;
- it catches only `ApiException`: a refused connection or a timeout escapes `run()`, leader or
  not, without calling `onstopped_leading`.

This script adds what the library lacks, and only that: it treats an exception escaping `run()`
as the end of leadership, it campaigns again after losing (unless `--once`), it stops on
SIGTERM/SIGINT, and with `--release-on-exit` it writes on stop what client-go's
ReleaseOnCancel writes (`holderIdentity: ""`, `leaseDurationSeconds: 1`, transitions kept),
conditional on the resourceVersion it read. `--request-timeout` bounds each API call to one
try of that many seconds (by default the library's calls have no timeout, and urllib3 retries
them 3 times, so a hung call stalls a leader's step-down).
"""

import argparse
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

_print_lock = threading.Lock()


def boot_time():
    """CLOCK_BOOTTIME in seconds: one clock for every process on the machine."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def emit(event, candidate, **extra):
    line = {"event": event, "candidate": candidate, "t": boot_time()}
    line.update(extra)
    with _print_lock:
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()


class StoppableLeaseLock(LeaseLock):
    """The library's LeaseLock, whose writes can be shut off once the candidate stops.

    Every create and update holds `mutex`, so once `stop()` holds it no write of the library is
    in flight, and every later one is refused: a release cannot be overwritten by a renewal that
    read the lease before it.
    """

    def __init__(self, name, namespace, identity, request_timeout):
        super().__init__(name, namespace, identity)
        self.mutex = threading.Lock()
        self.stopping = False
        if request_timeout is not None:
            self._bound_calls(request_timeout)

    def _bound_calls(self, seconds):
        api = self.api_instance
        for method in ("read_namespaced_lease", "create_namespaced_lease",
                       "replace_namespaced_lease"):
            unbound = getattr(api, method)

            def bounded(*args, _call=unbound, **kwargs):
                kwargs.setdefault("_request_timeout", seconds)
                return _call(*args, **kwargs)

            setattr(api, method, bounded)

    def create(self, name, namespace, election_record):
        with self.mutex:
            if self.stopping:
                return False
            return super().create(name, namespace, election_record)

    def update(self, name, namespace, updated_record):
        with self.mutex:
            if self.stopping:
                return False
            return super().update(name, namespace, updated_record)

    def stop(self):
        """Refuse every later write; returns once none is in flight."""
        with self.mutex:
            self.stopping = True

    def release(self):
        """client-go's ReleaseOnCancel record, if this candidate still holds the lease.

        A PUT of the object as read, so it carries the resourceVersion: if anything changed
        since, the server answers 409 and nothing is written.
        """
        try:
            lease = self.api_instance.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            logging.warning("release: cannot read the lease: %s", e.reason)
            return False
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            return False
        now = datetime.datetime.now(datetime.timezone.utc)
        lease.spec.holder_identity = ""
        lease.spec.lease_duration_seconds = 1
        lease.spec.acquire_time = now
        lease.spec.renew_time = now
        try:
            self.api_instance.replace_namespaced_lease(
                name=self.name, namespace=self.namespace, body=lease)
        except ApiException as e:
            logging.warning("release: not written: %s", e.reason)
            return False
        return True


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True, help="kubeconfig file (its current context)")
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True, help="the Lease's name")
    p.add_argument("--identity", required=True, help="this candidate's holderIdentity")
    p.add_argument("--lease-duration", type=int, required=True,
                   help="whole seconds (the library writes int(str(value)))")
    p.add_argument("--renew-deadline", type=float, required=True)
    p.add_argument("--retry-period", type=float, required=True)
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds per API call (default: none, as in the library)")
    p.add_argument("--release-on-exit", action="store_true",
                   help="on SIGTERM/SIGINT, write client-go's release record")
    p.add_argument("--once", action="store_true",
                   help="exit 1 after losing leadership instead of campaigning again")
    p.add_argument("-v", "--verbose", action="store_true", help="the library's logs on stderr")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr,
                        level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config.load_kube_config(config_file=args.kubeconfig)
    if args.request_timeout is not None:
        # Bounded means one try: urllib3 would otherwise retry a timed-out call 3 times.
        conf = client.Configuration.get_default_copy()
        conf.retries = 0
        client.Configuration.set_default(conf)
    lock = StoppableLeaseLock(args.name, args.namespace, args.identity, args.request_timeout)

    leading = threading.Event()
    lost = threading.Event()

    def on_started():
        with lock.mutex:
            if lock.stopping:
                return
            leading.set()
            emit("became_leader", args.identity)

    def on_stopped():
        with lock.mutex:
            if lock.stopping:
                return
            leading.clear()
            emit("lost_leadership", args.identity, reason="renew_failed")
            lost.set()

    # Validates as the library does (it calls sys.exit on a bad setting).
    cfg = electionconfig.Config(lock, args.lease_duration, args.renew_deadline,
                                args.retry_period, on_started, on_stopped)

    def campaign():
        while not lock.stopping:
            # run() returns only after a leader failed to renew; a new LeaderElection starts
            # from no observed record, as a restarted process would.
            failed = False
            try:
                leaderelection.LeaderElection(cfg).run()
            except Exception as e:  # noqa: BLE001 (what the library lets escape)
                # The library catches only ApiException: a refused connection or a timeout
                # escapes run(), leader or not, without onstopped_leading. Leadership ends here.
                logging.warning("the election raised %s: %s", type(e).__name__, e)
                failed = True
                with lock.mutex:
                    if leading.is_set() and not lock.stopping:
                        leading.clear()
                        emit("lost_leadership", args.identity, reason="error")
                        lost.set()
            if args.once and lost.is_set():
                break
            if failed:
                time.sleep(args.retry_period)
        os.kill(os.getpid(), signal.SIGUSR1)

    # The main thread waits for a signal with sigwait: blocked here, before any thread starts,
    # the signals are blocked in every thread, so they wake this wait at once and nothing else.
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    threading.Thread(target=campaign, name="campaign", daemon=True).start()
    signal.sigwait(wanted)

    # Stop writing first, then say so, then release (Baton's order: DESIGN.md §3, rule 4).
    was_leading = leading.is_set()
    lock.stop()
    if was_leading and leading.is_set():
        emit("lost_leadership", args.identity, reason="stopped")
        if args.release_on_exit:
            lock.release()
    sys.stdout.flush()
    return 1 if args.once and lost.is_set() else 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The campaign thread (a daemon) may be inside the client library or urllib3 right now;
    # finalising the interpreter under it can abort the process (SIGABRT, seen in
    # scripts/bench after SIGINT). Everything is said and released: leave without finalising.
    os._exit(code)
