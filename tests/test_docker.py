"""The Dockerfile and the build commands, read without building (the container check, `.ci/run`'s last step,
builds and runs the images): the Dockerfile installs the hashed lock, runs as the numeric user, has CMD and no
ENTRYPOINT; the build commands tag exactly the images the compiled pipeline names; the tag follows the code."""

import os
import re
import shutil
import subprocess
import uuid

import pytest
import yaml

from image_emotion.cli import main
from image_emotion.kubeflow import builder, cluster
from image_emotion.kubeflow.images import BASE_IMAGE, DOCKERFILE, KINDS, Images, images, source_digest
from image_emotion.lock import LOCK


def _stages(text: str) -> dict[str, str]:
    """The Dockerfile's stages by name: the text from each ``FROM … AS name`` to the next."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_installs_the_hashed_lock_as_a_numeric_user_with_cmd_only(repo_root):
    text = (repo_root / DOCKERFILE).read_text()
    stages = _stages(text)
    assert set(KINDS) <= set(stages), "one target per image kind"
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS system$", text, re.M), "the base comes in as a build argument"
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1) == BASE_IMAGE
    deps = stages["dependencies"]
    assert f"ARG LOCK={LOCK.as_posix()}" in deps and "COPY ${LOCK}" in deps
    install = re.search(r"pip install (.*?/requirements\.txt)", deps, re.S).group(1)
    assert "--require-hashes" in install and "-r /opt/image-emotion/requirements.txt" in install
    package = stages["package"]  # the package itself brings nothing the lock did not pin
    assert re.search(r"pip install --no-deps --no-build-isolation --no-index \.", package) and "pip check" in package
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users == [f"{cluster.UID}:{cluster.UID}"], "runAsNonRoot needs a numeric non-root user"
    assert f"--uid {cluster.UID}" in text
    made = re.search(r"mkdir -p ([^&\\]+)", text).group(1).split()
    owned = re.search(r"chown -R \S+ ([^&\\]+)", text).group(1).split()
    for path in ("/gcs", "/minio", "/s3", cluster.DATA_MOUNT, cluster.WORK_MOUNT):
        assert path in made and any(path.startswith(o) for o in owned), path
    assert not re.search(r"^ENTRYPOINT", text, re.M), "an ENTRYPOINT swallows a pod's or DockerRunner's command"
    assert re.search(r'^CMD \["image-emotion", "--help"\]$', text, re.M)
    assert "IMAGE_EMOTION_GIT_REVISION=${GIT_REVISION}" in stages["cpu"] and "IMAGE_EMOTION_IMAGE=${IMAGE_TAG}" in text
    assert "NVIDIA_VISIBLE_DEVICES" in stages["cuda"] and "NVIDIA_VISIBLE_DEVICES" not in stages["cpu"]


def test_dry_run_build_commands_tag_the_images_the_compiled_pipeline_names(repo_root, capsys):
    assert main(["build-images", "--dry-run", "--push", "--engine", "docker"]) == 0
    lines = capsys.readouterr().out.splitlines()  # exactly the commands, one a line, unindented
    builds = [line.split() for line in lines if line.startswith("docker build")]
    pushes = [line.split()[-1] for line in lines if line.startswith("docker push")]
    tags = {b[b.index("--target") + 1]: b[b.index("-t") + 1] for b in builds}
    assert set(tags) == set(KINDS) and all(b[b.index("-f") + 1] == DOCKERFILE for b in builds)
    spec, _ = yaml.safe_load_all((repo_root / "pipelines/image_emotion.yaml").read_text())
    named = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert set(tags.values()) == named == set(pushes)
    assert tags["cuda"].endswith("-cuda") and tags["cpu"].endswith("-cpu")
    for kind, build in zip(KINDS, builds, strict=True):  # the tag is recorded inside the image too
        assert f"IMAGE_TAG={tags[kind]}" in build and f"BASE_IMAGE={BASE_IMAGE}" in build
        assert f"LOCK={LOCK.as_posix()}" in build  # no CPU-only lock here: both from the CUDA lock


def test_podman_builds_mount_the_wheels_and_push_to_loopback_over_http(repo_root, tmp_path):
    built = images("127.0.0.1:5001/ns", repo_root)
    plan, note = builder.plan(built, "localhost/base@sha256:" + "a" * 64, repo_root, tmp_path / "wheels")
    assert "CUDA build" in note  # the fallback says so in one line
    podman = builder.Engine("podman")
    command = builder.build_command(podman, plan, "cpu")
    assert f"{(tmp_path / 'wheels').resolve()}:/wheels:ro" in command and "--layers" in command
    assert builder.push_command(podman, built.tagged("cpu"))[:3] == ["podman", "push", "--tls-verify=false"]
    remote = images("ghcr.io/org", repo_root)
    assert "--tls-verify=false" not in builder.push_command(podman, remote.tagged("cpu"))
    k3d = images("k3d-image-emotion-registry.localhost:5001", repo_root)  # a *.localhost name is loopback too
    assert builder.push_command(podman, k3d.tagged("cpu"))[:3] == ["podman", "push", "--tls-verify=false"]
    for remote_host in ("localhost.example.org", "registry.localhost.example.org:443"):
        assert "--tls-verify=false" not in builder.push_command(podman, images(remote_host, repo_root).tagged("cpu"))
    with pytest.raises(builder.ContainerToolError, match="podman or buildah only"):
        builder.build_command(builder.Engine("docker"), plan, "cpu")


def test_no_container_tool_names_the_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(builder.ContainerToolError, match=r"no container tool found .*apt-get install podman buildah"):
        builder.find_engine(tmp_path / "state")


def test_podman_settings_are_written_beside_the_build_not_into_the_system(tmp_path):
    env = builder.podman_settings(tmp_path / "state")
    conf = (tmp_path / "state/containers.conf").read_text()
    assert env == {"CONTAINERS_CONF": str((tmp_path / "state/containers.conf").resolve())}
    assert 'netns = "host"' in conf and "nofile=8192:8192" in conf


def test_images_named_by_digest(repo_root):
    built = images("127.0.0.1:5001/ns", repo_root)
    digest = "sha256:" + "0123456789abcdef" * 4
    pinned = built.by_digest({"cpu": digest})
    assert pinned.cpu == f"127.0.0.1:5001/ns/image-emotion@{digest}"
    assert pinned.cuda == built.tagged("cuda")  # no digest known: still the tag
    with pytest.raises(Exception, match="not a manifest digest"):
        built.by_digest({"cuda": "sha256:short"})
    with pytest.raises(Exception, match="image kind 'gpu'"):
        Images("r/x", "t").tagged("gpu")


def _tree(root):
    for name in ("README.md", "src/pkg/mod.py", DOCKERFILE, LOCK.as_posix()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "pyproject.toml").write_text('[project]\nversion = "9.8.7"\n')
    return root


def test_the_image_tag_follows_the_code_and_nothing_else(tmp_path):
    root = _tree(tmp_path / "a")
    first = source_digest(root)
    (root / "README.md").write_text("documentation only\n")
    (root / "src/pkg/__pycache__").mkdir()
    (root / "src/pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "src/pkg.egg-info").mkdir()
    (root / "src/pkg.egg-info/PKG-INFO").write_text("x")
    assert source_digest(root) == first  # build leftovers and the README do not change what runs
    (root / "src/pkg/mod.py").write_text("# changed\n")
    changed = source_digest(root)
    assert changed != first
    (root / "src/pkg/mod.py").write_text(f"# {'src/pkg/mod.py'}\n")
    (root / DOCKERFILE).write_text("FROM other\n")
    assert source_digest(root) not in (first, changed)
    (root / DOCKERFILE).write_text(f"# {DOCKERFILE}\n")
    (root / LOCK).write_text("numpy==2.0.0\n")  # another lock: other packages in the image
    assert source_digest(root) not in (first, changed)
    copy = shutil.copytree(_tree(tmp_path / "b"), tmp_path / "c")
    assert source_digest(copy) == first  # the same files elsewhere: the same tag
    assert (
        images("registry.example.com/ml", root=copy).cpu
        == f"registry.example.com/ml/image-emotion:9.8.7-{first[:12]}-cpu"
    )


def test_readme_tells_how_to_build_push_and_check_the_images(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "image-emotion build-images --registry" in readme and "--push" in readme
    assert "## Containers" in readme and "docker/check.sh" in readme
    assert "docker/check.sh" in (repo_root / ".ci/run").read_text()


def _fake_tool(tmp_path, monkeypatch, script: str) -> builder.Engine:
    """A stand-in container tool on PATH whose `run` prints what ``script`` prints (no container runs here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "podman").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "podman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return builder.Engine("podman")


