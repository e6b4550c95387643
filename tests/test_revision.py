"""The commit that MLflow runs and container images record: exact, marked dirty, or the image's own."""

from __future__ import annotations

import subprocess

from image_emotion.revision import git_revision


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_then_dirty_then_the_image_revision_outside_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_revision(repo) == head and len(head) == 40
    (repo / "untracked.txt").write_text("new\n")
    assert git_revision(repo) == head  # untracked files do not change what was committed
    (repo / "a.txt").write_text("two\n")
    assert git_revision(repo) == head + "+dirty"
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    monkeypatch.delenv("IMAGE_EMOTION_GIT_REVISION", raising=False)
    assert git_revision(outside) == "unknown"
    monkeypatch.setenv("IMAGE_EMOTION_GIT_REVISION", "abc123")
    assert git_revision(outside) == "abc123"
    monkeypatch.chdir(repo)
    assert git_revision() == head + "+dirty"  # default: the current directory
