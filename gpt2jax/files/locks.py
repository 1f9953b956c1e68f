"""Lock files that keep two writers (processes, GPUs, hosts) off one thing: a training
workdir (``train.run``), a sweep job (the sweep runner), a results.csv (``scaling.records``).

A lock is a file created with O_CREAT | O_EXCL, which exactly one creator wins, also on
NFS v3+. It holds its owner's host and pid, and the owner touches it every
``stale_after / 4`` seconds. A lock is stale, and is broken, when its owner is a dead
process on this host, or when nobody touched it for ``stale_after`` seconds (an owner on
another host that died, or a pid reused since), or when it names no owner (empty or not
JSON: its creator died between creating and writing it) and is older than
``UNREADABLE_GRACE_S``, far longer than that write takes. Breaking renames the file away
only if it is still the one judged stale, so a lock just taken by another worker survives.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from gpt2jax.errors import check_stop

STALE_AFTER_S = 600.0
UNREADABLE_GRACE_S = 5.0  # a creator writes its owner record microseconds after creating the file


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


class FileLock:
    def __init__(self, path: str | Path, stale_after: float = STALE_AFTER_S):
        self.path = Path(path)
        self.stale_after = stale_after
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._held = False
        self._stop = threading.Event()
        self._heartbeat = None

    def try_acquire(self) -> bool:
        """Takes the lock if it is free or stale; False if a live worker holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after breaking a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._break_if_stale():
                    return False
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump({**self.owner, "since": time.time()}, file)
            self._held = True
            self._start_heartbeat()
            return True
        return False

    def holder(self) -> dict | None:
        """The owner recorded in the lock file ({"host", "pid", "since"}), or None when it is free."""
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # being written right now, or never written (see _break_if_stale)
        well_formed = (
            isinstance(owner, dict)
            and isinstance(owner.get("host"), str)
            and type(owner.get("pid")) is int
            and isinstance(owner.get("since", 0.0), (int, float))
        )
        return owner if well_formed else {}  # a lock that says no owner plainly is an unreadable one

    def acquire(self, poll_s: float = 0.05, waiting: str | None = None, say_after_s: float = 2.0) -> None:
        """Waits until the lock is taken; a stop (SIGTERM, Ctrl-C) ends the wait.

        ``waiting`` names what the holder does: after ``say_after_s`` the wait is said on stderr,
        with the holder's pid and host, so that it never looks like a hang.
        """
        started = time.monotonic()
        said = waiting is None
        while not self.try_acquire():
            check_stop(lambda name: f"stopped by {name} while it waited for {self.path}.")
            if not said and time.monotonic() - started >= say_after_s:
                said = True
                print(f"waiting for {self.path} ({waiting}: {self.describe_holder()}).", file=sys.stderr, flush=True)
            time.sleep(poll_s)

    def describe_holder(self) -> str:
        """``pid 12 on host h, since 2026-12-07 10:00:00``, from the lock file; what is known when it names no one."""
        holder = self.holder() or {}
        if "pid" not in holder:  # younger than UNREADABLE_GRACE_S: its creator is still writing it
            return "it is taking the lock this very moment"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        return f"pid {holder['pid']} on host {holder.get('host', '?')}, since {since}"

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self._held = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass  # broken as stale by another worker: it judged this owner dead
        except OSError as error:
            # A filesystem turned read-only: the error that ends the command says what was saved, not this.
            warnings.warn(
                f"could not remove {self.path} ({error.strerror}); the next run breaks it, its owner being dead."
            )

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.stale_after / 4):
                try:
                    os.utime(self.path)
                except OSError:  # broken as stale, or its filesystem turned read-only: release says so
                    return

        self._heartbeat = threading.Thread(target=beat, name=f"lock {self.path.name}", daemon=True)
        self._heartbeat.start()

    def _break_if_stale(self) -> bool:
        """Removes a stale lock; True if there is no lock left to respect."""
        try:
            before = self.path.stat()
        except FileNotFoundError:
            return True  # released meanwhile
        owner = self.holder()
        if owner is None:
            return True
        age = time.time() - before.st_mtime
        unreadable = not isinstance(owner.get("pid"), int) and age > UNREADABLE_GRACE_S
        dead_here = owner.get("host") == self.owner["host"] and "pid" in owner and not _pid_alive(owner["pid"])
        if not (dead_here or unreadable or age > self.stale_after):
            return False
        if unreadable:
            warnings.warn(
                f"{self.path} names no owner (empty or unreadable: its creator died as it wrote it), so it is stale; "
                "broke it."
            )
        aside = self.path.with_name(f"{self.path.name}.stale-{self.owner['host']}-{self.owner['pid']}")
        try:
            now = self.path.stat()
            if (now.st_ino, now.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
                return False  # taken or touched since: not the lock judged stale
            os.replace(self.path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass
        return True
