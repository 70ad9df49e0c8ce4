"""User errors print one line and exit 2; anything else is a bug: traceback, a request to report it, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import segearth
import segearth.weights
from segearth import cli
from segearth.errors import REPORT_REQUEST, USER_ERRORS, ConfigError, InputError, is_user_error
from segearth.geo.read import RasterInputError
from segearth.presets import UnknownPresetError


def _fail_with(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def resolve(model: str) -> Path:
        raise exc

    monkeypatch.setattr(segearth.weights, "resolve_model", resolve)


def test_a_user_error_is_one_line_and_exit_code_2(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, InputError("--bands are 1-based: got '0'"))
    result = CliRunner().invoke(cli.app, ["check-checkpoint", "anything"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --bands are 1-based: got '0'"]


def test_an_internal_error_shows_its_traceback_and_asks_for_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, ValueError("operands could not be broadcast together"))  # a bare ValueError: a bug
    result = CliRunner().invoke(cli.app, ["check-checkpoint", "anything"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output
    assert "ValueError: operands could not be broadcast together" in result.output
    assert REPORT_REQUEST in " ".join(result.output.split())  # the console may wrap the line
    assert "error: operands" not in result.output


def test_debug_reraises(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, InputError("bad"))
    result = CliRunner().invoke(cli.app, ["check-checkpoint", "anything", "--debug"])
    assert isinstance(result.exception, InputError)


def test_the_entry_point_reports_an_unhandled_error_as_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def app(args: list[str]) -> None:
        raise KeyError("layers.3")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "KeyError: 'layers.3'" in err and REPORT_REQUEST in " ".join(err.split())


def test_which_errors_are_the_users() -> None:
    assert is_user_error(RasterInputError("x.tif: band 5 does not exist"))
    assert is_user_error(UnknownPresetError("unknown model preset 'big'"))
    assert is_user_error(FileNotFoundError("x.tif"))
    assert not is_user_error(ValueError("bare"))  # a plain ValueError is a bug
    assert not is_user_error(RuntimeError("CUDA error"))
    assert isinstance(InputError("x"), USER_ERRORS) and isinstance(InputError("x"), ValueError)


def test_a_plain_value_error_is_a_bug_wherever_it_is_raised() -> None:
    """No module keeps plain ValueErrors as user errors any more (the data readers were the last)."""
    reader = Path(segearth.__file__).parent / "data" / "some_reader.py"
    with pytest.raises(ValueError) as err:
        exec(compile("raise ValueError('operands could not be broadcast together')", str(reader), "exec"))
    assert not is_user_error(err.value)
    assert ValueError not in USER_ERRORS


def test_the_migrated_modules_raise_the_project_classes(tmp_path: Path) -> None:
    from segearth.data.registry import UnknownDatasetError, get_dataset
    from segearth.data.rrsisd import RRSISD
    from segearth.serve.limits import QuestionError
    from segearth.serve.settings import ServeSettings
    from segearth.serve.upload import UploadRejected, UploadTooLarge
    from segearth.weights import builtin_model_path

    with pytest.raises(ConfigError, match="RRSIS-D split must be one of"):
        RRSISD(tmp_path, "nope")
    with pytest.raises(ConfigError, match="unknown built-in model"):
        builtin_model_path("no-such-model")
    with pytest.raises(ConfigError, match="--max-queue must be 0 or more"):
        ServeSettings(max_queue=-1)
    with pytest.raises(UnknownDatasetError):
        get_dataset("no-such-dataset")
    for cls in (UnknownDatasetError, QuestionError, UploadRejected, UploadTooLarge):
        assert is_user_error(cls("x")) and issubclass(cls, ValueError)
    assert issubclass(UnknownDatasetError, ConfigError)
    assert all(issubclass(cls, InputError) for cls in (QuestionError, UploadRejected, UploadTooLarge))
