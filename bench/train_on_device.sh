#!/usr/bin/env bash
# The reference weights' GPU run (bench/train_on_device.py packs the data; docs/TRAINING.md).
# On the lent GPU machine, in the repository's root, with the packs under .devtrain/pack/<n>:
#   bench/train_on_device.sh smoke            unpack what came, train each network for a few seconds (and stash)
#   bench/train_on_device.sh stash            keep what came for the next call (the machine stays warm)
#   bench/train_on_device.sh train W T        unpack everything, warp for W minutes, try-on for T
# Only the first call needs .devtrain/whl and .devtrain/site: they are kept under /tmp for the next.
# Checkpoints and the log go to $OUT, which comes back even when the call runs out of time.
set -euo pipefail
export PYTHONUNBUFFERED=1
phase=$1
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devtrain/whl/*.whl
[ -d /tmp/devsite ] || cp -r .devtrain/site /tmp/devsite
export PYTHONPATH=/tmp/site:/tmp/devsite:$PWD
mkdir -p /tmp/packs && if compgen -G '.devtrain/pack/*' >/dev/null; then cp -r .devtrain/pack/* /tmp/packs/; fi
[ "$phase" = stash ] && { du -sh /tmp/packs/*; exit 0; }
rm -rf /tmp/data /tmp/cache
python3 bench/train_on_device.py unpack /tmp/packs/* --data /tmp/data --cache /tmp/cache
nvidia-smi --query-gpu=name,memory.used --format=csv
common=(--data /tmp/data --cache /tmp/cache --category upper --batch-size 32)
common+=(--trained-on "VITON training split (research use only); bench/train_on_device.sh on one H200")
if [ "$phase" = smoke ]; then
  python3 -m services.cli train warp "${common[@]}" --resume weights/research/viton/warp.pt -o /tmp/smoke_warp.pt --max-minutes 0.3 --eval-minutes 10 2>&1 | tr '\r' '\n' | tail -3
  python3 -m services.cli train tryon "${common[@]}" --resume weights/research/viton/tryon.pt --warp /tmp/smoke_warp.pt \
    -o /tmp/smoke_tryon.pt --max-minutes 0.3 --eval-minutes 10 --mask-weight 1 2>&1 | tr '\r' '\n' | tail -3
  exit 0
fi
common+=(--val-pairs /tmp/data/val_pairs.txt)  # the smoke may have only the held-out pack: it splits its own
python3 -m services.cli train warp "${common[@]}" --resume weights/research/viton/warp.pt -o "$OUT/warp.pt" \
  --max-minutes "$2" --eval-minutes 1 2>&1 | tr '\r' '\n' | awk 'NR % 200 == 0 || !/^warp step/' | tee "$OUT/warp.log"
python3 -m services.cli train tryon "${common[@]}" --resume weights/research/viton/tryon.pt --warp "$OUT/warp.pt" \
  -o "$OUT/tryon.pt" --max-minutes "$3" --eval-minutes 1 --mask-weight 1 2>&1 | tr '\r' '\n' | awk 'NR % 200 == 0 || !/^tryon step/' | tee "$OUT/tryon.log"
