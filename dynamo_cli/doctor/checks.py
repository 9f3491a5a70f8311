"""The doctor's frame: a result row, the context checks share, and a runner with a deadline.

Checks run at once, each in a daemon thread, so one slow probe (a DNS lookup, a subprocess) costs its
own time only; whatever has not finished by the deadline becomes a WARN row instead of a wait.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dynamo_cli.config.models import DynamoConfig

logger = logging.getLogger(__name__)

Status = Literal["PASS", "WARN", "FAIL", "INFO"]
STATUSES: tuple[Status, ...] = ("PASS", "WARN", "FAIL", "INFO")
DEADLINE_S = 2.5  # every check together, so `dynamo doctor` answers in under 3 s


@dataclass(frozen=True, slots=True)
class Result:
    """One row: PASS, WARN (runs, but not as well as it could), FAIL (the profile cannot run) or INFO
    (not needed by this profile; shown for the record). ``fix`` is one line, for anything not PASS."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class Context:
    """What checks read: the resolved profile and the machine's parts, each replaceable in tests."""

    cfg: DynamoConfig
    nvml: Any = None  # an object with pynvml's functions; None: pynvml itself
    infiniband: Path = Path("/sys/class/infiniband")
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    which: Callable[[str], str | None] = shutil.which
    torch_probe: Callable[[float], dict[str, Any] | None] | None = None  # None: a python subprocess
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time any check asks for ``key``; the others wait for that answer."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]


CheckFn = Callable[[Context], Iterable[Result]]


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # the row's name if the check cannot answer
    run: CheckFn


@dataclass
class Report:
    results: list[Result]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return not any(r.status == "FAIL" for r in self.results)

    def counts(self) -> dict[Status, int]:
        return {s: sum(1 for r in self.results if r.status == s) for s in STATUSES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [r.as_dict() for r in self.results],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _run_one(check: Check, ctx: Context) -> list[Result]:
    try:
        return list(check.run(ctx))
    except Exception as e:  # a bug in a check must not hide the other rows
        logger.debug("doctor check %s crashed", check.name, exc_info=True)
        return [
            Result(
                check.name,
                "FAIL",
                f"the check crashed: {type(e).__name__}: {e}",
                "a bug in `dynamo doctor`: please report it with this line",
            )
        ]


def run_checks(checks: Iterable[Check], ctx: Context, *, deadline_s: float = DEADLINE_S) -> Report:
    """Run every check at once; rows keep the checks' order."""
    t0 = time.perf_counter()
    checks = list(checks)
    answers: list[list[Result] | None] = [None] * len(checks)

    def work(i: int) -> None:
        answers[i] = _run_one(checks[i], ctx)

    # Daemon threads: a probe stuck past the deadline must not hold the process open at exit.
    threads = [
        threading.Thread(target=work, args=(i,), name=f"doctor-{c.name}", daemon=True)
        for i, c in enumerate(checks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline_s - (time.perf_counter() - t0)))
    results: list[Result] = []
    for check, answer in zip(checks, answers, strict=True):
        if answer is None:
            answer = [
                Result(
                    check.name,
                    "WARN",
                    f"no answer within {deadline_s:g} s",
                    "run `dynamo doctor` again; if it persists, that part of the machine is hanging",
                )
            ]
        results.extend(answer)
    return Report(results, time.perf_counter() - t0)
