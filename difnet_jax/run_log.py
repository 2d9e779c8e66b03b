"""The run log: WORKDIR/metrics.jsonl, progress lines, and TensorBoard event files beside them.

metrics.jsonl is the source of truth (`MetricsLog`); `Progress` turns step metrics into
progress lines with steps/s and ETA; `EventLog` mirrors every record to TensorBoard.

TensorBoard writer: the `tensorboard` package's own pieces, its protos (`tensorboard.compat.proto`)
and its record framing (`tensorboard.summary.writer.record_writer`, the code under PyTorch's
SummaryWriter). That package is what a user installs anyway to view the events, and it holds
the reader the tests check them with; it needs no TensorFlow, and a second writer package
(tensorboardX) would only duplicate its protos. Each record is appended to the session's file
and the file closed again, so there is no background thread to close and a killed run loses
nothing it logged.

- `EventLog`: scalars and images of WORKDIR/events.out.tfevents.<time>.<host>.<pid>.<n>.difnet_jax,
  one file per session; a tag is written only at steps after the last one already logged
  (`last_steps` of metrics.jsonl), so a resumed run appends without repeating steps.
- `scalar_tags`: a metrics.jsonl record -> {tag: value}; the tags are the record's keys, a
  nested dict joined with '/', e.g. 'val/iou/background'.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

log = logging.getLogger(__name__)

NOT_LOGGED = ("step", "time")  # metrics.jsonl keys that are no scalar of their own
_SESSIONS = itertools.count()  # event files of this process: two sessions in one second get two files


def scalar_tags(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's numbers by tag ('val/iou' -> {'val/iou/<class>': ...}); 'step', 'time' and nulls left out."""
    tags = {}
    for key, value in record.items():
        if not prefix and key in NOT_LOGGED:
            continue
        if isinstance(value, Mapping):
            tags.update(scalar_tags(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"{prefix}{key}"] = float(value)
    return tags


def last_steps(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Tag -> the last step some record logged it at."""
    steps: dict[str, int] = {}
    for record in records:
        for tag in scalar_tags(record):
            steps[tag] = max(steps.get(tag, -1), int(record["step"]))
    return steps


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


class EventLog:
    """Appends scalars and images to this session's event file in `logdir`, skipping steps already logged.

    `logged` maps each tag to the last step earlier sessions wrote it at (`last_steps`): a
    tag is written only at later steps. Images go with the record they come with: written
    when at least one of its scalars is. The file is created at the first write.
    """

    def __init__(self, logdir: str, logged: Mapping[str, int] | None = None):
        self.logdir = logdir
        self.logged = dict(logged or {})
        self.path: str | None = None

    def write(self, step: int, scalars: Mapping[str, float], images: Mapping[str, np.ndarray] | None = None) -> None:
        new = {tag: value for tag, value in scalars.items() if step > self.logged.get(tag, -1)}
        if not new:
            return
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in new.items()]
        for tag, picture in (images or {}).items():
            height, width = picture.shape[:2]
            values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=_png(picture))))
        self._append([event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))])
        self.logged.update(dict.fromkeys(new, step))

    def _append(self, events: list[event_pb2.Event]) -> None:
        if self.path is None:
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{next(_SESSIONS):03d}.difnet_jax")
            self.path = os.path.join(self.logdir, name)
            events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"), *events]
        with open(self.path, "ab") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())


class MetricsLog:
    """Appends one JSON object per line to WORKDIR/metrics.jsonl and mirrors it to TensorBoard (process 0 only).

    metrics.jsonl is the source of truth; every record gets 'time', the seconds the run has
    been training: counted from this log's creation (after data preparation and restore),
    plus the last 'time' of earlier sessions when the run resumes (the time between that
    record and the stop is not counted). The event files in WORKDIR
    (`EventLog`) get each record's numbers under its own keys, and the
    pictures passed with it, at steps after the last one metrics.jsonl already holds for
    that tag: a resumed run appends without repeating steps. `eval_steps` holds the steps
    with an evaluation record (read on every process: all of them decide alike whether a
    checkpoint still needs its evaluation).
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.time_offset, self.events, self.line_cut_short = 0.0, None, False
        records = self.read(workdir) if os.path.exists(self.path) else []
        self.eval_steps = {int(r["step"]) for r in records if "val/miou" in r and "step" in r}
        if jax.process_index() == 0:
            if os.path.exists(self.path) and os.path.getsize(self.path):
                with open(self.path, "rb") as f:  # a write cut short by a stop: the next record starts a line
                    f.seek(-1, os.SEEK_END)
                    self.line_cut_short = f.read(1) != b"\n"
            self.time_offset = max([r["time"] for r in records if isinstance(r.get("time"), (int, float))],
                                   default=0.0)
            self.events = EventLog(workdir, last_steps(records))
        self.start = time.perf_counter()

    @staticmethod
    def read(workdir: str) -> list[dict[str, Any]]:
        """The records of WORKDIR/metrics.jsonl in order; a line that is not JSON (a write cut short) is skipped."""
        path = os.path.join(workdir, "metrics.jsonl")
        records = []
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s line %d is not JSON; skipped.", path, number)
        return records

    def write(self, record: dict[str, Any], pictures: dict[str, np.ndarray] | None = None) -> None:
        if "val/miou" in record:
            self.eval_steps.add(int(record["step"]))
        if jax.process_index() == 0:
            record = {**record, "time": round(self.time_offset + time.perf_counter() - self.start, 3)}
            with open(self.path, "a") as f:
                f.write(("\n" if self.line_cut_short else "") + json.dumps(record) + "\n")
            self.line_cut_short = False
            self.events.write(record["step"], scalar_tags(record), pictures)


def format_seconds(seconds: float) -> str:
    """'1h05m', '3m07s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Step metrics since the last report: their means go to the log and metrics.jsonl, with steps/s and ETA.

    A report raises FloatingPointError, naming the step, if any step since the last one
    had a non-finite loss or gradient (unless such steps are being skipped). The ETA is the
    remaining steps at the measured rate plus the evaluations still to come (every `eval_every`
    steps and at the last) at the duration of the last one (`eval_seconds`, set by the training
    loop); before the first is measured it says how many it leaves out ("ETA 9m34s + 4 evaluations").
    """

    def __init__(self, metrics_log: MetricsLog, schedule: optax.Schedule, num_steps: int, skip_nonfinite: bool,
                 first_step: int, eval_every: int | None = None):
        self.metrics_log, self.schedule, self.num_steps = metrics_log, schedule, num_steps
        self.skip_nonfinite, self.eval_every = skip_nonfinite, eval_every
        self.eval_seconds: float | None = None
        self.pending: list[dict] = []
        self.first_pending_step = first_step + 1
        self.restart_clock()

    def evaluations_left(self, step: int) -> int:
        """Evaluations at steps step..num_steps (a step's report comes before its evaluation)."""
        if not self.eval_every or step > self.num_steps:
            return 0
        multiples = self.num_steps // self.eval_every - (step - 1) // self.eval_every
        return multiples + (1 if self.num_steps % self.eval_every else 0)

    def eta(self, step: int, steps_per_sec: float) -> str:
        seconds = (self.num_steps - step) / steps_per_sec
        evaluations = self.evaluations_left(step)
        if evaluations and self.eval_seconds is None:
            return f"{format_seconds(seconds)} + {evaluations} evaluation{'s' if evaluations > 1 else ''}"
        return format_seconds(seconds + evaluations * (self.eval_seconds or 0.0))

    def restart_clock(self) -> None:
        self.start = time.perf_counter()

    def add(self, step_metrics: dict) -> None:
        self.pending.append(step_metrics)

    def report(self, step: int) -> None:
        stacked = jax.device_get(self.pending)
        nonfinite = [i for i, m in enumerate(stacked) if m["nonfinite"]]
        if nonfinite and not self.skip_nonfinite:
            raise FloatingPointError(
                f"non-finite loss or gradient at step {self.first_pending_step + nonfinite[0]} "
                f"(loss {stacked[nonfinite[0]]['loss']}); the last checkpoint before it is kept. "
                "Set config.train.skip_nonfinite=True to skip such steps instead."
            )
        finite = [m for m in stacked if not m["nonfinite"]] or stacked
        summary = {key: float(np.mean([m[key] for m in finite])) for key in stacked[0] if key != "nonfinite"}
        steps_per_sec = len(stacked) / (time.perf_counter() - self.start)
        record = {"step": step, **summary, "skipped_steps": len(nonfinite), "lr": float(self.schedule(step - 1)),
                  "steps_per_sec": steps_per_sec}
        self.metrics_log.write(record)
        log.info("step %d/%d  loss %.4f  acc %.3f  lr %.2e  %.2f steps/s  ETA %s%s", step, self.num_steps,
                 summary["loss"], summary["pixel_accuracy"], record["lr"], steps_per_sec,
                 self.eta(step, steps_per_sec),
                 f"  ({len(nonfinite)} non-finite steps skipped)" if nonfinite else "")
        self.pending, self.first_pending_step = [], step + 1
        self.restart_clock()
