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
    load_pretrained,
    load_weights,
    map_key,
    official_key,
    plan_load,
    save_pretrained,
    to_official_state_dict,
)
from segearth.checkpoint_io import InMemoryTensors
from segearth.cli import app
from segearth.modeling.llm import fuse_qkv, split_fused_qkv

from conftest import FULL_KEYS, require_shared


def test_every_released_key_is_consumed_with_its_shape():
    require_shared(FULL_KEYS)
    keys = json.loads(FULL_KEYS.read_text())["keys"]
    official = {k["key"]: tuple(k["shape"]) for k in keys}
    vocab = official["model.embed_tokens.weight"][0]  # 51200 here, 50297 in the released file
    with torch.device("meta"):
        model = SegEarthR1(released_config(vocab_size=vocab))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = plan_load(ours, official)
    assert report.ok, report.message("full_keys.json")
    assert report.missing == []
    # exactly the parameters the official model saves but never uses for a mask are dropped
    assert sorted(report.ignored_unused) == sorted(
        ["seg_query", "predictor.query_feat.weight", "predictor.query_embed.weight",
         "predictor.SEG_query_embed.weight", "predictor.new_query_embed.weight"]
        + [f"predictor.{h}.layers.{i}.{p}"
           for h in ("SEG_proj", "CLASS_proj") for i in (0, 1) for p in ("weight", "bias")]
    )
    # no parameter of ours is left unloaded, and parameter counts agree
    used = sum(torch.Size(s).numel() for k, s in official.items() if k not in report.ignored_unused
               and not k.endswith("relative_position_index"))
    assert used == sum(p.numel() for p in model.parameters())


def test_vocab_follows_the_checkpoint(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda r: r["segearth"]["llm"].update(vocab_size=300))  # tensors: 259
    assert load_pretrained(tmp_path / "ckpt").cfg.llm.vocab_size == 259


def test_key_rules_map_both_ways_on_every_key():
    """One table, read both ways: official -> ours -> official is the identity on every released key,
    and ours -> official -> ours on every key of our model."""
    require_shared(FULL_KEYS)
    official = [k["key"] for k in json.loads(FULL_KEYS.read_text())["keys"]]
    mapped = [k for k in official if map_key(k) is not None]
    assert len(mapped) > 0.9 * len(official)
    fused = [k for k in mapped if ".query_key_value." in k]
    assert all(official_key(map_key(k)) == k for k in mapped)
    assert fused and all(map_key(k).startswith("llm.phi.layers.") for k in fused)
    with torch.device("meta"):
        model = SegEarthR1(released_config())
    for key in model.state_dict():
        assert map_key(official_key(key)) == key, key


def test_numbered_rules_keep_their_number():
    assert map_key("d_layers.layers.12.1.net.0.weight") == "d_projector.layers.12.ff.net.0.weight"
    assert official_key("d_projector.layers.3.attn.to_q.weight") == "d_layers.layers.3.0.to_q.weight"
    assert map_key("model.layers.7.mlp.fc1.weight") == "llm.phi.layers.7.mlp.fc1.weight"
    assert map_key("model.rotary.inv_freq") is None  # only the Phi parts, not any model.* key
    assert official_key("llm.bert.embeddings.word_embeddings.weight") == "llm.bert.embeddings.word_embeddings.weight"


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
        load_weights(small_model, InMemoryTensors(weights, "broken"), "broken")
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
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in _official_weights(small_model).items()}
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


# --- guards before work -------------------------------------------------------------------------


