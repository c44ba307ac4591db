"""Rendering, plots and the leaderboard/compare/plot commands, end to end on real files."""
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bkdbench.cli.results import register
from bkdbench.leaderboard import render
from bkdbench.leaderboard.aggregate import summarise
from bkdbench.leaderboard.store import write_row
from bkdbench.paths import leaderboard_dir, plots_dir, results_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (method, imbalance, seed, top1, ece): "bkd" wins at IF 100, "ldam_drw" at IF 10.
RUNS = [("bkd", 100, 0, 59.0, 4.0), ("bkd", 100, 1, 61.0, 6.0),
        ("ldam_drw", 100, 0, 55.0, 3.0), ("ldam_drw", 100, 1, 56.0, 2.0),
        ("bkd", 10, 0, 80.0, 1.0), ("ldam_drw", 10, 0, 82.5, 7.0)]


def frame_of(runs=RUNS, dataset="cifar10"):
    return pd.DataFrame([{"dataset": dataset, "imbalance_factor": float(f), "method": m, "seed": s,
                          "data_seed": 0, "status": "finished", "top1": t, "ece": e, "params": "{}"}
                         for m, f, s, t, e in runs])


@pytest.fixture
def results(tmp_path):
    """A results folder whose leaderboard holds RUNS plus a failed run."""
    board = leaderboard_dir(tmp_path)
    for i, (method, factor, seed, top1, ece) in enumerate(RUNS):
        counts = [500, 120, 40, 9, 5]
        write_row(board, {
            "run_id": f"run{i}", "suite": "digits-lt", "dataset": "cifar10",
            "imbalance_factor": factor, "data_seed": 0, "method": method, "seed": seed,
            "status": "finished", "top1": top1, "ece": ece,
            "per_class_acc": [top1 + 30, top1 + 10, top1, top1 - 10, top1 - 30],
            "class_counts": counts})
    write_row(board, {"run_id": "broken", "method": "ce", "status": "failed", "error": "oom"})
    return tmp_path


def invoke(*args, env=None):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_markdown_has_cells_in_paper_order_and_bold_best():
    text = render.to_markdown(summarise(frame_of()), "top1")
    assert "### cifar10" in text and "balanced test top-1 %, last epoch" in text
    assert "| method | IF 100 | IF 10 |" in text  # high to low, like papers
    assert "| bkd | **60.00 ± 1.41 (2)** | 80.00 ± – (1) |" in text
    assert "| ldam_drw | 55.50 ± 0.71 (2) | **82.50 ± – (1)** |" in text


def test_latex_is_booktabs_with_textbf_best_and_escaped_names():
    text = render.to_latex(summarise(frame_of()), "top1")
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}",
                  r"ldam\_drw & 55.50 $\pm$ 0.71 (2) & \textbf{82.50 $\pm$ -- (1)} \\",
                  r"bkd & \textbf{60.00 $\pm$ 1.41 (2)} & 80.00 $\pm$ -- (1) \\"):
        assert piece in text


def test_lower_is_better_for_ece():
    text = render.to_markdown(summarise(frame_of(), "ece"), "ece")
    # ece means at IF 100: bkd 5.0, ldam_drw 2.5 -> ldam_drw is best; at IF 10 bkd (1.0).
    assert "| ldam_drw | **2.50 ± 0.71 (2)** | 7.00 ± – (1) |" in text
    assert "| bkd | 5.00 ± 1.41 (2) | **1.00 ± – (1)** |" in text


def test_csv_round_trips_the_numbers():
    table = pd.read_csv(io.StringIO(render.to_csv(summarise(frame_of()))))
    got = table.set_index(["label", "imbalance_factor"])
    assert got.loc[("bkd", 100.0), "mean"] == 60.0 and got.loc[("bkd", 100.0), "n"] == 2
    assert got.loc[("ldam_drw", 100.0), "std"] == pytest.approx(0.7071, abs=1e-4)
    assert set(table["metric"]) == {"top1"}


