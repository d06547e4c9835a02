"""The runs table as text cells: what the Runs tab shows for each stored run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from workbench.service import RunRecord
from workbench.service.run_query import best_error_text

#: The standard columns, short enough that the table fits 1024 px with cells wrapped; preset and epoch
#: are among the "More columns".
RUN_TABLE_COLUMNS = [
    "id", "name", "group", "dataset", "status", "progress", "best err", "last err", "img/s", "device", "started",
    "duration", "finish",
]
#: Widths of the standard columns (percent of the table), in RUN_TABLE_COLUMNS order.
RUN_TABLE_WIDTHS = ["4%", "14%", "12%", "7%", "9%", "8%", "7%", "6%", "5%", "8%", "7%", "6%", "7%"]


def format_duration(seconds: float | None) -> str:
    """"42 s", "3 min 05 s", "2 h 07 min"; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _percent(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}%"


def run_duration(run: RunRecord, now: datetime | None = None, trained_seconds: float | None = None) -> float | None:
    """Seconds the run has taken across resumes: the seconds its training loop logged (`trained_seconds`, kept
    across resumes), or, when longer, the current stretch from start to finish (or to `now` while it runs)."""
    stretch = None
    if run.started_at is not None:
        end = run.finished_at if run.finished_at is not None and run.status != "running" else now or datetime.now(UTC)
        stretch = (end - run.started_at).total_seconds()
    known = [seconds for seconds in (stretch, trained_seconds) if seconds is not None]
    return max(known) if known else None


def run_status(run: RunRecord) -> str:
    """The status cell; a queued run says why it waits (e.g. no cluster node has the GPU it asks for), a compiled
    run why its first step takes long."""
    if run.status == "queued" and run.error_message:
        return f"queued: {run.error_message}"
    compiling = run.status == "running" and not run.iteration and (run.spec or {}).get("train", {}).get("compile")
    return "running: compiling (the first step can take a minute)" if compiling else run.status


def finish_cell(finish: datetime | None, now: datetime) -> str:
    """"14:32 (in 12 min 05 s)" in local time, with the date when it is not today; empty for None."""
    if finish is None:
        return ""
    local = finish.astimezone()
    clock = local.strftime("%H:%M" if local.date() == now.astimezone().date() else "%Y-%m-%d %H:%M")
    return f"{clock} (in {format_duration((finish - now).total_seconds())})"


def run_row(run: RunRecord, now: datetime | None = None, finish: datetime | None = None,
            trained_seconds: float | None = None) -> list[str | int]:
    """The table cells of one run, in RUN_TABLE_COLUMNS order; `finish` is when it should finish, if known;
    images/s is over the whole run."""
    now = now or datetime.now(UTC)
    total = run.total_iterations
    progress = f"{100 * run.iteration / total:.0f}% ({run.iteration}/{total})" if total else ""
    started = run.started_at.astimezone().strftime("%Y-%m-%d %H:%M") if run.started_at else ""
    return [
        run.id, run.name, run.group_name or "", run.dataset or "", run_status(run), progress,
        best_error_text(run), _percent(run.last_test_error),
        "" if run.images_per_s is None else f"{run.images_per_s:,.0f}",
        run.device or "", started, format_duration(run_duration(run, now, trained_seconds)), finish_cell(finish, now),
    ]


def run_rows(runs: Sequence[RunRecord], now: datetime | None = None,
             finishes: Mapping[int, datetime] | None = None,
             trained_seconds: Mapping[int, float] | None = None) -> list[list[str | int]]:
    """Table cells of several runs; `finishes` are expected finish times by run id, `trained_seconds` the
    seconds each has trained (see `run_duration`)."""
    now, finishes, trained_seconds = now or datetime.now(UTC), finishes or {}, trained_seconds or {}
    return [run_row(run, now, finishes.get(run.id), trained_seconds.get(run.id)) for run in runs]


#: What a run's label may show after "#id name", in order.
LABEL_PARTS = ("dataset", "group")
#: The Compare tab's legend choices: what each shows after "#id name".
LEGEND_CHOICES = {"name": (), "name + dataset": ("dataset",), "name + group": ("group",),
                  "name + dataset + group": LABEL_PARTS}


def label_extras(run: RunRecord, parts: Sequence[str] = LABEL_PARTS) -> list[str]:
    """The run's dataset and group (those of `parts` it has), as its label shows them."""
    values = {"dataset": run.dataset or (run.spec or {}).get("data", {}).get("name"), "group": run.group_name}
    return [values[part] for part in parts if values[part]]


def run_label(run: RunRecord, parts: Sequence[str] = LABEL_PARTS) -> str:
    """How a run is named in pickers and legends: "#12 resnet20 · cifar10 · twin-3" (no status, so a picked entry
    keeps its label)."""
    return " · ".join([f"#{run.id} {run.name}", *label_extras(run, parts)])


def run_choices(runs: Sequence[RunRecord]) -> list[tuple[str, int]]:
    """Picker choices for runs: (their label, their id)."""
    return [(run_label(run), run.id) for run in runs]
