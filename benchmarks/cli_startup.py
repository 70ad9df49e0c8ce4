"""CPU time of the command line's instant paths: ``--help`` and argument errors, each in a fresh process.

Heavy imports (torch, transformers, FastAPI, rasterio) belong inside the commands, so printing help or
refusing a bad option must not pay for them. Run: ``python benchmarks/cli_startup.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

CASES = {
    "segearth --help": ["--help"],
    "segearth predict --help": ["predict", "--help"],
    "segearth serve --help": ["serve", "--help"],
    "predict --mode pyramid (argument error)": ["predict", "x.tif", "q", "--mode", "pyramid"],
}


def cpu_seconds(args: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "segearth", *args], capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported")
    repeat = parser.parse_args().repeat
    print(f"{'case':45s} {'CPU s (best of ' + str(repeat) + ')':>20s}")
    for name, args in CASES.items():
        best = min(cpu_seconds(args) for _ in range(repeat))
        print(f"{name:45s} {best:20.2f}", flush=True)


if __name__ == "__main__":
    main()
