"""User errors print one line and exit 2; anything else is a bug: traceback, a request to report it, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import segearth
import segearth.weights
from segearth import cli
from segearth.errors import REPORT_REQUEST, USER_ERRORS, InputError, is_user_error
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
    assert not is_user_error(ValueError("bare"))  # raised here, outside the modules not yet migrated
    assert not is_user_error(RuntimeError("CUDA error"))
    assert isinstance(InputError("x"), USER_ERRORS) and isinstance(InputError("x"), ValueError)


def test_a_plain_value_error_of_a_not_yet_migrated_module_is_still_a_user_error() -> None:
    legacy = Path(segearth.__file__).parent / "data" / "some_reader.py"
    try:
        exec(compile("raise ValueError('RRSIS-D split must be one of ...')", str(legacy), "exec"))
    except ValueError as exc:
        assert is_user_error(exc)
