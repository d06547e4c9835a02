"""The reproduction command end to end on a tiny CIFAR-10 subset (real data, real worker, PNG figures)."""

import logging
import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest

from storage import open_store
from workbench.service import reproduction
from workbench.service.reproduction import DEFAULT_DATA, ReproductionConfig, reproduce

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not DEFAULT_DATA.exists(), reason=f"needs CIFAR-10 at {DEFAULT_DATA} (../shared/data)")
def test_reproduce_trains_lesions_and_writes_the_report(tmp_path):
    config = ReproductionConfig(per_class_cap=13, iterations=2, warmup_iterations=1, depths=(8, 14), lesion_images=16,
                                lesion_draws=1, lesion_max_k=2, profile_batch=16)
    result = reproduce(tmp_path / "home", tmp_path / "docs", config)
    assert set(result.run_ids) == {"plain8", "resnet8", "plain14", "resnet14"}
    assert result.verdict["observed"] in (True, False)
    assert set(result.lesions) == {"resnet14", "plain14"}
    for path in result.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = result.report.read_text()
    assert "--per-class-cap 13 --iterations 2 --warmup 1 --depths 8 14" in report
    assert "figures/lesion_by_k.png" in report and result.verdict["verdict"] in report
    with open_store(tmp_path / "home") as store:
        analyses = store.list_analyses(result.run_ids["resnet14"], "lesion")
    assert len(analyses) == 1
    # A second call reuses the trained runs and the stored lesion studies.
    again = reproduce(tmp_path / "home", tmp_path / "docs", config)
    assert again.run_ids == result.run_ids
    with open_store(tmp_path / "home") as store:
        assert len(store.list_analyses(result.run_ids["resnet14"], "lesion")) == 1
        assert len(store.list_runs()) == 4
    assert Path(again.report).exists()


def test_without_a_png_renderer_a_figure_is_written_as_html_with_what_to_install(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reproduction, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setitem(sys.modules, "kaleido", None)  # an import of kaleido fails, as when absent
    with caplog.at_level(logging.WARNING, logger=reproduction.__name__):
        written = reproduction.write_png(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), tmp_path / "figures" / "f.png")
    assert written == tmp_path / "figures" / "f.html" and not (tmp_path / "figures" / "f.png").exists()
    assert "Plotly.newPlot" in written.read_text()
    assert "apt-get install chromium or pip install kaleido" in caplog.text