def test_a_base_without_python_3_11_is_refused_in_one_line(tmp_path, monkeypatch):
    engine = _fake_tool(tmp_path, monkeypatch, "echo 3.12.1")
    with pytest.raises(
        builder.ContainerToolError, match=r"^base image x:1 has Python 3\.12\.1; image-emotion needs 3\.11"
    ):
        builder.check_python(engine, "x:1")
    engine = _fake_tool(tmp_path / "b", monkeypatch, 'echo "exec: python3: not found" >&2; exit 127')
    with pytest.raises(builder.ContainerToolError, match=r"base image x:1 has no usable python3 .*python3: not found"):
        builder.check_python(engine, "x:1")
    assert builder.check_python(_fake_tool(tmp_path / "c", monkeypatch, "echo 3.11.2"), "x:1") == "3.11.2"


def test_a_stale_lock_stops_the_build_before_it_starts(tmp_path, repo_root):
    root = tmp_path / "src"
    shutil.copytree(
        repo_root, root, ignore=shutil.ignore_patterns(".venv", ".git", ".dvc", "data", ".containers", "*.db")
    )
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('"tqdm>=4.66",', '"tqdm>=4.67",'))
    with pytest.raises(Exception, match=r"image\.txt does not match pyproject\.toml's dependencies"):
        builder.plan(images("r.example.com/ns", root), "base@sha256:" + "0" * 64, root)


