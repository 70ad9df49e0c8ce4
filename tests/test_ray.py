"""`segearth predict --ray`: a local Ray with 2 workers gives the single-process outputs, survives a
corrupt input, resumes from segearth-done.jsonl; plus the command-line checks and the driver's
back-pressure, which need no Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from rich.console import Console
from typer.testing import CliRunner

from segearth.batch import BatchReport, Job
from segearth.cli import app
from segearth.predict import PredictOptions, RasterResult, output_paths
from segearth.scale import DONE_LOG, QUEUE_PER_WORKER, DoneLog, _drain

from conftest import SHARED, require_shared

SCENES = ("spacenet_rgb_uint8.tif", "neon_rgb_nodata255.tif", "spacenet_ms_4band_float64.tif")
QUESTIONS = ["the water", "the roads"]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module; `--ray local` uses a Ray already started in the process."""
    import ray  # in the test extra
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in SCENES:
        shutil.copy(require_shared(SHARED / "data" / "geotiff" / name), folder / name)
    return folder


def predict(folder, out, checkpoint, *extra):
    return CliRunner().invoke(app, ["predict", str(folder), *QUESTIONS, "-m", str(checkpoint), "--out", str(out),
                                    "--dtype", "float32", *extra])


def on_ray(folder, out, checkpoint, *extra):
    return predict(folder, out, checkpoint, "--ray", "local", "--workers", "2", *extra)


def results(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != DONE_LOG)


@pytest.mark.slow  # each Ray test starts two worker processes that import torch and load a model
def test_two_ray_workers_write_what_one_process_writes(ray_local, checkpoint, scenes, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (1 CPU): the same float summation order, so the same logits
    try:
        single = predict(scenes, tmp_path / "single", checkpoint)
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output
    ray = on_ray(scenes, tmp_path / "ray", checkpoint)
    assert ray.exit_code == 0, ray.output
    names = results(tmp_path / "single")
    assert results(tmp_path / "ray") == names and len(names) == 4 * len(SCENES) * len(QUESTIONS)
    for name in names:
        a, b = tmp_path / "single" / name, tmp_path / "ray" / name
        if name.endswith("_mask.tif"):
            with rasterio.open(a) as x, rasterio.open(b) as y:
                assert (x.crs, x.transform, x.shape) == (y.crs, y.transform, y.shape)
                assert np.array_equal(x.read(), y.read())
        if not name.endswith(".gpkg"):  # a GeoPackage stores its write time
            assert a.read_bytes() == b.read_bytes(), name
    done = [json.loads(line) for line in (tmp_path / "ray" / DONE_LOG).read_text().splitlines()]
    assert sorted((Path(d["image"]).name, d["question"]) for d in done) == sorted(
        (s, q) for s in SCENES for q in QUESTIONS)


@pytest.mark.slow
def test_a_corrupt_input_fails_alone(ray_local, checkpoint, scenes, tmp_path):
    (scenes / "broken.tif").write_bytes(b"not a raster")
    result = on_ray(scenes, tmp_path / "out", checkpoint)
    assert result.exit_code == 1, result.output
    assert "broken.tif" in result.output and "not a readable raster" in result.output
    assert "1 item(s) failed" in result.output
    masks = [n for n in results(tmp_path / "out") if n.endswith("_mask.tif")]
    assert len(masks) == len(SCENES) * len(QUESTIONS)


@pytest.mark.slow
def test_a_rerun_skips_what_the_record_says_is_done(ray_local, checkpoint, scenes, tmp_path):
    out = tmp_path / "out"
    assert on_ray(scenes, out, checkpoint).exit_code == 0
    # An interrupted run: one answer's files never appeared and its record line was never written.
    log = out / DONE_LOG
    lines = log.read_text().splitlines()
    lost = json.loads(lines[2])
    log.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    for name in lost["outputs"].values():
        (out / name).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != DONE_LOG}

    rerun = on_ray(scenes, out, checkpoint)  # no --skip-existing: a run that redid finished items would be refused
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(lines) - 1} item(s) finished by an earlier run" in rerun.output
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != DONE_LOG}
    assert {n for n in after if n not in before} == set(lost["outputs"].values())
    assert all(after[n] == t for n, t in before.items())  # nothing else was written again
    assert len(log.read_text().splitlines()) == len(lines)


def test_done_log_needs_the_same_outputs_and_survives_a_torn_line(tmp_path):
    opts = PredictOptions(out_dir=tmp_path)
    paths = output_paths("scene_the-water_0123abcd", opts)
    for p in paths.values():
        p.write_bytes(b"x")
    log = DoneLog(tmp_path)
    assert not log.finished(paths)
    log.record("scene.tif", "the water", paths)
    log.close()
    with open(tmp_path / DONE_LOG, "a") as f:
        f.write('{"image": "other.tif", "quest')  # a crash in the middle of a line
    log = DoneLog(tmp_path)
    assert log.finished(paths)
    assert not log.finished(output_paths("scene_the-water_0123abcd", PredictOptions(out_dir=tmp_path,
                                                                                   probabilities=True)))
    log.record("next.tif", "the roads", paths)
    log.close()
    lines = (tmp_path / DONE_LOG).read_text().splitlines()
    assert json.loads(lines[-1])["image"] == "next.tif"  # not glued to the torn line
    paths["preview"].unlink()
    assert not DoneLog(tmp_path).finished(paths)


def test_the_driver_keeps_two_jobs_per_worker_in_flight(tmp_path):
    """The back-pressure of the Ray path, with a stand-in for Ray that records what is in flight."""
    seen = []

    class Ref:
        def __init__(self, job):
            self.job = job

    class FakeRay:
        exceptions = SimpleNamespace(RayError=RuntimeError)

        @staticmethod
        def wait(refs, num_returns):
            seen.append(len(refs))
            return refs[:1], refs[1:]

        @staticmethod
        def get(ref):
            if ref.job.image.name == "bad.tif":
                return None, "bad.tif: not a readable raster"
            return RasterResult(ref.job.image, None), None  # no answers: nothing to record

    worker = SimpleNamespace(run=SimpleNamespace(remote=Ref))
    jobs = [Job(tmp_path / f"{i}.tif", ["q"]) for i in range(40)] + [Job(tmp_path / "bad.tif", ["q"])]
    report = BatchReport()
    _drain(FakeRay, [worker, worker, worker], jobs, DoneLog(tmp_path), report, Console(quiet=True))
    assert len(seen) == len(jobs) and max(seen) == 3 * QUEUE_PER_WORKER
    assert len(report.done) == 40 and report.failed == [("bad.tif", "bad.tif: not a readable raster")]


@pytest.mark.parametrize("extra, message", [
    (["--ray", "ray.example.org"], "--ray takes local, auto or ray://HOST:PORT"),
    (["--ray", "local", "--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2"], "need --ray"),
    (["--ray", "local", "--device", "cuda"], "needs --gpus-per-worker"),
    (["--ray", "local", "--cpus-per-worker", "0"], "--cpus-per-worker must be more than 0"),
])
def test_bad_ray_options_exit_2_with_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "the water", "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()  # refused before anything is done


def test_without_ray_installed_one_line(tmp_path, monkeypatch):
    raster = require_shared(SHARED / "data" / "geotiff" / SCENES[0])
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    result = CliRunner().invoke(app, ["predict", str(raster), "the water", "--out", str(tmp_path), "--ray", "local"])
    assert result.exit_code == 2 and "pip install 'segearth[ray]'" in result.output, result.output


def test_the_command_line_does_not_import_ray():
    code = "import sys, segearth.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
