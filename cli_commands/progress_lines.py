"""Progress for logs and pipes: one plain line on stderr every few seconds.

A rich progress bar draws nothing when stderr is not a terminal, so long work (profiling
YOLOv3 takes minutes) would be silent in a log. :class:`LineProgress` takes the calls a
``rich.progress.Progress`` gets in this CLI (``add_task``, ``update``, ``advance``,
``remove_task``, ``start``, ``stop``, a context manager) and prints the latest task's state
every :data:`EVERY_S` seconds from a background thread (a single step that takes minutes, such
as counting a large model, still shows it is alive), and a last line when a task that was
reported finishes; work shorter than that prints nothing::

    profiling zoo:yolov3 torch batch 1: 3/12 (25%), 0:41 elapsed, ETA 2:03
"""

from __future__ import annotations

import os
import threading
import time

# seconds between lines; SURGERY_PROGRESS_S overrides it (tests use a fraction of a second)
try:
    EVERY_S = max(0.01, float(os.environ.get("SURGERY_PROGRESS_S", "5")))
except ValueError:
    EVERY_S = 5.0


def clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Task:
    def __init__(self, description: str, total, completed: float):
        self.description, self.total, self.completed = description, total, completed
        self.t0 = time.monotonic()
        self.start_completed = completed  # a resumed run starts part-way: its rate counts from here


class LineProgress:
    def __init__(self, console, every_s: float = EVERY_S, clock_fn=time.monotonic):
        self.console, self.every_s, self._now = console, every_s, clock_fn
        self._tasks: dict[int, _Task] = {}
        self._next_id = 0
        self._printed: set[int] = set()  # tasks a line was printed for
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ rich.progress.Progress's calls

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, name="surgery-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None

    def add_task(self, description: str, total=None, completed: float = 0, **_) -> int:
        with self._lock:
            tid = self._next_id
            self._next_id += 1
            self._tasks[tid] = _Task(description, total, completed)
            self._tasks[tid].t0 = self._now()
        self.start()
        return tid

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, completed=None, total=None, description=None, advance=None, **_) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None:
                return
            if total is not None:
                t.total = total
            if description is not None:
                t.description = description
            if advance is not None:
                t.completed += advance
            if completed is not None:
                t.completed = completed
            done = t.total is not None and t.completed >= t.total > 0
            final = done and task_id in self._printed and not getattr(t, "finished", False)
            if final:
                t.finished = True
                text = self.line(t, self._now())
        if final:
            self._print(text)

    # ------------------------------------------------------------------ the line

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                if not self._tasks:
                    continue
                tid = max(self._tasks)
                t = self._tasks[tid]
                if getattr(t, "finished", False):
                    continue
                self._printed.add(tid)
                text = self.line(t, self._now())
            self._print(text)

    def line(self, t: _Task, now: float) -> str:
        elapsed = now - t.t0
        text = t.description or "working"
        if t.total:
            pct = 100 * t.completed / t.total
            text += f": {t.completed:g}/{t.total:g} ({pct:.0f}%), {clock(elapsed)} elapsed"
            rate_done = t.completed - t.start_completed
            if 0 < rate_done and t.completed < t.total:
                text += f", ETA {clock(elapsed / rate_done * (t.total - t.completed))}"
        else:
            text += f": {clock(elapsed)} elapsed"
        return text