def test_podman_keeps_a_pushs_temporary_copies_under_the_work_folder(tmp_path):
    builder.podman_settings(tmp_path / "state")
    conf = (tmp_path / "state/containers.conf").read_text()
    assert f'image_copy_tmp_dir = "{(tmp_path / "state/tmp").resolve()}"' in conf
    assert conf.count("[engine]") == 1  # runc's setting, where it applies, joins the same table


def test_too_little_disk_is_one_line_before_anything_is_written(tmp_path):
    builder.require_free(tmp_path, 1, "a step")  # a byte is free
    with pytest.raises(builder.ContainerToolError, match=r"^pushing needs about \d+ GiB free under .* GiB: free"):
        builder.require_free(tmp_path, 2**60, "pushing")


def test_the_wheel_cache_is_shared_by_checkouts(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert builder.default_wheelhouse() == tmp_path / "cache/image-emotion/wheels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert builder.default_wheelhouse() == tmp_path / "home/.cache/image-emotion/wheels"


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is installed by docker/check.sh")
def test_older_images_of_the_repository_are_removed_and_nothing_else(tmp_path):
    engine = builder.Engine("podman", builder.podman_settings(tmp_path / "state"))
    repository = f"127.0.0.1:1/t{uuid.uuid4().hex[:8]}"
    current, older = Images(repository, "new"), Images(repository, "old")
    other = f"localhost/{uuid.uuid4().hex[:8]}:keep"
    made = []
    for content, refs in (("a", [older.tagged("cpu"), older.tagged("cuda")]), ("b", [current.tagged("cpu")]),
                          ("c", [current.tagged("cuda"), other])):  # fmt: skip
        (tmp_path / content).write_text(content)
        tar = tmp_path / f"{content}.tar"
        subprocess.run(["tar", "-cf", tar, "-C", tmp_path, content], check=True)
        image_id = engine.run("import", "--quiet", str(tar), refs[0], capture=True)
        for ref in refs[1:]:
            engine.run("tag", image_id, ref)
        made.append(image_id)
    try:
        removed = builder.remove_older_images(engine, current)
        assert sorted(removed) == sorted([older.tagged("cpu"), older.tagged("cuda")])
        for ref in (current.tagged("cpu"), current.tagged("cuda"), other):
            assert builder.image_exists(engine, ref)
        assert not builder.image_exists(engine, older.tagged("cpu"))
        assert not builder.image_exists(engine, made[0])  # its layers went with its last tag
    finally:
        subprocess.run(engine.command("rmi", "--force", *made), env={**os.environ, **engine.env}, capture_output=True)
