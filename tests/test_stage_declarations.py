"""The stage declarations (``stages/paths.py``) and what is generated from them: ``dvc.yaml`` (fresh, its source
dependencies checked against the standard library's module finder, its params against the config sections each
stage's code reads), the CLI's sub-commands, and the params a stage logs."""

import ast
import dataclasses
from dataclasses import dataclass
from modulefinder import ModuleFinder
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from image_emotion.cli import build_parser, main
from image_emotion.config import Config, load_config
from image_emotion.stages import dvc_yaml
from image_emotion.stages.paths import (
    STAGES,
    ClassifierPaths,
    ReportPaths,
    Run,
    Stage,
    TransferPaths,
    dep,
    metric,
    out,
)
from image_emotion.tracking.runs import logged_params

SRC = Path(dvc_yaml.PACKAGE_DIR).parent
CONFIG_SECTIONS = set(Config.model_fields)


def _entries() -> list[tuple[type[Stage], dict]]:
    """(declaration, its dvc.yaml stage as the committed file says) for every entry."""
    spec = yaml.safe_load((SRC.parent / "dvc.yaml").read_text())["stages"]
    return [(cls, spec[run.name].get("do", spec[run.name])) for cls in STAGES.values() for run in cls.dvc_runs()]


def test_the_committed_dvc_yaml_is_the_one_the_declarations_give(repo_root):
    assert (repo_root / "dvc.yaml").read_text() == dvc_yaml.render(), "run `image-emotion dvc-yaml`"


def test_every_stage_depends_on_every_module_its_code_can_import():
    """The oracle is ``modulefinder`` (bytecode, function bodies included), not the generator's AST walk."""
    for cls, stage in _entries():
        finder = ModuleFinder(path=[str(SRC)])
        finder.run_script(str(SRC / "image_emotion" / "stages" / f"{cls.module}.py"))
        files = {
            f"src/{Path(m.__file__).relative_to(SRC).as_posix()}"
            for name, m in finder.modules.items()
            if name.startswith("image_emotion") and m.__file__
        }
        deps = [d.rstrip("/") for d in stage["deps"] if d.startswith("src/")]
        missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
        assert len(files) > 5 and not missing, f"{cls.module}: dvc.yaml lacks {missing}"


def _config_reads(module: str) -> set[str]:
    """``config.<section>`` (the whole section) and ``config.<section>.<key>`` as the stage module's code spells
    them."""
    tree = ast.parse((SRC / "image_emotion" / "stages" / f"{module}.py").read_text())
    inner = set()  # the ``config.<section>`` nodes that are followed by ``.<key>``
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            head = node.value
            if isinstance(head.value, ast.Name) and head.value.id == "config" and head.attr in CONFIG_SECTIONS:
                reads.add(f"{head.attr}.{node.attr}")
                inner.add(id(head))
    for node in ast.walk(tree):
        config_attr = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "config"
        if config_attr and node.attr in CONFIG_SECTIONS and id(node) not in inner:
            reads.add(node.attr)
    return reads


def test_every_config_section_a_stage_reads_is_one_of_its_dvc_params():
    """``device`` among them: changing it must re-run the stages that pick a device with it."""
    for cls, stage in _entries():
        params = {p if isinstance(p, str) else next(iter(p)) for p in stage["params"]}
        if params == {"params.yaml"}:
            continue  # the whole file
        for read in _config_reads(cls.module):
            section = read.split(".")[0]
            assert section in params or read in params or section in {"mlflow"}, (
                f"{cls.module} reads config.{read}, missing from its params {sorted(params)}"
            )
    assert "device" in _config_reads("train_classifier")  # the oracle itself sees the case that was missed


def test_the_cli_has_one_sub_command_per_stage_with_an_option_per_path():
    parser = build_parser()
    for command, cls in STAGES.items():
        args = parser.parse_args([command])
        for f in dataclasses.fields(cls):
            assert getattr(args, f.name) in (f.default, None), (command, f.name)
    args = parser.parse_args(["transfer-cv", "--set-name", "art", "--prepared", "p/art"])
    assert (args.set_name, args.prepared) == ("art", Path("p/art"))


def test_a_new_stage_is_one_declaration(monkeypatch):
    """A declaration alone puts the stage into dvc.yaml (deps, params, outs, metrics) and the CLI."""

    @dataclass(frozen=True)
    class SummaryPaths(Stage):
        command: ClassVar[str] = "summarize"
        module: ClassVar[str] = "evaluate"  # an existing module stands in for the new one's code
        help: ClassVar[str] = "one line per run"
        reads: ClassVar[tuple[str, ...]] = ("emotions",)
        runs: ClassVar[tuple[Run, ...]] = (Run("summarize", paths={"table": "metrics/summary_all.json"}),)

        evaluation: Path = dep("metrics/evaluate.json")
        table: Path = metric("metrics/summary.json")
        figures: Path = out("plots_summary")

    monkeypatch.setitem(STAGES, "summarize", SummaryPaths)
    stage = yaml.safe_load(dvc_yaml.render())["stages"]["summarize"]
    assert stage["cmd"] == "image-emotion summarize --table metrics/summary_all.json"
    assert stage["deps"][0] == "metrics/evaluate.json" and "src/image_emotion/stages/evaluate.py" in stage["deps"]
    assert (stage["params"], stage["outs"]) == (["emotions"], ["plots_summary"])
    assert stage["metrics"] == [{"metrics/summary_all.json": {"cache": False}}]
    assert build_parser().parse_args(["summarize"]).figures == Path("plots_summary")


def test_dvc_yaml_check_refuses_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(dvc_yaml.render().replace("- device\n", "", 1))
    assert main(["dvc-yaml", "--out", str(stale), "--check"]) == 2
    assert "differs from the stage declarations" in capsys.readouterr().err
    assert main(["dvc-yaml", "--out", str(stale)]) == 0 and stale.read_text() == dvc_yaml.render()


def test_logged_params_take_sections_single_settings_and_dotted_parts(repo_root):
    config = load_config(repo_root / "params.yaml", ["transfer.head.epochs=7", "device=cpu"])
    params = logged_params(config, ("device", "transfer.head", "mlflow", "*"))
    assert params["device"] == "cpu" and set(params) == {"device", "transfer"}
    assert set(params["transfer"]) == {"head"} and params["transfer"]["head"]["epochs"] == 7


def test_paths_under_a_root_keep_the_repository_layout(tmp_path):
    paths = ReportPaths.under(tmp_path, out_dir=tmp_path / "elsewhere")
    assert paths.retrieval_transfer == tmp_path / "metrics/retrieval_transfer"
    assert paths.out_dir == tmp_path / "elsewhere"
    assert TransferPaths.under(tmp_path).set_name == "small"
    assert ClassifierPaths().sweep == Path("metrics/lambda_sweep.json")


def test_a_command_declared_twice_is_refused():
    from image_emotion.stages.paths import stage

    @dataclass(frozen=True)
    class Again(Stage):
        command: ClassVar[str] = "evaluate"

    with pytest.raises(ValueError, match="two stages declare the command 'evaluate'"):
        stage(Again)
