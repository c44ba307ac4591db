"""Bad plugins and names that are not there, as test_bad_input.py checks bad input: one line on stderr
naming what is wrong, exit status 2, no traceback, and nothing written (no file, no folder, no
__pycache__ next to the plugin), through the console script's entry point in this process."""
from __future__ import annotations

import pytest

from bkdbench.cli import main
from helpers.files import assert_nothing_written, assert_refused, snapshot, write_suite
from helpers.report_rows import row

# Files in the working folder (written by _setup): see PLUGINS.
PLUGINS = {
    "syntax_bad.py": "import os\ndef broken(:\n    pass\n",
    "raises_bad.py": "import os\nraise RuntimeError('no GPU library here')\n",
    "no_loss_bad.py": ("from bkdbench.methods import Method, register\n\n"
                       "@register('no-loss-bad')\nclass NoLoss(Method):\n    pass\n"),
    "no_default_bad.py": ("from bkdbench.methods import Method, register\nfrom bkdbench.methods.params import MethodParams\n\n"
                          "class Params(MethodParams):\n    width: float\n\n"
                          "@register('no-default-bad')\nclass NoDefault(Method):\n    Params = Params\n\n"
                          "    def loss(self, logits, targets, *, epoch=0, teacher_logits=None):\n        return logits.sum()\n"),
    "clash_bad.py": ("from bkdbench.methods import Method, register\n\n"
                     "@register('bkd')\nclass Mine(Method):\n"
                     "    def loss(self, logits, targets, *, epoch=0, teacher_logits=None):\n        return logits.sum()\n"),
    "model_clash_bad.py": ("from bkdbench.models import register_model\n\n"
                           "@register_model('resnet32')\ndef mine(num_classes, in_channels=3, head='linear'):\n"
                           "    return None\n"),
}

BAD = [
    (["train", "--plugin", "nowhere.py"], ["plugin nowhere.py", "no such file or folder"]),
    (["train", "--plugin", "no_such_module_here"], ["no_such_module_here", "no such module"]),
    (["train", "--plugin", "syntax_bad.py"], ["syntax error", "syntax_bad.py", "line 2"]),
    (["train", "--plugin", "raises_bad.py"], ["raises_bad.py", "RuntimeError: no GPU library here", "line 2"]),
    (["train", "--plugin", "no_loss_bad.py"], ["no-loss-bad", "neither loss() nor train_step()"]),
    (["train", "--plugin", "no_default_bad.py"], ["no-default-bad", "width", "no default"]),
    (["train", "--plugin", "clash_bad.py"], ["'bkd' is already registered by", "bkdbench/methods/distill.py",
                                             "clash_bad.py"]),
    (["train", "--plugin", "model_clash_bad.py"], ["'resnet32' is already registered by", "resnet_cifar",
                                                   "model_clash_bad.py"]),
    (["train", "--plugin", "afile"], ["afile", "not a .py file, a package folder or a module name"]),
    (["run", "--plugin", "nowhere.py"], ["no such file or folder"]),
    (["run", "--suite", "plug.yaml"], ["plug.yaml", "key 'plugins'", "raises_bad.py", "RuntimeError"]),
    (["run", "--with-method", "no-such-method"], ["--with-method", "unknown method 'no-such-method'"]),
    (["sweep", "bkd", "--plugin", "syntax_bad.py"], ["syntax error", "syntax_bad.py"]),
    (["sweep", "my-methd"], ["unknown method 'my-methd'", "bkd"]),
    (["sweep", "plug-space", "--space", "space.yaml"], ["space.yaml", "key 'plugins'", "no such file"]),
    (["ablate", "bkd", "--grid", "alpha=1,2", "--plugin", "no_loss_bad.py"], ["neither loss() nor train_step()"]),
    (["bench", "--quick", "--plugin", "nowhere.py"], ["no such file or folder"]),
    (["suites", "--plugin", "nowhere.py"], ["no such file or folder"]),
    (["data", "list", "--plugin", "nowhere.py"], ["no such file or folder"]),
    (["methods", "--plugin", "clash_bad.py"], ["'bkd' is already registered by"]),
    (["new", "method", "bkd"], ["method 'bkd' exists already"]),
    (["new", "method", "My Loss"], ["lower-case letters"]),
    (["compare", "bkd", "bdk", "--results", "rows"], ["no finished runs for 'bdk'", "close matches: bkd",
                                                      "methods present: bkd, ce"]),
    (["compare", "bkd", "no-such-method", "--results", "rows"], ["'no-such-method'", "methods present: bkd, ce"]),
    (["leaderboard", "--method", "no-such-method", "--results", "rows"], ["'no-such-method'", "methods present: bkd, ce"]),
    (["report", "--method", "cee", "--results", "rows"], ["'cee'", "close matches: ce", "methods present: bkd, ce"]),
]


def _setup(folder):
    for name, text in PLUGINS.items():
        (folder / name).write_text(text)
    (folder / "afile").write_text("a file, not a folder")
    write_suite(folder / "plug.yaml", name="plug", datasets=["digits"], imbalance=[10], methods=["ce"], epochs=1,
                plugins=["raises_bad.py"])
    (folder / "space.yaml").write_text("method: plug-space\nplugins: [nowhere/plug.py]\n"
                                       "params:\n  smoothing: {type: float, low: 0.0, high: 0.3}\n")
    from bkdbench.leaderboard.store import write_row
    from bkdbench.paths import leaderboard_dir

    for method, seed in (("bkd", 0), ("ce", 0)):
        write_row(leaderboard_dir(folder / "rows"), row(f"{method}-s{seed}", method, seed, 70.0 + seed))


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_plugin_is_one_line_exit_2_and_writes_nothing(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    monkeypatch.delenv("BKDBENCH_PLUGINS", raising=False)
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    _setup(tmp_path)
    assert_refused(main, args, words, tmp_path, capsys)


def test_bkdbench_plugins_names_plugins_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BKDBENCH_PLUGINS", f"{tmp_path / 'nowhere.py'}")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--epochs", "1"])
    assert exit_.value.code == 2 and "nowhere.py: no such file or folder" in capsys.readouterr().err
    assert_nothing_written(before, tmp_path)


def test_report_with_nothing_to_report_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1 and not (tmp_path / "out").exists()