def test_rich_table_highlights_the_best_cell_per_column():
    [(dataset, table)] = render.leaderboard_tables(summarise(frame_of()), "top1")
    assert dataset == "cifar10" and "mean ± std over n seeds" in table.caption
    assert [c.header for c in table.columns] == ["method", "IF 100", "IF 10"]
    labels = list(table.columns[0].cells)
    high, low = list(table.columns[1].cells), list(table.columns[2].cells)
    assert high[labels.index("bkd")] == "[bold green]60.00 ± 1.41 (2)[/]"
    assert low[labels.index("ldam_drw")] == "[bold green]82.50 ± – (1)[/]"
    assert low[labels.index("bkd")] == "80.00 ± – (1)"


def test_results_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    assert results_dir(None) == results_dir("") and results_dir(None).local == Path("results").absolute()
    monkeypatch.setenv("BKDBENCH_RESULTS", str(tmp_path / "env"))
    assert results_dir(None).local == tmp_path / "env"
    assert results_dir(tmp_path / "opt").local == tmp_path / "opt"
    assert leaderboard_dir(tmp_path).local == tmp_path / "leaderboard"
    uri = results_dir("s3://bucket/results?endpoint_override=localhost:9000&scheme=http")
    assert str(leaderboard_dir(uri)) == "s3://bucket/results/leaderboard?endpoint_override=localhost:9000&scheme=http"
    assert plots_dir(uri) == Path("plots") and plots_dir(tmp_path) == tmp_path / "plots"  # PNGs stay local
    with pytest.raises(ValueError, match="no bucket"):
        results_dir("s3:///results")


def test_cli_leaderboard_table(results):
    out = invoke("leaderboard", "--results", results)
    assert out.exit_code == 0, out.output
    for piece in ("cifar10", "IF 100", "60.00 ± 1.41 (2)", "82.50 ± – (1)", "ldam_drw"):
        assert piece in out.stdout
    assert out.stderr == ""


def test_cli_leaderboard_formats_and_env_default(results):
    out = invoke("leaderboard", "--format", "markdown", "--imbalance", 100,
                 env={"BKDBENCH_RESULTS": str(results)})
    assert out.exit_code == 0, out.output
    assert "| bkd | **60.00 ± 1.41 (2)** |" in out.stdout and "IF 10 " not in out.stdout
    out = invoke("leaderboard", "--format", "csv", "--metric", "ece", "--results", results)
    assert out.stdout.splitlines()[0] == "dataset,imbalance_factor,label,mean,std,n,metric"


@pytest.mark.parametrize("args, message", [
    (["--metric", "f1"], "unknown metric 'f1'"),
    (["--format", "html"], "unknown format 'html'"),
])
def test_cli_bad_input_exits_2_with_one_line(results, args, message):
    out = invoke("leaderboard", "--results", results, *args)
    assert out.exit_code == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.output


def test_cli_empty_leaderboard_is_a_message_not_an_error(tmp_path):
    out = invoke("leaderboard", "--results", tmp_path / "fresh")
    assert out.exit_code == 0
    assert "no finished runs in" in out.stdout and "bkdbench run --suite digits-lt" in out.stdout
    out = invoke("leaderboard", "--results", tmp_path, "--dataset", "imagenet")
    assert out.exit_code == 0 and "--dataset imagenet" in out.stdout


def test_cli_warns_about_unreadable_files_and_still_shows_the_rest(results):
    (leaderboard_dir(results) / "junk.parquet").write_bytes(os.urandom(2048))
    out = invoke("leaderboard", "--results", results)
    assert out.exit_code == 0
    assert "warning: skipped 1 unreadable" in out.stderr and "junk.parquet" in out.stderr
    assert "60.00 ± 1.41 (2)" in out.stdout


def test_cli_compare_prints_the_paired_difference(results):
    out = invoke("compare", "bkd", "ldam_drw", "--imbalance", 100, "--results", results)
    assert out.exit_code == 0, out.output
    # Pairs: seed 0 59-55=4, seed 1 61-56=5 -> mean 4.5, sd 0.7071, t(0.975,1)=12.706 -> ±6.35.
    assert "A = bkd, B = ldam_drw" in out.stdout
    assert "+4.50" in out.stdout and "[-1.85, +10.85]" in out.stdout
    out = invoke("compare", "bkd", "focal", "--results", results)
    assert out.exit_code == 2 and "no finished runs for 'focal'" in out.stderr


