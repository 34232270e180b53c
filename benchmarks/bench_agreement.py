"""Time the paired kappa bootstrap: 10,000 resamples of 1,000 items (the issue asks for a few seconds).

Run: python benchmarks/bench_agreement.py [--items N] [--resamples R] [--classes K] [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cascades.agreement import bootstrap_kappa_ci


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    a = rng.integers(0, args.classes, args.items)
    # B copies A on 80% of items, like a cascade and a speech LLM on a text-sufficient task.
    b = np.where(rng.random(args.items) < 0.8, a, rng.integers(0, args.classes, args.items))
    labels = [f"class{i}" for i in range(args.classes)]
    a = [labels[i] for i in a]
    b = [labels[i] for i in b]

    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        ci = bootstrap_kappa_ci(a, b, n_resamples=args.resamples, seed=repeat)
        times.append(time.perf_counter() - start)
    print(
        f"bootstrap_kappa_ci: {args.resamples} resamples x {args.items} items x {args.classes} classes: "
        f"best {min(times):.3f} s, median {float(np.median(times)):.3f} s over {args.repeats} runs "
        f"(interval [{ci.low:.3f}, {ci.high:.3f}])"
    )


if __name__ == "__main__":
    main()
