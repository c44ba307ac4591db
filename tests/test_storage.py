"""Results on object storage: ``Location`` on local paths and on a real S3 protocol endpoint (moto's
server on this machine, no internet), teachers, manifests and leaderboard rows through it, a digits
suite run with ``--storage s3://...`` end to end, and bad URIs refused before any work."""
from __future__ import annotations

import io
import json
import os
import pickle
import uuid
from pathlib import Path

import pytest

from bkdbench.storage import Location, LocationError, mirror, pull, push
from helpers.cli import invoke_cli, kill_group, run_cli, start_cli
from helpers.cluster import Cluster, free_port
from helpers.s3_server import S3_ENV
from helpers.files import write_suite
from helpers.processes import kill_pids, processes_of_driver, ray_daemon_pids, wait_for
from helpers.storage import check_lease_makes_a_second_driver_wait, check_suite_on_store
from helpers.sweeps import check_sigkilled_sweep_resumes

BUCKET = "bkd-results"


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint (moto's threaded server) with one bucket; yields a URI factory for prefixes."""
    pytest.importorskip("moto.server")
    from helpers.s3_server import s3_endpoint

    with s3_endpoint(BUCKET) as endpoint:
        yield endpoint.uri


# --- Location --------------------------------------------------------------------------------

def test_local_location_names_and_atomic_writes(tmp_path):
    root = Location(tmp_path / "r")
    assert root.is_local and root.local == tmp_path / "r" and os.fspath(root) == str(tmp_path / "r")
    assert Location(f"file://{tmp_path}/r") == root  # a file:// URI is a local path
    f = root / "a" / "b.txt"
    assert not f.exists() and root.list() == []
    f.write_text("one")
    f.write_text("two")
    assert f.read_text() == "two" and (root / "a").list() == ["b.txt"]  # no temp file left beside it
    assert f.parent == root / "a" and f.name == "b.txt"
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_bytes()
    (root / "a").delete()
    assert not (root / "a").exists()
    (root / "never").delete()  # nothing to delete is fine
    assert pickle.loads(pickle.dumps(f)) == f


def test_uri_location_keeps_its_options_and_is_no_path():
    root = Location("s3://bucket/pre/fix/?endpoint_override=host:9000&scheme=http")
    assert not root.is_local and str(root) == "s3://bucket/pre/fix?endpoint_override=host:9000&scheme=http"
    child = root / "teachers" / "x.pt"
    assert str(child) == "s3://bucket/pre/fix/teachers/x.pt?endpoint_override=host:9000&scheme=http"
    assert child.name == "x.pt" and child.parent.parent == root
    assert pickle.loads(pickle.dumps(child)) == child
    with pytest.raises(TypeError, match="not a local path"):
        os.fspath(root)  # never a folder named "s3:"
    with pytest.raises(LocationError):
        root.local
    for bad in ("s3:///prefix", "gs://bucket/../up", "://nothing"):
        with pytest.raises(LocationError):
            Location(bad)


def test_unknown_scheme_and_bad_options_are_location_errors():
    with pytest.raises(LocationError, match="s3://BUCKET"):
        Location("nosuchscheme://bucket/x").check_writable()
    with pytest.raises(LocationError, match="foo"):
        Location("s3://bucket/x?foo=1").exists()


def test_mirror_is_local_and_keyed_by_store(cache):
    local = Location("/data/results")
    assert mirror(local / "x") == Path("/data/results/x")
    a = mirror("s3://b/p/sweeps/s1?endpoint_override=h:1")
    b = mirror("s3://b/p/sweeps/s1?endpoint_override=h:2")
    assert a != b and cache in a.parents and a.name == "s1"


# --- a real S3 protocol endpoint -------------------------------------------------------------

def test_s3_location_round_trip(s3):
    root = Location(s3(f"loc-{uuid.uuid4().hex[:6]}"))
    assert not root.exists() and root.list() == []
    root.check_writable()
    f = root / "a" / "b.bin"
    f.write_bytes(b"\x00\x01")
    assert f.exists() and f.read_bytes() == b"\x00\x01"
    assert "a" in root.list() and (root / "a").list() == ["b.bin"]
    with pytest.raises(FileNotFoundError):
        (root / "a" / "nope").read_bytes()
    (root / "a").delete()
    assert not f.exists()
    path, fs = root.tune_storage()  # what Ray Tune gets: the prefix-stripped path and its filesystem
    assert path == f"{BUCKET}/{root.base.split('/', 3)[3]}" and fs.type_name == "s3"


def test_s3_missing_bucket_is_refused_clearly(s3):
    uri = s3("x").replace(BUCKET, "no-such-bucket")
    with pytest.raises(LocationError, match="no-such-bucket"):
        Location(uri).check_writable()


def test_teachers_manifests_and_rows_on_s3(s3):
    torch = pytest.importorskip("torch")
    from bkdbench.leaderboard import store
    from bkdbench.leaderboard.manifest import record_suite_runs, suite_run_ids
    from bkdbench.paths import leaderboard_dir, teachers_dir
    from bkdbench.specs import make_spec
    from bkdbench.training.teachers import load_teacher, save_teacher

    root = Location(s3(f"parts-{uuid.uuid4().hex[:6]}"))
    spec = make_spec("digits", 10, "ce", epochs=2)
    weights = {"fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)}
    assert load_teacher(teachers_dir(root), spec) is None
    written = save_teacher(teachers_dir(root), spec, weights, {"top1": 50.0})
    assert str(written).startswith(f"s3://{BUCKET}/") and written.exists()
    back = load_teacher(teachers_dir(root), spec, num_classes=10)
    assert torch.equal(back["fc.weight"], weights["fc.weight"])
    blob = torch.load(io.BytesIO(written.read_bytes()), weights_only=True)  # a plain torch file
    assert "state_dict" in blob

    assert suite_run_ids(root, "mini") is None
    record_suite_runs(root, "mini", ["a", "b"])
    record_suite_runs(root, "mini", ["c"])
    assert suite_run_ids(root, "mini") == {"a", "b", "c"}

    board = leaderboard_dir(root)
    store.check_writable(board)
    store.write_row(board, {"run_id": "r1", "status": "finished", "top1": 61.0, "dataset": "digits"})
    store.write_row(board, {"run_id": "r2", "status": "failed", "dataset": "digits"})
    (board / "junk.parquet").write_bytes(b"not parquet")
    rows, skipped = store.read_rows(board)
    assert sorted(rows.run_id) == ["r1", "r2"] and skipped == [str(board / "junk.parquet")]
    assert store.finished_run_ids(board) == {"r1"} and store.is_finished(board, "r1")
    assert not store.is_finished(board, "r2")


def test_journal_pull_and_push(s3, cache):
    from bkdbench import storage

    stored = Location(s3(f"journal-{uuid.uuid4().hex[:6]}")) / "study.journal"
    local = pull(stored)
    assert cache in local.parents and not local.exists()  # nothing stored yet: start empty
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(b"line1\n")
    push(stored)
    assert stored.read_bytes() == b"line1\n"

    # A fresh driver: the stored journal is the truth over a stale local copy ...
    storage._pulled.clear()
    local.write_bytes(b"stale\n")
    assert pull(stored).read_bytes() == b"line1\n"
    # ... but a local copy that extends it (an upload that did not happen) is kept.
    storage._pulled.clear()
    local.write_bytes(b"line1\nline2\n")
    assert pull(stored).read_bytes() == b"line1\nline2\n"
    # Deleted from the store: a fresh driver starts without the old local copy.
    stored.delete()
    storage._pulled.clear()
    assert not pull(stored).exists()


def test_a_lease_on_s3_makes_a_second_driver_wait(s3, tmp_path):
    check_lease_makes_a_second_driver_wait(s3, tmp_path)


# --- the CLI, end to end ---------------------------------------------------------------------

@pytest.mark.slow
def test_suite_on_s3_end_to_end(s3, tmp_path):
    check_suite_on_store(s3, tmp_path, "s3mini")


@pytest.mark.parametrize("command", [["run", "--suite", "digits-lt"], ["leaderboard"], ["train", "--epochs", "1"]])
def test_bad_uris_exit_2_before_any_work(s3, tmp_path, command):
    unknown = invoke_cli([*command, "--storage", "nosuchscheme://bucket/x"], folder=tmp_path)
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert "nosuchscheme" in unknown.stderr and "Traceback" not in unknown.stderr
    if command[0] == "leaderboard":
        return
    missing = invoke_cli([*command, "--storage", s3("x").replace(BUCKET, "no-such-bucket")], folder=tmp_path)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "no-such-bucket" in missing.stderr and "Traceback" not in missing.stderr
    assert "trained" not in missing.stdout


@pytest.mark.slow
def test_unreachable_endpoint_exits_2(tmp_path, monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    dead = f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"  # nobody listens
    out = run_cli(["run", "--suite", "digits-lt", "--storage", dead], folder=tmp_path, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot write" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("lose_checkpoints", [False, True], ids=["as-left", "checkpoints-gone"])
def test_killed_driver_resumes_from_s3(s3, tmp_path, cache, lose_checkpoints):
    """SIGKILL the driver while students train, then --resume: Tune restores the experiment from the
    bucket (state and checkpoints there) and every run ends up finished exactly once; also when the
    checkpoints the saved state names are gone (Tune replaces a checkpoint before it uploads the state
    that names the new one: a driver killed in between leaves exactly that)."""
    import pyarrow.fs as pafs
    from ray import tune

    from bkdbench.leaderboard.store import read_rows
    from bkdbench.specs.suites import load_suite

    suite = write_suite(tmp_path / "s3kill.yaml", datasets=["digits"], imbalance=[10], methods=["ce", "kd", "bkd"],
                        seeds=1, epochs=30)
    root = Location(s3(f"kill-{uuid.uuid4().hex[:6]}"))
    fs, base = root.filesystem()
    args = ["run", "--suite", str(suite), "--storage", str(root), "--checkpoint-every", "1"]

    def student_checkpointed() -> bool:
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/experiments/s3kill/runs", recursive=True,
                                                   allow_not_found=True))
        return any("/checkpoint_" in i.path for i in infos)

    def state_names_a_checkpoint() -> bool:  # the uploaded experiment state, not only the files
        runs = root / "experiments" / "s3kill" / "runs"
        for name in (n for n in runs.list() if n.startswith("experiment_state")):
            for _, metadata in json.loads((runs / name).read_text())["trial_data"]:
                if (json.loads(metadata).get("last_result") or {}).get("checkpoint_dir_name"):
                    return True
        return False

    daemons = ray_daemon_pids()
    proc = start_cli(args, tmp_path / "first.log")
    try:
        ready = state_names_a_checkpoint if lose_checkpoints else student_checkpointed
        wait_for(ready, timeout=300, every=0.5,
                 what=lambda: f"a student checkpoint; output:\n{(tmp_path / 'first.log').read_text()}")
    finally:
        kill_group(proc)  # the driver and the Ray processes it started (its own session) ...
        kill_pids(processes_of_driver(proc.pid, daemons))  # ... and its Ray daemons, by PID
    before, _ = read_rows(root / "leaderboard")
    assert 1 <= len(before) < 3, "the teacher finished, not every student"
    runs_path, runs_fs = (root / "experiments" / "s3kill" / "runs").tune_storage()
    assert tune.Tuner.can_restore(runs_path, storage_filesystem=runs_fs)
    if lose_checkpoints:
        for info in runs_fs.get_file_info(pafs.FileSelector(runs_path, recursive=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                runs_fs.delete_dir(info.path)
        assert not student_checkpointed()

    resumed = run_cli([*args, "--resume"], folder=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after, bad = read_rows(root / "leaderboard")
    expected = sorted(s.run_id for s in load_suite(str(suite)).expand())
    assert bad == [] and sorted(after.run_id) == expected and set(after.status) == {"finished"}
    kept = before.set_index("run_id")["finished_at"]
    assert (after.set_index("run_id").loc[kept.index, "finished_at"] == kept).all(), "finished runs were retrained"


@pytest.mark.slow
def test_sigkilled_sweep_on_s3_resumes_from_the_bucket(s3, tmp_path):
    """A sweep with --storage s3://... SIGKILLed and resumed with an empty local cache: the journal
    the bucket holds has every trial finished before the kill (it is uploaded as trials end), and the
    resumed sweep counts them (helpers.sweeps). Then `sweep report` from yet another empty cache
    reads the journal back from the bucket, and the plots stayed on the driver's machine."""
    uri = s3(f"sweep-{uuid.uuid4().hex[:6]}")
    sweep_id = check_sigkilled_sweep_resumes(uri, tmp_path)
    folder = Location(uri) / "sweeps" / sweep_id
    assert {"study.journal", "sweep.json"} <= set(folder.list())
    assert not any("png" in name for name in folder.list()), "plots stay on this machine"
    report = run_cli(["sweep", "report", sweep_id, "--storage", uri], folder=tmp_path, cache=tmp_path / "cache-report",
                     timeout=120)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "trials: 4 complete" in " ".join(report.stdout.split()), report.stdout


@pytest.mark.slow
def test_two_node_cluster_shares_s3_storage(s3, tmp_path):
    """A real two-node cluster (`ray start` head + worker) with --storage s3://...: the shared-storage
    probe reads the bucket from each node, and the trials, wherever they run, write into it."""
    suite = write_suite(tmp_path / "s3nodes.yaml", datasets=["digits"], imbalance=[10],
                        methods=["ce", "reweight-cb"], seeds=2, epochs=2)
    uri = s3(f"nodes-{uuid.uuid4().hex[:6]}")
    cluster = Cluster()  # its nodes get this process's environment: the same S3 credentials
    try:
        cluster.start_head(cpus=1)
        cluster.add_worker(cpus=1)
        out = run_cli(["run", "--suite", suite, "--address", cluster.address, "--storage", uri], folder=tmp_path,
                      env=cluster.driver_env(), timeout=400)
    finally:
        cluster.stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from bkdbench.leaderboard.store import read_rows

    rows, bad = read_rows(Location(uri) / "leaderboard")
    assert bad == [] and len(rows) == 4 and set(rows.status) == {"finished"}