def _edit_config(folder, edit):
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def _official_only(raw):
    """The official llava_phi form: no 'segearth' section, sizes from the Phi keys."""
    del raw["segearth"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["segearth"]["llm"].update(hidden_size="abc"),
         'segearth.llm.hidden_size must be a positive integer <= 65,536, got "abc"'),
        (lambda r: r["segearth"]["vision"].update(depths=[2, 2]), "segearth.vision.depths must be a list of 4 values"),
        (lambda r: r["segearth"]["vision"].update(depths=[2, 2, 2.5, 2]),
         "segearth.vision.depths[2] must be a positive"),
        (lambda r: r["segearth"].update(image_size=100),
         "segearth.image_size must be a multiple of 64 in [64, 4,096], got 100"),
        (lambda r: r["segearth"]["loss"].update(mask_weight=float("nan")),
         "segearth.loss.mask_weight must be a non-negative"),
        (lambda r: r["segearth"]["pixel_decoder"].update(conv_dim=True),
         "segearth.pixel_decoder.conv_dim must be a positive"),
        (lambda r: r["segearth"]["llm"].update(hidden_act="swish!"), "segearth.llm.hidden_act must be one of"),
        (lambda r: r["segearth"].update(prompt_task="chat"),
         "segearth.prompt_task must be one of referring, reasoning"),
        (lambda r: r["segearth"]["mask_decoder"].update(heads=4),
         "unknown config key 'segearth.mask_decoder.heads'; did you mean 'segearth.mask_decoder.num_heads'?"),
        (lambda r: r["segearth"]["vision"].update(kind="vit"),
         'segearth.vision.kind must be one of efficientnet, swin, got "vit"'),
        (lambda r: r["segearth"].update(llm=[]), "segearth.llm must be a mapping of keys, got []"),
        (lambda r: (_official_only(r), r.update(hidden_size="abc")),
         'hidden_size must be a positive integer <= 65,536, got "abc"'),
        (lambda r: (_official_only(r), r.update(num_hidden_layers=-3)),
         "num_hidden_layers must be a positive integer <= 256, got -3"),
        (lambda r: (_official_only(r), r.update(layer_norm_eps="1e-5")),
         'layer_norm_eps must be a number in (0, 1), got "1e-5"'),
        (lambda r: (_official_only(r), r.update(qk_layernorm="no")), 'qk_layernorm must be true or false, got "no"'),
        (lambda r: (_official_only(r), r.update(swin_type="huge")), 'swin_type must be one of base, large, got "huge"'),
    ],
)
def test_bad_config_value_is_one_line_naming_file_and_key(small_model, tmp_path, edit, message):
    save_pretrained(small_model, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "ckpt")
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "ckpt" / "config.json") + ": ")
    assert message in msg and "\n" not in msg


def test_sizes_that_do_not_fit_together_are_a_config_error(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda r: r["segearth"]["mask_decoder"].update(hidden_dim=30))  # 4 heads
    with pytest.raises(CheckpointError, match="does not build a model"):
        load_pretrained(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda r: r["segearth"]["llm"].update(num_attention_heads=3))  # width 64
    with pytest.raises(CheckpointError, match="config.json: llm.hidden_size must be divisible"):
        load_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"segearth": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_deeply_nested_config_is_a_clean_error(small_model, tmp_path, text):
    save_pretrained(small_model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_pretrained(tmp_path / "ckpt")


def test_huge_sizes_are_refused_before_anything_is_allocated(small_model, tmp_path):
    import resource
    import time

    save_pretrained(small_model, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda r: r["segearth"]["llm"].update(hidden_size=10**12))
    with pytest.raises(CheckpointError, match="hidden_size must be a positive integer <= 65,536, got 1000000000000"):
        load_pretrained(tmp_path / "ckpt")
    # each value in range, the whole far too large: refused from the parameter count of a meta build
    big = {"hidden_size": 32768, "intermediate_size": 65536, "num_hidden_layers": 64, "num_attention_heads": 64}
    _edit_config(tmp_path / "ckpt", lambda r: r["segearth"]["llm"].update(big))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"describes a model of [\d,]+ parameters; refusing"):
        load_pretrained(tmp_path / "ckpt")
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024  # KiB: nothing near 1 TB


