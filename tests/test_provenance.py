"""The commit stamped on rows is the code's, read when the code was loaded, and says when it was dirty."""
import subprocess

from bkdbench import provenance


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_commit_then_dirty_then_not_a_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(provenance, "_REPO", package)

    assert provenance._read_git_sha() == head
    (repo / "notes.txt").write_text("untracked, outside the package\n")
    assert provenance._read_git_sha() == head
    (package / "code.py").write_text("x = 2\n")
    assert provenance._read_git_sha() == f"{head}+dirty"

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    monkeypatch.setattr(provenance, "_REPO", tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert provenance._read_git_sha() is None


def test_the_stamp_is_fixed_at_import(monkeypatch):
    before = provenance.git_sha()
    monkeypatch.setattr(provenance, "_git", lambda *args: "0" * 40)  # a later commit must not change it
    assert provenance.git_sha() == before
    assert provenance.provenance()["git_sha"] == before
