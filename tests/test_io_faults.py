"""A real full disk and a real read-only file system, for every command that writes.

Each case runs inside a private mount namespace (`unshare`) holding small tmpfs mounts: a
trace that fills its disk half way gives one line and resumes, byte-identical to a trace
that never failed, once space is freed; `run`, `compare`, `probe`, `data synth`, `data
noise` and `trace` on a full or read-only file system give one line naming the path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("io_faults.py")


def namespace_runner() -> list[str] | None:
    """A prefix that runs a command in a private mount namespace where tmpfs can be mounted."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        probe = subprocess.run(prefix + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                               capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def one_line(case: dict, *needles: str) -> None:
    lines = [l for l in case["err"].strip().splitlines() if l.strip() and "━" not in l]  # not progress bars
    assert case["code"] != 0 and len(lines) == 1, case
    assert lines[0].startswith("error:") and "Traceback" not in case["err"], case
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.skipif(namespace_runner() is None, reason="needs unshare and tmpfs mounts in a mount namespace")
def test_full_and_read_only_file_systems_give_one_line_and_lose_nothing(tiny_model_dir, tones, tmp_path):
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.trace import trace
    from tasks import speech_prompt

    model, manifest = tiny_model_dir("qwen2-audio"), tones(6)
    adapter = load_model(model, device="cpu")
    rows = read_manifest(manifest)
    reference = tmp_path / "ref.h5"
    trace(adapter, rows, reference, positions="all", batch_size=1, prompt=speech_prompt)  # as `interp trace` does
    store = tmp_path / "small.h5"
    trace(adapter, rows, store, layers="0", positions="audio-mean", batch_size=6)
    preds = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": r["id"], "prediction": ["x", "y"][(i + (name == "b")) % 3 == 0],
                                            "system": name}) + "\n" for i, r in enumerate(rows)))
        preds.append(str(path))
    work = tmp_path / "mounts"
    work.mkdir()
    spec = {"work": str(work), "model": str(model), "manifest": str(manifest), "store": str(store),
            "preds": preds, "reference": str(reference), "trace_keep": 200_000}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(namespace_runner() + [sys.executable, str(SCRIPT), str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    one_line(report["trace"], f"no space left on device at {work / 'trace-disk'}", "rerun with --resume")
    assert 0 < report["trace_committed"] < 6
    assert report["trace_resume"]["code"] == 0, report["trace_resume"]
    assert report["trace_same"]
    for name in ("run", "compare", "probe", "synth", "noise", "trace"):
        one_line(report[f"full_{name}"], "no space left on device at", str(work / "full"))
        one_line(report[f"ro_{name}"], "cannot write", str(work / "ro"), "read-only file system")
