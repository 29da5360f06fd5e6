"""Write the VITON pairs a refiner may be trained on: every pair of ../shared/data/viton except
the benchmarks' ids (bench/tryon_quality.py and bench/warp_accuracy.py at --limit 500) and the
ids the warp and fusion were tuned on (every k-th id from k/2, 99 of them), so that what the
benchmarks report is held out.

    .venv/bin/python bench/refiner_pairs.py -o /tmp/viton_train_pairs.txt
    FITROOM_MODEL_REPOSITORY=/tmp/viton_models .venv/bin/fitroom train refiner \\
        --pairs /tmp/viton_train_pairs.txt --person-dir ../shared/data/viton/train/image \\
        --garment-dir ../shared/data/viton/train/cloth --category upper \\
        --trained-on "VITON, research-only" --cache /tmp/viton_examples.npz --steps 3000

Research-only data: the model this trains is for measuring, never shipped or made a default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared_data import VITON, select_ids

BENCHMARK_LIMIT, TUNING_COUNT = 500, 99


def held_out_ids() -> set[str]:
    benchmark, step = select_ids(VITON, BENCHMARK_LIMIT)
    every, _ = select_ids(VITON, len(VITON.joinpath("train_pairs.txt").read_text().split()))
    tuning = every[step // 2 :: step][:TUNING_COUNT]
    return set(benchmark) | set(tuning)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    every, _ = select_ids(VITON, len(VITON.joinpath("train_pairs.txt").read_text().split()))
    held_out = held_out_ids()
    kept = [pid for pid in every if pid not in held_out]
    args.output.write_text("".join(f"{pid}_0.jpg {pid}_1.jpg\n" for pid in kept))
    print(f"{len(kept)} training pairs, {len(held_out)} held out -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
