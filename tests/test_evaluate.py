"""``segearth eval``: the harness, baselines, colour prior, report files and the command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from segearth import SegEarthR1, small_config
from segearth.checkpoint import save_pretrained
from segearth.data import Sample
from segearth.evaluate import ColourPrior, eval_command, evaluate, run_eval, standard_baselines
from segearth.geo.letterbox import Letterbox
from segearth.predictor import Prediction, Predictor
from segearth.report import REPORT_FILES, best_presence_threshold, gated_giou, write_reports
from segearth.tokenizer import byte_level_tokenizer

import test_datasets
from test_datasets import random_rgb, write_raster

# The miniature official layouts of the dataset tests, reused as fixtures here.
earthreason_root = test_datasets.earthreason_root
rrsisd_root = test_datasets.rrsisd_root
synthetic_dubai = test_datasets.synthetic_dubai

SIZE = 128  # small_config(128): same code paths as the 256 default, several times faster


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    save_pretrained(SegEarthR1(small_config(SIZE)).eval(), folder, tokenizer=byte_level_tokenizer())
    return folder


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(SegEarthR1(small_config(SIZE)).eval(), byte_level_tokenizer())


@pytest.fixture
def refsegrs_root(tmp_path: Path) -> Path:
    base = tmp_path / "rs_ref_seg" / "RefSegRS"
    for image_id in (3, 12):
        write_raster(base / "images" / f"{image_id}.tif", random_rgb(24, 24, seed=image_id))
        mask = np.zeros((1, 24, 24), np.uint8)
        mask[0, :8] = 255
        write_raster(base / "masks" / f"{image_id}.tif", mask)
    (base / "output_phrase_val.txt").write_text("3 road along the river\n12 vehicle on the left\n3 the river\n")
    return tmp_path


class StubPredictor:
    """Constant logits; counts the calls so grouping can be checked without a network."""

    def __init__(self, logit: float, size: int = SIZE, presence_threshold: float | None = None) -> None:
        self.image_size, self.logit = size, logit
        self.presence_threshold = presence_threshold
        self.set_image_calls = 0
        self.questions: list[str] = []

    def set_image(self, image: np.ndarray) -> None:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        self.box = Letterbox.fit(image.shape[0], image.shape[1], self.image_size)
        self.set_image_calls += 1

    def predict(self, question: str) -> Prediction:
        self.questions.append(question)
        return Prediction(question, torch.full((self.image_size // 4, self.image_size // 4), self.logit), self.box)


def make_sample(tmp_path: Path, name: str, image: np.ndarray, mask: np.ndarray, kind: str = "referring",
                class_name: str | None = None) -> Sample:
    path = write_raster(tmp_path / f"{name}.png", np.moveaxis(image, -1, 0))
    def loader() -> np.ndarray:
        return mask.astype(np.uint8)

    return Sample(name, path, f"where is {name}?", kind, None, loader, class_name)  # type: ignore[arg-type]


def by_id(result, method: str = "model") -> dict[str, float]:
    return {r.id: s.iou for r, s in zip(result.records, result.scores[method], strict=True)}


# --------------------------------------------------------------------------- harness and baselines


def test_grouping_encodes_each_image_once(earthreason_root: Path) -> None:
    from segearth.data import EarthReason

    samples = EarthReason(earthreason_root, "val").samples  # image a: 2 questions, image b: 1
    stub = StubPredictor(-1.0)
    result = evaluate(stub, samples)
    assert stub.set_image_calls == 2 and result.n_images == 2
    assert stub.questions == [s.question for s in samples]
    assert [r.id for r in result.records] == [s.id for s in samples]


def test_baselines_on_hand_made_cases(tmp_path: Path) -> None:
    image = random_rgb(20, 30).transpose(1, 2, 0)
    full, empty = np.ones((20, 30)), np.zeros((20, 30))
    half = np.zeros((20, 30))
    half[:, :15] = 1
    samples = [make_sample(tmp_path, n, image, m) for n, m in (("full", full), ("empty", empty), ("half", half))]
    paper = evaluate(StubPredictor(-1.0), samples, "paper")  # the model predicts nothing
    assert by_id(paper) == by_id(paper, "nothing") == {"full": 0.0, "empty": 1.0, "half": 0.0}
    everything = by_id(paper, "everything")
    assert everything["empty"] == 0.0 and everything["full"] == pytest.approx(1.0, abs=1e-6)
    assert everything["half"] == pytest.approx(0.5, abs=1e-6)
    new_h = int(20 * SIZE / 30)  # letterboxed image height: the rest of the canvas is padding
    assert by_id(paper, "everything_canvas")["full"] == pytest.approx(new_h / SIZE, abs=1e-6)
    native = evaluate(StubPredictor(1.0), samples, "native")  # the model predicts everything
    assert "everything_canvas" not in native.scores
    assert by_id(native) == by_id(native, "everything")
    assert native.records[2].intersection == 300 and native.records[2].union == 600
    summary = native.summary()["nothing"]["overall"]
    assert summary["gIoU"] == pytest.approx(1 / 3) and summary["cIoU"] == 0.0


def test_paper_and_native_agree_on_square_images(tmp_path: Path, predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE))
    mask[20:70, 30:100] = 1
    samples = [make_sample(tmp_path, "sq", image, mask), make_sample(tmp_path, "sq2", image, 1 - mask)]
    paper, native = evaluate(predictor, samples, "paper"), evaluate(predictor, samples, "native")
    for a, b in zip(paper.records, native.records, strict=True):
        fields = ("iou", "intersection", "union", "target_pixels", "predicted_pixels")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert by_id(paper, "everything_canvas") == by_id(paper, "everything") == by_id(native, "everything")


def test_colour_prior_learns_class_colours(tmp_path: Path) -> None:
    blue, sand = np.array([20, 60, 200], np.uint8), np.array([210, 180, 120], np.uint8)

    def scene(name: str, split_row: int) -> list[Sample]:
        image = np.empty((16, 16, 3), np.uint8)
        image[:split_row], image[split_row:] = blue, sand
        water = np.zeros((16, 16))
        water[:split_row] = 1
        return [make_sample(tmp_path, f"{name}-w", image, water, class_name="water"),
                make_sample(tmp_path, f"{name}-l", image, 1 - water, class_name="land")]

    prior = ColourPrior.fit(scene("train", 5))
    test = scene("test", 11)
    result = evaluate(StubPredictor(-1.0), test, "native", baselines=standard_baselines("native", SIZE, prior))
    assert by_id(result, "oracle_colour") == pytest.approx({"test-w": 1.0, "test-l": 1.0}, abs=1e-6)
    assert prior.predict(test[0].load_image(), "road").sum() == 0  # a class never seen in training


# --------------------------------------------------------------------------- end to end with report files


@pytest.mark.parametrize("dataset, root_fixture", [
    ("earthreason", "earthreason_root"), ("rrsisd", "rrsisd_root"), ("refsegrs", "refsegrs_root")])
def test_official_layouts_end_to_end(dataset: str, root_fixture: str, checkpoint: Path, tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(root_fixture)
    out = tmp_path / "report"
    result = run_eval(dataset, "val", root, checkpoint, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    report = json.loads((out / "report.json").read_text())
    assert report["n_samples"] == len(result.records) > 0 and report["canvas_size"] == SIZE
    overall = report["metrics"]["model"]["overall"]
    assert set(overall) == {"n", "gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"}
    with (out / "samples.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [r.id for r in result.records]
    assert {"id", "question", "kind", "iou", "intersection", "union", "iou_nothing"} <= set(rows[0])
    assert "| model |" in (out / "report.md").read_text()
    assert ("oracle_colour" in report["metrics"]) == (dataset == "rrsisd")  # only RRSIS-D has classes
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_eval(dataset, "val", root, checkpoint, out)


def test_landcover_end_to_end_native(synthetic_dubai: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_eval("landcover", "all", synthetic_dubai, checkpoint, out, protocol="native", limit=4)
    assert len(result.records) == 4 and set(result.scores) == {"model", "nothing", "everything", "oracle_colour"}
    assert any("in-sample" in note for note in result.notes)
    md = (out / "report.md").read_text()
    assert "## By class" in md and "## By question kind" in md and "oracle class + colour prior" in md
    run_eval("landcover", "all", synthetic_dubai, checkpoint, out, limit=2, overwrite=True)
    assert json.loads((out / "report.json").read_text())["n_samples"] == 2


def test_command_line_and_errors(synthetic_dubai: Path, checkpoint: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("eval")(eval_command)
    runner = CliRunner()
    args = ["-d", "landcover", "--data-root", str(synthetic_dubai), "--split", "all", "--limit", "1"]
    ok = runner.invoke(app, [*args, "-m", str(checkpoint), "-o", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "r" / "cases.png").is_file()
    for extra, message in ((["-m", str(tmp_path / "nope")], "does not exist"),
                           (["-m", str(checkpoint), "--split", "test"], "split"),
                           (["-m", str(checkpoint), "-o", str(tmp_path / "r")], "--overwrite")):
        failed = runner.invoke(app, [*args, *extra])
        assert failed.exit_code == 2 and message in failed.output, failed.output
    missing = runner.invoke(app, ["-d", "earthreason", "--data-root", str(tmp_path), "-m", str(checkpoint)])
    assert missing.exit_code == 2 and "EarthReason" in missing.output


def test_eval_scores_exactly_the_mask_predict_writes(tmp_path: Path, predictor: Predictor) -> None:
    """One pipeline: the mask `segearth eval` scores (native protocol) is the file `segearth predict` writes."""
    import rasterio

    from segearth.predict import PredictOptions, predict_raster

    image = np.random.default_rng(7).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    png = write_raster(tmp_path / "scene.png", np.moveaxis(image, -1, 0))
    question = "where is scene?"  # make_sample's question for the name "scene"
    written = predict_raster(predictor, png, [question], PredictOptions(out_dir=tmp_path / "out"), "tiny")
    with rasterio.open(written.results[0].mask) as m:
        mask = m.read(1) == 255
    assert 0 < mask.sum() < mask.size  # a trivial all/nothing mask would match by accident
    result = evaluate(predictor, [make_sample(tmp_path, "scene", image, mask)], "native", baselines=[])
    record = result.records[0]
    assert record.iou == 1.0 and record.predicted_pixels == mask.sum() == record.target_pixels


def test_report_tabulates_the_is_it_here_threshold(tmp_path: Path) -> None:
    """Absent-class questions and the others, split by thresholds on the answer's max_probability, with the
    gIoU each threshold gives and the best one (how a model's presence threshold is calibrated)."""
    image = random_rgb(16, 16).transpose(1, 2, 0)
    full, empty = np.ones((16, 16)), np.zeros((16, 16))
    samples = [make_sample(tmp_path, "gone", image, empty, kind="absent"),
               make_sample(tmp_path, "gone2", image, empty, kind="absent"),
               make_sample(tmp_path, "here", image, full)]
    stub = StubPredictor(0.8)  # probability sigmoid(0.8) = 0.69 everywhere, for every question
    result = evaluate(stub, samples, "paper")
    assert [r.max_probability for r in result.records] == pytest.approx([0.6900] * 3, abs=1e-4)
    # Marking everything: IoU 0, 0, 1; "not here" for all: 1, 1, 0.
    assert gated_giou(result.records, 0.6) == pytest.approx(1 / 3)
    assert gated_giou(result.records, 0.7) == pytest.approx(2 / 3)
    assert best_presence_threshold(result.records) == 0.69  # the lowest threshold above 0.68997
    write_reports(result, tmp_path / "out", {"dataset": "toy", "split": "val", "model": "stub"})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.6 | 0.00 | 0.00 | 33.33 |" in md and "| 0.7 | 100.00 | 100.00 | 66.67 |" in md
    assert "Highest gIoU at threshold 0.69 (66.67)" in md
    with (tmp_path / "out" / "samples.csv").open() as fh:
        assert [float(row["max_probability"]) for row in csv.DictReader(fh)] == pytest.approx([0.69] * 3, abs=1e-4)
    # Without absent questions there is nothing to separate: no section.
    only_present = evaluate(stub, samples[2:], "paper")
    write_reports(only_present, tmp_path / "out2", {"dataset": "toy", "split": "val", "model": "stub"})
    assert "Is it here?" not in (tmp_path / "out2" / "report.md").read_text()


def test_eval_scores_answers_below_the_presence_threshold_as_not_here(tmp_path: Path) -> None:
    image = random_rgb(16, 16).transpose(1, 2, 0)
    samples = [make_sample(tmp_path, "gone", image, np.zeros((16, 16)), kind="absent"),
               make_sample(tmp_path, "here", image, np.ones((16, 16)))]
    for protocol in ("paper", "native"):
        sure = evaluate(StubPredictor(0.8, presence_threshold=0.6), samples, protocol)  # p 0.69: here
        assert by_id(sure) == pytest.approx({"gone": 0.0, "here": 1.0})
        unsure = evaluate(StubPredictor(0.8, presence_threshold=0.7), samples, protocol)  # "not here"
        assert by_id(unsure) == {"gone": 1.0, "here": 0.0}
        assert [r.predicted_pixels for r in unsure.records] == [0, 0]
        assert "below 0.7 (the presence threshold)" in unsure.method_descriptions["model"]
    # The report tabulates only the thresholds the scores allow (below 0.7 the masks are gone).
    write_reports(unsure, tmp_path / "out", {"dataset": "toy", "split": "val", "model": "stub",
                                             "presence_threshold": 0.7})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.6 |" not in md and "| 0.7 | 100.00 | 100.00 | 50.00 |" in md
