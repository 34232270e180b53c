"""Time the demo dataset: the sample items of two tasks spoken by espeak-ng, and the same items
in babble at 0 dB (`tasks.demo_data`, what `interp demo` and the tests build first).

Run: python benchmarks/bench_demo_data.py [--n-per-task N] [--repeats N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tasks import demo_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-task", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            paths = demo_data(Path(work), n_per_task=args.n_per_task)
            times.append(time.perf_counter() - t0)
    print(f"demo_data: {2 * args.n_per_task} items, clean and 0 dB babble ({paths['clean'].name}): "
          f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s of {args.repeats}")


if __name__ == "__main__":
    main()
