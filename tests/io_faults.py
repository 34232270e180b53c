"""Run CLI commands against real full and read-only file systems; used by test_io_faults.py.

Run as `unshare -rm python tests/io_faults.py SPEC.json` (a private mount namespace, so the
tmpfs mounts vanish with the process). Prints one JSON object: per case, the exit code and
stderr of the command, plus what the trace resume produced.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path


def mount(folder: Path, size: str, read_only: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], check=True)


def fill(folder: Path, keep: int) -> Path:
    """Leave only `keep` bytes free in `folder`'s file system."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / ".filler"
    with open(filler, "wb") as fh:
        remaining = max(free - keep, 0)
        while remaining:
            n = min(remaining, 1 << 20)
            try:
                fh.write(b"\0" * n)
                fh.flush()
            except OSError:
                break
            remaining -= n
    return filler


def cli(*args) -> dict:
    import cli as interp_cli

    err = io.StringIO()
    sys.argv = ["interp", *map(str, args)]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            interp_cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return {"code": code, "err": err.getvalue()}


def main(spec: dict) -> dict:
    os.environ["COLUMNS"] = "300"
    work = Path(spec["work"])
    model, manifest, store, preds = spec["model"], spec["manifest"], spec["store"], spec["preds"]
    out: dict = {}

    # a trace that meets a full disk half way, then resumes once space is freed
    disk = work / "trace-disk"
    mount(disk, "4m")
    filler = fill(disk, spec["trace_keep"])
    args = ["trace", model, "--data", manifest, "--out", disk / "acts.h5", "--batch-size", "1", "--positions", "all"]
    out["trace"] = cli(*args)
    from interp.store import ActivationStore

    with ActivationStore(disk / "acts.h5") as s:
        out["trace_committed"] = s.n_items
    filler.unlink()
    out["trace_resume"] = cli(*args, "--resume")
    with ActivationStore(disk / "acts.h5") as s, ActivationStore(spec["reference"]) as ref:
        out["trace_same"] = s.ids == ref.ids and all(s.read(l).tobytes() == ref.read(l).tobytes() for l in s.layers)

    # every other command that writes, on a full disk and on a read-only one
    full, ro = work / "full", work / "ro"
    mount(full, "1m")
    mount(ro, "1m", read_only=True)
    fill(full, 0)
    from tasks import sample_path

    commands = {
        "run": lambda d: ["run", model, "--data", manifest, "--out", d / "p.jsonl", "--max-new-tokens", "2"],
        "compare": lambda d: ["compare", preds[0], preds[1], "--out", d / "report", "--resamples", "50"],
        "probe": lambda d: ["probe", store, "--target", "label", "--out", d / "probe.json", "--folds", "2"],
        "synth": lambda d: ["data", "synth", "--task", "sst2", "--input", sample_path("sst2"), "--out", d / "speech",
                            "--limit", "2"],
        "noise": lambda d: ["data", "noise", "--data", manifest, "--snr", "5", "--noise", "white", "--out", d / "noisy"],
        "trace": lambda d: ["trace", model, "--data", manifest, "--out", d / "a.h5", "--limit", "1"],
    }
    for name, make in commands.items():
        out[f"full_{name}"] = cli(*make(full))
        out[f"ro_{name}"] = cli(*make(ro))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
