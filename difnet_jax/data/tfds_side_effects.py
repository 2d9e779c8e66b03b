"""Two side effects of TFDS this project removes: a temp folder per look at an unprepared dataset, and progress
bars' terminal codes in redirected logs.

- Temp folders: `tfds.builder(...)` of a dataset that is not prepared calls `DatasetInfo.initialize_from_bucket`,
  which makes a `/tmp/tmp*tfds` folder for metadata from TFDS's GCS bucket before it asks whether the bucket
  has any, and leaves it empty when not (never, for this project's builders; GCS is off by default). Every
  prepare, every "not prepared" check and every class-name lookup left one. `install()` (run when
  `difnet_jax.data` is imported) makes the folder only once there are files to copy.
- Progress bars: generating a dataset shows tqdm bars ("Generating train examples...", "Shuffling ..."),
  whose redraws (carriage returns, cursor-up codes `ESC[A`) garble a log file. `plain_progress()` replaces
  them, where stderr is not a terminal, by one log line per bar every `LINE_EVERY_S` seconds and when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator

from tensorflow_datasets.core import dataset_info
from tensorflow_datasets.core.utils import gcs_utils, tqdm_utils

log = logging.getLogger(__name__)

LINE_EVERY_S = 30.0
_original_initialize_from_bucket = dataset_info.DatasetInfo.initialize_from_bucket


def _initialize_from_bucket(self) -> None:
    """TFDS's, but returns before making its temp folder when the bucket has no files for the dataset."""
    if not gcs_utils.gcs_dataset_info_files(self.full_name):
        return
    _original_initialize_from_bucket(self)


def install() -> None:
    """Replaces `DatasetInfo.initialize_from_bucket` (idempotent)."""
    dataset_info.DatasetInfo.initialize_from_bucket = _initialize_from_bucket


class LineProgress:
    """A tqdm stand-in that logs plain lines: 'Generating train examples: 600/2000 (31 s)'.

    Covers what TFDS asks of a bar: iterating, `update`, a settable `total`, `refresh`, `clear`, `close`,
    a context manager, and the class's `get_lock` and `write`.
    """

    _lock = threading.RLock()

    def __init__(self, iterable=None, desc: str = "", total=None, unit: str = "it", **_):
        self.iterable, self.desc, self.unit = iterable, desc.rstrip(". "), unit.strip()
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n, self.start = 0, time.monotonic()
        self.last_line, self.logged_n, self.closed = self.start, 0, False

    @classmethod
    def get_lock(cls):
        return cls._lock

    @staticmethod
    def write(text: str, end: str = "\n", **_) -> None:
        sys.stderr.write(text + end)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_line >= LINE_EVERY_S:
            self._line()

    def refresh(self, *_, **__) -> None:
        pass

    def clear(self, *_, **__) -> None:
        pass

    def close(self) -> None:
        if not self.closed and self.n != self.logged_n:
            self._line()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self) -> None:
        self.last_line, self.logged_n = time.monotonic(), self.n
        total = f"/{self.total}" if self.total else ""
        log.info("%s: %d%s %s (%.0f s)", self.desc, self.n, total, self.unit, self.last_line - self.start)


@contextlib.contextmanager
def plain_progress() -> Iterator[None]:
    """TFDS's progress bars as `LineProgress` lines while inside, where stderr is not a terminal."""
    if sys.stderr.isatty():
        yield
        return
    bars = tqdm_utils.tqdm_lib
    tqdm_utils.tqdm_lib = type("PlainBars", (), {"tqdm": LineProgress})
    try:
        yield
    finally:
        tqdm_utils.tqdm_lib = bars
