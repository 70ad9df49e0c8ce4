"""Checkpoint loading: key coverage of the released model, broken checkpoints, round trips."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from segearth import SegEarthR1, released_config
from segearth.checkpoint import (
    CheckpointError,
    load_official_weights,
    load_pretrained,
    plan_load,
    save_pretrained,
    to_official_state_dict,
)
from segearth.cli import app
from segearth.modeling.llm import fuse_qkv, split_fused_qkv

from conftest import FULL_KEYS


def test_every_released_key_is_consumed_with_its_shape():
    if not FULL_KEYS.is_file():
        pytest.skip(f"{FULL_KEYS} not found")
    keys = json.loads(FULL_KEYS.read_text())["keys"]
    official = {k["key"]: tuple(k["shape"]) for k in keys}
    vocab = official["model.embed_tokens.weight"][0]  # 51200 here, 50297 in the released file
    with torch.device("meta"):
        model = SegEarthR1(released_config(vocab_size=vocab))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = plan_load(ours, official, num_heads=32)
    assert report.ok, report.message("full_keys.json")
    assert report.missing == []
    # exactly the parameters the official model saves but never uses for a mask are dropped
    assert sorted(report.ignored_unused) == sorted(
        ["seg_query", "predictor.query_feat.weight", "predictor.query_embed.weight",
         "predictor.SEG_query_embed.weight", "predictor.new_query_embed.weight"]
        + [f"predictor.{h}.layers.{i}.{p}" for h in ("SEG_proj", "CLASS_proj") for i in (0, 1) for p in ("weight", "bias")]
    )
    # no parameter of ours is left unloaded, and parameter counts agree
    used = sum(torch.Size(s).numel() for k, s in official.items() if k not in report.ignored_unused
               and not k.endswith("relative_position_index"))
    assert used == sum(p.numel() for p in model.parameters())


def test_vocab_follows_the_checkpoint():
    with torch.device("meta"):
        model = SegEarthR1(released_config(vocab_size=50297))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ckpt = {k: s for k, s in to_official_shapes(model).items()}
    ckpt["model.embed_tokens.weight"] = (51200, 2048)
    assert not plan_load(ours, ckpt, 32).ok
    assert plan_load(ours, ckpt, 32, vocab_follows_checkpoint=True).ok


def to_official_shapes(model):
    return {k: tuple(v.shape) for k, v in to_official_state_dict(model).items()}


def test_fused_qkv_split_is_per_head_interleaved():
    heads, hd, d = 4, 3, 12
    # fused output row r = head h, part p (q/k/v), dim i  ->  r = h*3*hd + p*hd + i
    fused = torch.arange(3 * heads * hd, dtype=torch.float32)[:, None].expand(-1, d).clone()
    q, k, v = split_fused_qkv(fused, heads)
    assert q[:, 0].tolist() == [h * 3 * hd + i for h in range(heads) for i in range(hd)]
    assert k[:, 0].tolist() == [h * 3 * hd + hd + i for h in range(heads) for i in range(hd)]
    assert torch.equal(fuse_qkv(q, k, v, heads), fused)
    bq, bk, bv = split_fused_qkv(fused[:, 0].clone(), heads)
    assert torch.equal(bv, v[:, 0])


def _official_weights(model):
    return {k: v.clone() for k, v in to_official_state_dict(model).items()}


def test_missing_unexpected_and_misshaped_keys_are_all_listed(small_model):
    weights = _official_weights(small_model)
    del weights["model.final_layernorm.bias"]
    weights["local_project.weight"] = torch.zeros(3, 3)
    weights["some.extra.tensor"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_official_weights(small_model, weights, "broken")
    msg = str(err.value)
    assert "llm.phi.final_layernorm.bias" in msg and "missing" in msg
    assert "some.extra.tensor" in msg and "unexpected" in msg
    assert "local_project.weight: checkpoint [3, 3]" in msg


def test_save_and_load_round_trip_gives_identical_outputs(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt")
    ids = torch.tensor([[5, 6, -200, 7, -204, 8, -201, 9]])
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = small_model(ids, [torch.tensor([1, 2, 3])], images=images).mask_logits
        b = loaded(ids, [torch.tensor([1, 2, 3])], images=images).mask_logits
    assert torch.equal(a, b)
    with pytest.raises(FileExistsError):
        save_pretrained(small_model, tmp_path / "ckpt")


def test_sharded_safetensors_and_bf16_weights(small_model, tmp_path):
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _official_weights(small_model).items()}
    keys = sorted(weights)
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({k: weights[k] for k in keys[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k] for k in keys[1::2]}, str(folder / "model-00002-of-00002.safetensors"))
    save_pretrained(small_model, tmp_path / "ref")
    (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    model = load_pretrained(folder)
    ref = small_model.llm.phi.layers[0].self_attn.k_proj.weight.to(torch.bfloat16).float()
    assert torch.equal(model.llm.phi.layers[0].self_attn.k_proj.weight, ref)


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_bin_with_code_is_refused(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ref")
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        load_pretrained(folder)


def test_plain_tensor_bin_loads(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ref")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    torch.save(_official_weights(small_model), folder / "pytorch_model.bin")
    model = load_pretrained(folder)
    assert torch.equal(model.connector.fc.bias, small_model.connector.fc.bias)


def test_cli_reports_broken_checkpoint_without_traceback(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del w["model.mm_projector.fc.bias"]
    save_file(w, str(tmp_path / "ckpt" / "model.safetensors"))
    result = CliRunner().invoke(app, ["check-checkpoint", str(tmp_path / "ckpt")])
    assert result.exit_code == 2
    assert "connector.fc.bias" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["check-checkpoint", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output
