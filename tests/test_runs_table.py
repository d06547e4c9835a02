"""The runs table among many runs: filters, tags, spec columns, hiding identical columns, spec diffs (real SQLite)."""

import pytest

from storage import open_store
from storage.status import ALL_STATUSES, QUEUED, RUNNING
from workbench.service import Workbench
from workbench.service.run_query import RunFilter, filter_runs, spec_columns
from workbench.service.runs import possible_actions
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.runs_tab import spec_diff_html, table_view


@pytest.fixture
def service(tmp_path):
    with open_store(tmp_path) as store:
        for name, depth, shortcut, lr, status in (("plain20", 20, "none", 0.1, "completed"),
                                                  ("resnet20", 20, "A", 0.1, "queued"),
                                                  ("resnet56", 56, "A", 0.05, "completed")):
            spec = RunSpec(net=NetSpec(depth=depth, shortcut=shortcut), data=DataSpec(), train=TrainSpec(lr=lr))
            store.create_run(spec, name=name, preset=name, status=status,
                             group_name="ladder A" if depth == 20 else None)
        yield Workbench(store, None)


def test_filters_combine_text_status_group_tag_and_preset(service):
    def names(wanted: RunFilter) -> list[str]:
        return [run.name for run in filter_runs(service.list_runs(), wanted)]

    assert names(RunFilter(text="RESNET")) == ["resnet56", "resnet20"]
    assert names(RunFilter(text="resnet ladder")) == ["resnet20"]
    assert names(RunFilter(statuses=["completed"], groups=["ladder A"])) == ["plain20"]
    assert service.tag(3, "baseline, keep") == "Tags of run #3: baseline, keep."
    service.tag(1, "baseline")
    assert names(RunFilter(tags=["baseline"], presets=["resnet56"])) == ["resnet56"]
    service.tag(3, "baseline", remove=True)
    assert service.get_run(3).tags == ["keep"] and names(RunFilter(tags=["baseline"])) == ["plain20"]


def test_spec_columns_and_hiding_identical_ones_show_what_differs(service):
    runs = service.list_runs()
    assert {"train.lr", "net.depth", "net.shortcut", "data.name"} <= set(spec_columns(runs))
    columns, rows = table_view(runs, RunFilter(), ["train.lr", "net.depth", "data.name"], False)
    assert columns[-3:] == ["train.lr", "net.depth", "data.name"] and rows[0][-3:] == ["0.05", "56", "synthetic"]
    columns, rows = table_view(runs, RunFilter(statuses=["completed"]), ["train.lr", "net.depth", "data.name"], True)
    assert columns[:2] == ["id", "name"] and "train.lr" in columns and "net.depth" in columns
    assert "data.name" not in columns and "status" not in columns and len(rows) == 2


def test_spec_diff_lists_every_setting_and_highlights_differences_first(service):
    html = spec_diff_html([service.get_run(1), service.get_run(3)])
    assert html.startswith("<p>4 of ") and "settings differ" in html
    first_rows = html.split("<tr")[2:6]
    assert all('class="differs"' in row for row in first_rows)
    assert {row.split("<td>")[1].split("</td>")[0] for row in first_rows} == {
        "net.depth", "net.shortcut", "net.blocks", "train.lr"}
    assert "Pick two or more" in spec_diff_html([service.get_run(1)])


def test_each_status_allows_only_the_actions_that_can_act(tmp_path):
    with open_store(tmp_path) as store:
        spec = RunSpec(net=NetSpec(depth=20), data=DataSpec(), train=TrainSpec())
        made = {status: store.create_run(spec, name=status, status=QUEUED if status == RUNNING else status)
                for status in ALL_STATUSES}
        store.claim_run(made[RUNNING], "worker-1")
        allowed = {status: possible_actions(store.get_run(run_id)) for status, run_id in made.items()}
    assert allowed == {"queued": {"cancel", "delete"}, "running": {"cancel"}, "completed": {"delete"},
                       "failed": {"resume", "delete"}, "cancelled": {"resume", "delete"},
                       "interrupted": {"resume", "delete"}}
