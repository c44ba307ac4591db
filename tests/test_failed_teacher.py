"""A teacher whose training failed fails its students with its reason ("teacher <id> failed: ..."),
recorded in their rows and not retried, whether they train in a trial of their own or share a pack.
The trial functions run in process with Tune's report and checkpoint lookup replaced; the teacher's
failed row is the one ``run_and_record`` writes when a run diverges."""
from __future__ import annotations

import pytest

from bkdbench.leaderboard.store import read_rows, write_row
from bkdbench.orchestrate import packed_trial as packed_mod
from bkdbench.orchestrate import trial as trial_mod
from bkdbench.orchestrate.execute import failed_row, teacher_state_for
from bkdbench.paths import leaderboard_dir
from bkdbench.specs import make_spec
from bkdbench.training.teachers import TeacherError

REASON = "training loss became nan at epoch 1 (ce on digits-LT IF10 seed 0)"


@pytest.fixture
def failed_teacher(tmp_path):
    kd = make_spec("digits", 10, "kd", epochs=2)
    bkd = make_spec("digits", 10, "bkd", epochs=2)
    assert kd.teacher.run_id == bkd.teacher.run_id
    write_row(leaderboard_dir(tmp_path), failed_row(kd.teacher, REASON))
    return tmp_path, kd, bkd


@pytest.fixture
def reports(monkeypatch):
    got = []
    for mod in (trial_mod, packed_mod):
        monkeypatch.setattr(mod.tune, "report", lambda metrics, **kw: got.append(dict(metrics)))
    monkeypatch.setattr(trial_mod, "restored_state", lambda: None)
    monkeypatch.setattr(packed_mod, "restored_state", lambda: None)
    return got


def test_a_student_of_a_failed_teacher_is_refused_with_the_teachers_reason(failed_teacher):
    root, kd, _ = failed_teacher
    with pytest.raises(TeacherError) as err:
        teacher_state_for(kd, root)
    assert str(err.value) == f"teacher {kd.teacher.run_id} failed: {REASON}"


def test_a_teacher_not_trained_yet_is_still_said_so(tmp_path):
    kd = make_spec("digits", 10, "kd", epochs=2)
    with pytest.raises(TeacherError, match=f"teacher {kd.teacher.run_id} of .* has not been trained yet"):
        teacher_state_for(kd, tmp_path)


def test_students_of_a_failed_teacher_get_failed_rows_alone_and_packed(failed_teacher, reports):
    root, kd, bkd = failed_teacher
    trial_mod.train_trial({"run_id": kd.run_id}, specs={kd.run_id: kd.model_dump_json()}, results=str(root),
                          tags={"suite": "s"})
    packed_mod.train_pack([bkd], root, tags={"suite": "s"})
    assert [r["status"] for r in reports] == ["failed", "failed"]  # a recorded failure: Tune does not retry it
    rows, bad = read_rows(leaderboard_dir(root))
    assert bad == []
    by_id = rows.set_index("run_id")
    for spec in (kd, bkd):
        assert by_id.loc[spec.run_id, "status"] == "failed"
        assert by_id.loc[spec.run_id, "error"] == f"teacher {kd.teacher.run_id} failed: {REASON}"
        assert by_id.loc[spec.run_id, "suite"] == "s"
    assert by_id.loc[kd.teacher.run_id, "error"] == REASON  # the teacher's own row is left as it was
