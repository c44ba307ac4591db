"""Bad input, for every command: one line on stderr that names what is wrong, exit status 2, no
traceback, and nothing written -- no file and no folder, in the results, the cache or the working
folder -- because every check runs before any work starts.

Each invocation goes through the console script's own entry point (``bkdbench.cli.main``) in this
process, from a working folder of its own, with the results and the cache inside it, so that
"nothing written" covers every place a command could write to. No invocation may start Ray (the
conftest guard fails a quick test that does)."""
from __future__ import annotations

import pytest
import torch

from bkdbench.cli import main
from helpers.files import assert_refused, write_suite
from helpers.report_rows import row

_HAS_CUDA = torch.cuda.is_available()

# (arguments, words the one line must contain). Files named here exist in the working folder:
# bad.yaml (a suite with a misspelt key), afile (a plain file), rows/ (a leaderboard where bkd and
# ce share no seed).
BAD = [
    # train: names, ranges and extremes, devices, paths, URIs
    (["train", "--dataset", "nosuch"], ["unknown dataset 'nosuch'", "digits"]),
    (["train", "--method", "nosuch"], ["unknown method 'nosuch'", "bkd"]),
    (["train", "--model", "nosuch"], ["unknown model 'nosuch'", "resnet32"]),
    (["train", "--recipe", "nosuch"], ["unknown recipe 'nosuch'", "reference"]),
    (["train", "--imbalance", "0.5"], ["imbalance factor", ">= 1", "0.5"]),
    (["train", "--imbalance", "1e9"], ["1e+09", "no training image", "largest factor", "100"]),
    (["train", "--imbalance", "nan"], ["imbalance factor", "finite", "nan"]),
    (["train", "--imbalance", "inf"], ["imbalance factor", "finite", "inf"]),
    (["train", "--profile", "linear"], ["linear", "exp", "step"]),
    (["train", "--epochs", "0"], ["epochs", "> 0"]),
    (["train", "--seed", "-1"], ["seed", ">= 0", "-1"]),
    (["train", "--device", "cuda"], ["cuda", "no CUDA GPU"]),  # skipped on a GPU host: nothing to refuse there
    (["train", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["train", "--method", "bkd", "--temperature", "0"], ["temperature", "> 0"]),
    (["train", "--method", "bkd", "--temperature", "-2"], ["temperature", "> 0"]),
    (["train", "--method", "bkd", "--temperature", "nan"], ["temperature", "finite"]),
    (["train", "--method", "bkd", "--alpha", "inf"], ["alpha", "finite"]),
    (["train", "--method", "bkd", "--alpha", "-1"], ["alpha", ">= 0"]),
    (["train", "--method", "reweight-cb", "--beta", "1"], ["beta", "[0, 1)"]),
    (["train", "--method", "focal", "--gamma", "-1"], ["gamma", ">= 0"]),
    (["train", "--method", "ldam-drw", "--max-m", "inf"], ["max_m", "finite"]),
    (["train", "--param", "nosuch=1"], ["unknown parameter 'nosuch'"]),
    (["train", "--param", "alpha"], ["NAME=VALUE", "'alpha'"]),
    (["train", "--split", "half"], ["--split", "every-class", "reference"]),
    (["train", "--results", "s3://"], ["names no bucket"]),
    (["train", "--results", "afile/sub"], ["afile is a file, not a folder"]),
    (["train", "--dataset", "imagefolder"], ["--data-dir"]),
    (["train", "--dataset", "cifar10", "--data-dir", "nowhere"], ["cifar10 not found", "bkdbench data download"]),
    (["train", "--bogus"], ["No such option: --bogus", "bkdbench train --help"]),
    (["train", "--splits", "nowhere"], ["--splits nowhere is not a folder"]),
    (["train", "--pretrained", "nowhere.pt"], ["--pretrained nowhere.pt does not exist"]),
    (["train", "--pretrained", "afile"], ["--pretrained afile is not a PyTorch state dict"]),
    (["run", "--suite", "digits-lt", "--pretrained", "afile"], ["--pretrained afile is not a PyTorch state dict"]),
    (["sweep", "bkd", "--splits", "afile"], ["--splits afile is not a folder"]),
    # run: suites, filters, options
    (["run", "--suite", "nosuch"], ["unknown suite 'nosuch'", "digits-lt"]),
    (["run", "--suite", "bad.yaml"], ["bad.yaml", "key 'epoch'"]),
    (["run", "--seeds", "0"], ["--seeds", "greater than or equal to 1"]),
    (["run", "--imbalance", "abc"], ["--imbalance", "'abc'"]),
    (["run", "--method", "nosuch"], ["--method nosuch", "not in suite digits-lt", "bkd"]),
    (["run", "--imbalance", "7"], ["--imbalance 7", "not in suite digits-lt", "10, 50"]),
    (["run", "--epochs", "0"], ["epochs", "> 0"]),
    (["run", "--suite", "cifar-lt", "--data-dir", "nowhere"], ["cifar10 not found"]),
    (["run", "--tracking", "bogus"], ["unknown tracker 'bogus'", "mlflow", "wandb"]),
    (["run", "--pack", "0"], ["--pack", "greater than or equal to 1"]),
    (["run", "--cpus-per-trial", "0"], ["--cpus-per-trial"]),
    (["run", "--results", "afile/sub"], ["afile is a file, not a folder"]),
    (["run", "--checkpoint-every", "0"], ["--checkpoint-every"]),
    # the large benchmarks without their images
    (["train", "--dataset", "imagenet-lt"], ["imagenet-lt needs its images", "--data-dir"]),
    (["train", "--dataset", "places-lt", "--data-dir", "nowhere"], ["places-lt", "nowhere does not exist"]),
    # sweep
    (["sweep", "nosuch"], ["unknown method 'nosuch'", "bkd"]),  # neither registered (plugins included) nor a shipped space
    (["sweep", "bkd", "--dataset", "nosuch"], ["unknown dataset 'nosuch'"]),
    (["sweep", "bkd", "--sampler", "nope"], ["unknown sampler 'nope'", "tpe"]),
    (["sweep", "bkd", "--scheduler", "nope"], ["unknown scheduler 'nope'", "asha"]),
    (["sweep", "bkd", "--space", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["sweep", "bkd", "--pack", "2", "--scheduler", "asha"], ["--scheduler asha", "--pack 1"]),
    (["sweep", "bkd", "--imbalance", "1e9"], ["no training image"]),
    (["sweep", "bkd", "--imbalance", "nan"], ["finite"]),
    (["sweep", "bkd", "--trials", "0"], ["--trials"]),
    (["sweep", "bkd", "--workers-per-trial", "2", "--pack", "2"], ["--pack and --workers-per-trial exclude each other"]),
    # ablate
    (["ablate", "bkd", "--grid", "alpha="], ["--grid", "PARAM=v1,v2"]),
    (["ablate", "bkd", "--grid", "nosuch=1"], ["unknown parameter 'nosuch'", "alpha"]),
    (["ablate", "bkd", "--grid", "alpha=nan"], ["alpha", "finite"]),
    (["ablate", "bkd", "--grid", "temperature=0"], ["temperature", "> 0"]),
    (["ablate", "bkd", "--preset", "nosuch"], ["no preset 'nosuch'", "components"]),
    (["ablate", "nosuch", "--grid", "alpha=1"], ["unknown method 'nosuch'"]),
    (["ablate", "bkd", "--grid", "alpha=1", "--workers-per-trial", "0"], ["--workers-per-trial"]),
    # reading the results
    (["leaderboard", "--metric", "nosuch"], ["unknown metric 'nosuch'", "top1"]),
    (["leaderboard", "--format", "nosuch"], ["unknown format 'nosuch'", "markdown"]),
    (["leaderboard", "--split", "half"], ["--split", "every-class"]),
    (["compare", "bkd", "ce", "--results", "rows"], ["no runs with the same dataset, imbalance factor and seed"]),
    (["report", "--out", "afile"], ["--out afile is a file"]),
    (["report", "--suite", "a", "--sweep", "b"], ["one of --suite, --sweep and --ablation"]),
    (["plot", "summary", "--out", "afile/x.png"], ["afile is a file, not a folder"]),
    (["plot", "summary", "--metric", "nosuch"], ["unknown metric 'nosuch'"]),
    (["data", "download", "nosuch", "--root", "dl"], ["unknown dataset 'nosuch'"]),
    (["bench", "--threads", "0"], ["--threads"]),
    (["nosuch"], ["No such command 'nosuch'"]),
]


def _setup(folder):
    write_suite(folder / "bad.yaml", name="bad", datasets=["digits"], imbalance=[10], methods=["ce"], epoch=3)
    (folder / "afile").write_text("a file, not a folder")
    from bkdbench.leaderboard.store import write_row
    from bkdbench.paths import leaderboard_dir

    for method, seeds in (("bkd", (0, 1)), ("ce", (2, 3))):  # no seed in common: nothing to pair
        for seed in seeds:
            write_row(leaderboard_dir(folder / "rows"), row(f"{method}-s{seed}", method, seed, 70.0 + seed))


def test_the_table_is_long_and_covers_every_command():
    assert len(BAD) >= 40
    assert {args[0] for args, _ in BAD} >= {"train", "run", "sweep", "ablate", "leaderboard", "compare", "report",
                                          "plot", "data", "bench"}


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, words, tmp_path, monkeypatch, capsys):
    if _HAS_CUDA and "no CUDA GPU" in words:
        pytest.skip("this host has a CUDA GPU: --device cuda is good input here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)  # the default ./results: inside tmp_path
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    _setup(tmp_path)
    assert_refused(main, args, words, tmp_path, capsys)
