"""A logger that writes the metrics lines as CSV (``ganplug train --logger csv``): the smallest
example of the ``ganplug_loggers`` hook. No torch import: a logger only gets numbers and paths."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class CSVLogger:
    """``RUN_DIR/<filename>``: a header of ``step`` and the first line's keys, then one row per
    metrics line (keys that appear later are left out, missing ones blank). A resumed run keeps
    the rows up to the step it resumed from and appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None

    def start(self, config: dict[str, Any]) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            self.columns = list(reader.fieldnames or ["step"])
            kept = [row for row in reader if int(row["step"]) <= config["start_step"]]
        self._write(kept, "w")

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = ["step", *values]
            self._write([], "w")
        self._write([{"step": step, **{key: value for key, value in values.items() if key in self.columns}}], "a")

    def images(self, step: int, path: Path) -> None:
        """Pictures are not tabular: nothing to do."""

    def evaluation(self, step: int, results: dict[str, dict[str, float]]) -> None:
        """Evaluations stay in metrics.jsonl."""

    def close(self) -> None:
        """Every row is on disk already."""

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        """``rows`` appended (``"a"``), or the header and ``rows`` in place of the file (``"w"``)."""
        with open(self.path, mode, newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, self.columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)


def csv_logger(run_dir: Path, filename: str = "metrics.csv") -> CSVLogger:
    """The factory ganplug calls: ``factory(run_dir, **options)``."""
    from ganplug.errors import GanplugError

    if not filename or Path(filename).name != filename:
        raise GanplugError(f"logger csv: filename must be a plain file name, got {filename!r}")
    return CSVLogger(Path(run_dir) / filename)
