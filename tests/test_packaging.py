"""Every data file the package needs at run time is declared as package data (a wheel would lack it)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the package supports 3.10)


ROOT = Path(__file__).resolve().parents[1]


def test_static_files_and_weights_are_package_data() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in declared.items():
        folder = ROOT.joinpath(*package.split("."))
        for data in (folder / p.split("/")[0] for p in patterns):
            assert data.exists(), data  # a folder of data files, or one file (the question bank)
    missing = []
    for package, folder_name in (("segearth.serve", "static"), ("segearth.weights", "nano")):
        base = ROOT.joinpath(*package.split("."))
        for path in (base / folder_name).rglob("*"):
            relative = path.relative_to(base).as_posix()
            if path.is_file() and not any(fnmatch.fnmatchcase(relative, p) and relative.count("/") == p.count("/")
                                          for p in declared[package]):
                missing.append(relative)
    assert not missing, f"not declared in pyproject package-data: {missing}"
