"""Progress of long work: counts and rates at a terminal, coarse lines in a log, silence by default.

Core functions report through a `Progress` (`fx.progress`, or a `progress=` argument) whose default,
`NULL`, does nothing; the interfaces choose what it shows:

- `bars()`: tqdm bars on stderr, when `enabled()`: `factory --progress/--no-progress`, else
  `FACTORY_PROGRESS=1/0`, else only when stderr is a terminal and the command prints no JSON;
- `LogLines(log)`: one line when a step starts and one when it ends, with its count and rate (the Dagster
  assets pass `context.log.info`: coarse, never per item);
- `tee(a, b)`: both.

A step is counted in units (`items`, `rows`, `steps`):

    with progress.step("predict", total=3 * n, unit="items") as s:
        for lb in labelers:
            ...
            s.update(n, note=lb.name)
    for row in progress.track(rows, "ingest: validate", unit="rows"):
        ...
    with progress.work("fuse", n):      # n units, counted when the block ends
        ...
"""
from __future__ import annotations

import functools
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TextIO

ENV = "FACTORY_PROGRESS"
_EVERY = 0.1  # seconds between two counts of a tracked loop (tqdm redraws at most every 0.2 s anyway)
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Step:
    """One counted piece of work; `update(n, note)` adds n units done (note: what was just done)."""

    __slots__ = ("progress", "desc", "total", "unit", "n", "started", "state")

    def __init__(self, progress: "Progress", desc: str, total: int | None, unit: str):
        self.progress, self.desc, self.total, self.unit = progress, desc, total, unit
        self.n, self.started, self.state = 0, time.perf_counter(), {}

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.n += n
        self.progress._update(self, n, note)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __enter__(self) -> "Step":
        self.started = time.perf_counter()
        if self.progress.active:
            self.progress.__dict__.setdefault("_open", []).append(self)
        self.progress._start(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self in self.progress.__dict__.get("_open", ()):
            self.progress._open.remove(self)
        self.progress._end(self, exc_type is None)


class Progress:
    """Reports nothing: the default of every core function (`NULL`)."""

    active = False

    def step(self, desc: str, total: int | None = None, unit: str = "items") -> Step:
        """A step to use as a context manager; call `update` as units are done."""
        return Step(self, desc, None if total is None else int(total), unit)

    def track(self, iterable: Iterable, desc: str, total: int | None = None, unit: str = "items", *,
              weight: int = 1, label: Callable[[object], str] | None = None) -> Iterable:
        """`iterable`, counting `weight` units per element once it is done (the iterable itself when nothing is
        shown); `label(element)` names the element being worked on."""
        if not self.active:
            return iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable) * weight
        return self._track(iterable, desc, total, unit, weight, label)

    def _track(self, iterable, desc, total, unit, weight, label) -> Iterator:
        with self.step(desc, total, unit) as s:
            pending, last = 0, time.perf_counter()
            for x in iterable:
                if label is not None:
                    s.update(0, note=label(x))
                yield x
                pending += weight
                now = time.perf_counter()
                if now - last >= _EVERY:  # a slow element counts at once; fast ones are counted in bunches
                    s.update(pending)
                    pending, last = 0, now
            if pending:
                s.update(pending)

    @contextmanager
    def work(self, desc: str, n: int, unit: str = "items") -> Iterator[Step]:
        """A step of `n` units that are all counted when the block ends (for one vectorised call)."""
        with self.step(desc, n, unit) as s:
            yield s
            if s.n < n:
                s.update(int(n) - s.n)

    def note(self, text: str) -> None:
        """Say what the innermost open step is doing now (a phase of a long step, e.g. 'certify')."""
        open_steps = self.__dict__.get("_open")
        if open_steps:
            open_steps[-1].update(0, note=text)

    # what a reporter shows; the base shows nothing
    def _start(self, step: Step) -> None:
        pass

    def _update(self, step: Step, n: int, note: str | None) -> None:
        pass

    def _end(self, step: Step, ok: bool) -> None:
        pass


NULL = Progress()


class _AboveBars:
    """stdout while bars are drawn on the same terminal: each line is written above the bars (tqdm.write, the
    redirection recipe of tqdm's documentation), so a `print` inside a step does not land on a bar's line."""

    def __init__(self, stream: TextIO, bar_file: TextIO):
        self.stream, self.bar_file = stream, bar_file

    def write(self, text: str) -> int:
        from tqdm import tqdm

        if text.rstrip():
            with tqdm.external_write_mode(file=self.bar_file):
                self.stream.write(text if text.endswith("\n") else text + "\n")
                self.stream.flush()
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class Bars(Progress):
    """tqdm bars (count, rate, elapsed; percentage and ETA when the total is known) on `file` (stderr)."""

    active = True

    def __init__(self, file: TextIO | None = None):
        self.file = file
        self._stdout: TextIO | None = None  # the real stdout while lines are routed above the bars
        self._depth = 0  # bars open now

    def _start(self, step: Step) -> None:
        from tqdm import tqdm

        file = self.file or sys.stderr
        if self._stdout is None and _isatty(sys.stdout) and _isatty(file):
            self._stdout, sys.stdout = sys.stdout, _AboveBars(sys.stdout, file)
        self._depth += 1
        step.state[self] = tqdm(total=step.total, desc=step.desc, unit=f" {step.unit}", file=file,
                                leave=True, dynamic_ncols=True, mininterval=0.2, disable=False)

    def _update(self, step: Step, n: int, note: str | None) -> None:
        bar = step.state.get(self)
        if bar is not None:
            if note:
                bar.set_postfix_str(note, refresh=not n)  # a phase change shows at once
            if n:
                bar.update(n)

    def _end(self, step: Step, ok: bool) -> None:
        bar = step.state.pop(self, None)
        if bar is not None:
            bar.leave = ok  # a step that stopped early (an error, or waiting for people) leaves no bar behind
            bar.close()
            self._depth -= 1
        if self._stdout is not None and not self._depth:
            sys.stdout, self._stdout = self._stdout, None


