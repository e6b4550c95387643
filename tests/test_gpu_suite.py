"""The GPU benchmark suite's table and its CPU fallback (no figure is asserted: timing is for benchmarks/)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu_suite import table  # noqa: E402
from results import emit, parse, speed_up  # noqa: E402


def test_speed_up_follows_the_unit_a_figure_ends_in():
    assert speed_up("extraction ms/image", 12.0, 3.0) == 4.0  # a time: CPU over CUDA
    assert speed_up("training images/s", 20.0, 100.0) == 5.0  # a rate: CUDA over CPU
    assert speed_up("one head fit s", 6.0, 0.5) == 12.0
    assert speed_up("full / detector x", 1.1, 1.3) is None  # a ratio compares within one device
    with pytest.raises(ValueError, match="does not end in a unit"):
        speed_up("extraction time", 1.0, 2.0)


def test_results_lines_round_trip_and_a_name_without_unit_is_refused(capsys):
    emit("detector training", "cuda", {"extraction ms/image": 2.5})
    print("a human-readable line between them")
    emit("detector training", "cpu", {"extraction ms/image": 10.0})
    records = parse(capsys.readouterr().out)
    assert [(r["device"], r["figures"]["extraction ms/image"]) for r in records] == [("cuda", 2.5), ("cpu", 10.0)]
    with pytest.raises(ValueError):
        emit("x", "cpu", {"no unit here": 1.0})


def test_the_table_sets_each_figure_of_both_devices_side_by_side_with_cudas_gain():
    records = [
        {"benchmark": "inference", "device": "cpu", "figures": {"full ms/image": 40.0, "full / backbone x": 1.8}},
        {"benchmark": "inference", "device": "cuda", "figures": {"full ms/image": 5.0, "full / backbone x": 1.2}},
        {"benchmark": "serving", "device": "cpu", "figures": {"HTTP, batch 1 images/s": 20.0}},
    ]
    rows = {row.split("|")[2].strip(): [c.strip() for c in row.split("|")[3:6]] for row in table(records)[2:]}
    assert rows == {
        "full ms/image": ["40", "5", "8.00×"],
        "full / backbone x": ["1.8", "1.2", "—"],
        "HTTP, batch 1 images/s": ["20", "—", "—"],  # no GPU figure: no gain
    }


@pytest.mark.slow
def test_without_a_gpu_the_suite_says_so_in_one_line_and_measures_the_cpu_column(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # as on a machine without a GPU
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--only", "metric", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("no CUDA device here (torch ") and "CPU column only" in first
    assert "metric on cpu: ok" in done.stdout and "metric on cuda" not in done.stdout
    rows = [r for r in rest if r.startswith("| metric")]
    assert {r.split("|")[2].strip() for r in rows} == {
        "cached maps s/epoch",
        "fine-tune s/epoch",
        "backbone every step / cached x",
    }
    assert all(r.split("|")[4].strip() == "—" for r in rows)  # no CUDA column measured
    assert (tmp_path / "metric.cpu.log").read_text().count("RESULT ") == 1