def test_oversized_config_file_is_refused(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(CheckpointError, match="a checkpoint config is a few KB"):
        load_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_key(small_model, tmp_path, bad):
    from safetensors.torch import load_file

    save_pretrained(small_model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    w = load_file(str(path))
    w["model.layers.1.mlp.fc2.weight"][3, 5] = bad
    save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, str(path))
    for dtype in (torch.float32, torch.bfloat16):  # read as is, and through the conversion path
        with pytest.raises(CheckpointError) as err:
            load_pretrained(tmp_path / "ckpt", dtype=dtype)
        assert str(err.value) == f"{path}: tensor model.layers.1.mlp.fc2.weight holds NaN or Inf values"
    result = CliRunner().invoke(app, ["check-checkpoint", str(tmp_path / "ckpt")])
    assert result.exit_code == 2 and "holds NaN or Inf" in result.output and "Traceback" not in result.output


def test_float16_overflow_is_reported(small_model, tmp_path):
    with torch.no_grad():
        small_model.connector.fc.bias[0] = 1e6  # finite in float32, beyond float16's 65504
    save_pretrained(small_model, tmp_path / "ckpt")
    assert load_pretrained(tmp_path / "ckpt").connector.fc.bias[0] == 1e6
    with pytest.raises(CheckpointError, match="model.mm_projector.fc.bias overflows torch.float16"):
        load_pretrained(tmp_path / "ckpt", dtype=torch.float16)


def test_corrupt_safetensors_header_is_one_line(small_model, tmp_path):
    save_pretrained(small_model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # tensors past the end of the file
    with pytest.raises(CheckpointError, match=r"cannot read .*model.safetensors: tensor .* does not fit the file"):
        load_pretrained(tmp_path / "ckpt")
    path.write_bytes((10**15).to_bytes(8, "little") + data[8:])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_pretrained(tmp_path / "ckpt")


# --- loading without a second copy ---------------------------------------------------------------


def test_key_report_comes_before_any_tensor_is_read(small_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from segearth.checkpoint_io import SafetensorsFiles

    save_pretrained(small_model, tmp_path / "ckpt")
    w = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del w["model.final_layernorm.weight"]
    save_file(w, str(tmp_path / "ckpt" / "model.safetensors"))

    def no_reads(self, key, dtype):
        raise AssertionError(f"{key} read before the key report")

    monkeypatch.setattr(SafetensorsFiles, "read", no_reads)
    with pytest.raises(CheckpointError, match="1 missing key"):
        load_pretrained(tmp_path / "ckpt")


def test_parameters_are_the_tensors_read(small_model, tmp_path, monkeypatch):
    """No copy between reading and the model: each parameter's memory is the tensor the reader
    returned (the fused qkv, split into three, aside)."""
    from segearth.checkpoint_io import SafetensorsFiles

    save_pretrained(small_model, tmp_path / "ckpt")
    read_ptrs = set()
    original = SafetensorsFiles.read

    def recording(self, key, dtype):
        t = original(self, key, dtype)
        read_ptrs.add(t.data_ptr())
        return t

    monkeypatch.setattr(SafetensorsFiles, "read", recording)
    for dtype in (torch.float32, torch.bfloat16):
        read_ptrs.clear()
        model = load_pretrained(tmp_path / "ckpt", dtype=dtype)
        params = {k: p for k, p in model.named_parameters() if "self_attn.q_proj" not in k
                  and "self_attn.k_proj" not in k and "self_attn.v_proj" not in k}
        assert all(p.dtype == dtype for p in params.values())
        assert all(p.data_ptr() in read_ptrs for p in params.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_low_precision_load_equals_casting_an_fp32_load(small_model, tmp_path, dtype):
    save_pretrained(small_model, tmp_path / "ckpt")
    direct = load_pretrained(tmp_path / "ckpt", dtype=dtype).state_dict()
    cast = load_pretrained(tmp_path / "ckpt").to(dtype).state_dict()
    assert direct.keys() == cast.keys()
    for key in direct:
        assert direct[key].dtype == cast[key].dtype and torch.equal(direct[key], cast[key]), key
