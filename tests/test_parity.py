"""The official parity fixture, end to end, through the same command users run."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from segearth.cli import app
from segearth.parity import run_parity


def test_parity_small_fixture_matches_official(parity_dir):
    results, missing = run_parity(parity_dir)
    assert missing == []
    names = {r.name for r in results}
    # every family of recorded tensors is compared
    for prefix in ("vision.res5", "connector.", "llm.layer1.output", "llm.last_hidden_state", "dproj.SEG_embedding",
                   "pixel_decoder.mask_features", "predictor.pred_masks_layer3", "output.pred_masks_0",
                   "loss.raw.loss_dice_2", "loss.total", "loss.loss_llm"):
        assert any(n.startswith(prefix) for n in names), prefix
    bad = [(r.name, r.max_abs_diff) for r in results if not r.ok]
    assert bad == []
    mask = next(r for r in results if r.name == "output.pred_masks_0")
    assert mask.exact and mask.max_abs_diff == 0


def test_parity_cli_passes_and_reports(parity_dir):
    result = CliRunner().invoke(app, ["parity", str(parity_dir)])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("max abs diff: ")
    assert float(last.split(": ")[1]) <= 1e-4


def test_parity_cli_fails_on_a_perturbed_weight(parity_dir, tmp_path):
    for name in ("config.json", "io.safetensors"):
        shutil.copy(parity_dir / name, tmp_path / name)
    weights = load_file(str(parity_dir / "weights.safetensors"))
    weights["predictor.decoder_norm.bias"] = weights["predictor.decoder_norm.bias"] + 1e-2
    save_file(weights, str(tmp_path / "weights.safetensors"))
    result = CliRunner().invoke(app, ["parity", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_parity_cli_clear_error_for_a_non_fixture(tmp_path):
    result = CliRunner().invoke(app, ["parity", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.json is missing" in result.output
    assert "Traceback" not in result.output


def test_bf16_forward_stays_close_to_fp32(parity_dir):
    """The same fixture in bfloat16: runs end to end and the logits stay correlated."""
    from segearth.checkpoint import build_and_load
    from segearth.parity import fixture_config, replay

    io = load_file(str(parity_dir / "io.safetensors"))
    cfg = fixture_config(json.loads((parity_dir / "config.json").read_text()), io)
    weights = load_file(str(parity_dir / "weights.safetensors"))
    model = build_and_load(cfg, weights, "fixture", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    ours = replay(model, io)["output.mask_logits_upsampled_0"].float()
    ref = io["output.mask_logits_upsampled_0"]
    corr = torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.95
