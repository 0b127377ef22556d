"""Progress that suits where it is shown: live while it runs, one line in the record after.

- In a Jupyter kernel (JupyterLab, papermill) a bar is one text output that is replaced in place
  (a display with an id, updated at most twice a second), so a reader sees it move while it runs
  and an executed notebook keeps only its last state: one summary line per bar, not hundreds of
  progress lines.
- Anywhere else (a script, a console) it is an ordinary tqdm bar on stderr.
- When ``ENCODER_STUDY_CONSOLE`` names a file (``scripts/run_book.py`` sets it for the notebooks
  it runs), each update is also appended there as one JSON line, so the console that runs the
  book can show which training group is running, although the kernel's own output goes into the
  notebook.  ``notify`` appends a message there too (fallbacks, rebuilds), next to the warning the
  notebook shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

CONSOLE_ENV = "ENCODER_STUDY_CONSOLE"
MIN_INTERVAL_S = 0.5  # a kernel bar and the console file are updated at most this often


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where display() reaches a notebook), False in a plain process."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _console_write(event: dict) -> None:
    path = os.environ.get(CONSOLE_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
    except OSError:
        pass  # the console is a convenience; never let it stop a run


def notify(message: str) -> None:
    """Send a message to the console running the book (if any); the caller also warns as usual."""
    _console_write({"message": message})


class Progress:
    """A progress bar over ``total`` steps (or over an iterable), shown as suits the place.

    ``status(text)`` sets the text after the count (a loss, say); ``close(summary)`` ends the bar,
    replacing its line by ``summary`` when given.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.text, self.disabled = initial, "", disable
        self.start, self._last = time.perf_counter(), 0.0
        self._id = f"{os.getpid()}-{id(self)}-{time.monotonic_ns()}"
        self._bar, self._handle = None, None
        if disable:
            return
        if in_kernel():
            from IPython.display import display

            self._handle = display({"text/plain": self._line()}, raw=True, display_id=True)
        else:
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=True, file=sys.stderr)
        self._refresh(force=True)

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"

    def _line(self, summary: str | None = None) -> str:
        if summary is not None:
            return f"{self.desc}: {summary}" if self.desc else summary
        elapsed = time.perf_counter() - self.start
        rest = f", {self.text}" if self.text else ""
        return f"{self.desc}: {self._count()} [{elapsed:.0f} s{rest}]"

    def _refresh(self, force: bool = False, done: bool = False, summary: str | None = None) -> None:
        now = time.perf_counter()
        if not force and now - self._last < MIN_INTERVAL_S:
            return
        self._last = now
        if self._handle is not None:
            self._handle.update({"text/plain": self._line(summary)}, raw=True)
        _console_write(
            {
                "id": self._id,
                "desc": self.desc,
                "n": self.n,
                "total": self.total,
                "unit": self.unit,
                "status": summary if summary is not None else self.text,
                "done": done,
            }
        )

    def update(self, n: int = 1) -> None:
        if self.disabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        self._refresh(force=self.total is not None and self.n >= self.total)

    def status(self, text: str) -> None:
        if self.disabled:
            return
        self.text = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self, summary: str | None = None) -> None:
        if self.disabled:
            return
        self.disabled = True
        if summary is None:
            summary = f"{self._count()} in {time.perf_counter() - self.start:.1f} s"
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
            self._bar.close()
        self._refresh(force=True, done=True, summary=summary)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this Progress was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


progress = Progress  # the lower-case name reads like tqdm: ``for x in progress(items, desc=...)``