def _count(step: Step) -> str:
    return f"{step.n:,} {step.unit}" if step.total is None else f"{step.n:,}/{step.total:,} {step.unit}"


class LogLines(Progress):
    """Two lines per step through `log` (e.g. Dagster's `context.log.info`): its start and total, then its
    count, time and rate.  Never one line per item."""

    active = True

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def _start(self, step: Step) -> None:
        self.log(f"{step.desc}: started" + (f" ({step.total:,} {step.unit})" if step.total is not None else ""))

    def _end(self, step: Step, ok: bool) -> None:
        t = step.elapsed
        rate = f", {step.n / t:,.0f} {step.unit}/s" if t > 0 and step.n else ""
        self.log(f"{step.desc}: {'done' if ok else 'stopped after'} {_count(step)} in {t:.1f} s{rate}")


class Tee(Progress):
    """Every step reported by each of `reporters`."""

    def __init__(self, *reporters: Progress):
        self.reporters = [r for r in reporters if r.active]
        self.active = bool(self.reporters)

    def _start(self, step: Step) -> None:
        for r in self.reporters:
            r._start(step)

    def _update(self, step: Step, n: int, note: str | None) -> None:
        for r in self.reporters:
            r._update(step, n, note)

    def _end(self, step: Step, ok: bool) -> None:
        for r in self.reporters:
            r._end(step, ok)


def tee(*reporters: Progress) -> Progress:
    """One reporter for all of `reporters` (NULL when none shows anything)."""
    active = [r for r in reporters if r.active]
    return NULL if not active else active[0] if len(active) == 1 else Tee(*active)


# ----------------------------------------------------------------------------- when bars are shown
_chosen: bool | None = None  # decided once by the command line, before Dagster captures the streams
_stream: TextIO | None = None


def _from_env() -> bool | None:
    v = os.environ.get(ENV, "").strip().lower()
    return True if v in _ON else False if v in _OFF else None


def enabled(json: bool = False) -> bool:
    """Whether bars are shown: the command line's choice, else FACTORY_PROGRESS=1/0, else stderr is a
    terminal and no JSON is printed."""
    if _chosen is not None:
        return _chosen
    env = _from_env()
    if env is not None:
        return env
    return not json and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def configure(flag: bool | None, json: bool = False) -> None:
    """Decide once for this process (the CLI: --progress/--no-progress, or None to follow FACTORY_PROGRESS and
    the terminal), and keep a handle on stderr as it is now: a Dagster run in this process points file
    descriptor 2 at its compute-log file while a step runs, and the bars belong on the terminal, not in the log."""
    global _chosen, _stream
    reset()
    _chosen = flag if flag is not None else enabled(json)
    if _chosen:
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, ValueError, OSError):  # a captured stream (click's CliRunner, pytest): use it
            _stream = sys.stderr
        else:
            _stream = os.fdopen(os.dup(fd), "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8")


def reset() -> None:
    """Forget the command line's choice (back to FACTORY_PROGRESS and the terminal)."""
    global _chosen, _stream
    if _stream is not None and _stream is not sys.stderr and not _stream.closed:
        try:
            _stream.close()
        except OSError:
            pass
    _chosen, _stream = None, None


def bars(auto: bool = True) -> Progress:
    """tqdm bars on stderr when `enabled()`, else NULL.  With auto=False (Dagster assets), bars only when
    the command line or FACTORY_PROGRESS asked for them: a run `dagster dev` launches logs, it draws no bars."""
    on = enabled() if auto else (_chosen if _chosen is not None else bool(_from_env()))
    return Bars(_stream) if on else NULL


def counted(desc: str, unit: str = "items", count: Callable[[object], int] = len) -> Callable:
    """Decorate a core step `f(fx, ...)` so `fx.progress` reports it as one step of `count(result)` units:
    e.g. `@counted("route")` on a function returning one row per item."""
    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(fx, *args, **kwargs):
            with getattr(fx, "progress", NULL).step(desc, None, unit) as s:
                out = f(fx, *args, **kwargs)
                s.update(count(out))
            return out

        return wrapper

    return deco
