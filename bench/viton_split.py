"""The learned path's validation split of ../shared/data/viton: 1,000 pairs, every k-th id (the
ids bench/tryon_quality.py, bench/warp_accuracy.py and bench/tryoff_quality.py measure on, any
--limit up to 1000 taken from them by shared_data.validation_ids), held out of `fitroom train`
with --val-pairs.

    .venv/bin/python bench/viton_split.py -o /tmp/viton_val_pairs.txt
    .venv/bin/fitroom train warp --data ../shared/data/viton --val-pairs /tmp/viton_val_pairs.txt ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared_data import VALIDATION_PAIRS, VITON, select_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="the pairs file to write")
    args = parser.parse_args()
    if not VITON.exists():
        print(f"no VITON data at {VITON}", file=sys.stderr)
        return 1
    ids, step = select_ids(VITON, VALIDATION_PAIRS)
    Path(args.output).write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in ids))
    print(f"{len(ids)} validation pairs (every {step}th id) in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