def test_cli_plots_write_png_files(results):
    out = invoke("plot", "per-class", "--dataset", "cifar10", "--imbalance", 100, "--results", results)
    assert out.exit_code == 0, out.output
    per_class = results / "plots" / "per-class-cifar10-if100.png"
    assert f"wrote {per_class}" in out.stdout
    target = results / "elsewhere" / "summary.png"
    out = invoke("plot", "summary", "--results", results, "--out", target, "--metric", "ece")
    assert out.exit_code == 0, out.output
    for path in (per_class, target):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    out = invoke("plot", "per-class", "--results", results)  # every (dataset, IF): two files
    assert out.exit_code == 0 and out.stdout.count("wrote ") == 2


def test_results_layer_never_imports_torch(tmp_path):
    script = textwrap.dedent(f"""
        import sys, typer
        from typer.testing import CliRunner
        import bkdbench.paths, bkdbench.cli.results
        import bkdbench.leaderboard.store, bkdbench.leaderboard.aggregate
        import bkdbench.leaderboard.render, bkdbench.leaderboard.plots
        app = typer.Typer()
        bkdbench.cli.results.register(app)
        result = CliRunner().invoke(app, ["leaderboard", "--results", {str(tmp_path)!r}])
        assert result.exit_code == 0, result.output
        assert "torch" not in sys.modules, "the results layer imported torch"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_two_image_folders_are_two_datasets_never_one_cell(tmp_path):
    """Rows of two different folders (both `imagefolder`) must not average as if they were seeds."""
    board = leaderboard_dir(tmp_path)
    for i, (key, top1) in enumerate([("aaaa1111ffff", 40.0), ("aaaa1111ffff", 42.0),
                                     ("bbbb2222eeee", 90.0), ("bbbb2222eeee", 92.0)]):
        write_row(board, {"run_id": f"f{i}", "dataset": "imagefolder", "data_key": key, "imbalance_factor": 10.0,
                          "data_seed": 0, "method": "ce", "seed": i % 2, "status": "finished", "top1": top1,
                          "per_class_acc": [top1, top1], "class_counts": [50, 5]})
    out = invoke("leaderboard", "--results", tmp_path, "--format", "csv")
    assert out.exit_code == 0, out.output
    lines = sorted(out.stdout.splitlines()[1:])
    assert lines == ["imagefolder@aaaa1111,10.0,ce,41.0,1.4142135623730951,2,top1",
                     "imagefolder@bbbb2222,10.0,ce,91.0,1.4142135623730951,2,top1"]
    out = invoke("leaderboard", "--results", tmp_path, "--format", "csv", "--dataset", "imagefolder@bbbb")
    assert [line.split(",")[3] for line in out.stdout.splitlines()[1:]] == ["91.0"]
    out = invoke("plot", "per-class", "--results", tmp_path)
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in plots_dir(tmp_path).iterdir()) == [
        "per-class-imagefolder@aaaa1111-if10.png", "per-class-imagefolder@bbbb2222-if10.png"]
    out = invoke("plot", "per-class", "--results", tmp_path, "--dataset", "imagefolder", "--imbalance", 10,
                 "--out", tmp_path / "one.png")
    assert out.exit_code == 2 and "imagefolder names 2 datasets" in out.stderr


def test_rows_of_a_method_that_is_bkdbench_s_own_reading_carry_a_note():
    """subset-kd (the paper names only "weighted knowledge distillation") and cbd-linear (not the
    official CBD) are labelled under every table that shows them, and only there."""
    runs = [("subset-kd", 100, 0, 50.0, 1.0), ("ce", 100, 0, 48.0, 1.0), ("cbd-linear", 100, 0, 52.0, 1.0)]
    text = render.to_markdown(summarise(frame_of(runs)), "top1")
    assert "_subset-kd is bkdbench's reading of Ju et al. 2021" in text and "_cbd-linear is bkdbench's earlier CBD" in text
    ((_, table),) = render.leaderboard_tables(summarise(frame_of(runs)), "top1")
    assert "bkdbench's reading of Ju et al." in str(table.caption)
    plain = render.to_markdown(summarise(frame_of()), "top1")
    assert "reading" not in plain and "earlier CBD" not in plain
    assert render.method_notes(["subset-kd (alpha=2)", "bkd"]) == [render.METHOD_NOTES["subset-kd"]]
