"""Light tops on every person of ../shared/data/photos: the foil-like shading check (issue 18).

A white, light grey or pale top takes the old garment's light as a multiplier; where that light
is blotchy (satin sheen, corduroy ribs, a print's ghost) the new garment looks like crumpled foil.
Rows: the persons of ../shared/data/photos/person; columns: the light tops of
../shared/data/photos/garment (a grey cardigan, a white tee, a white tank top, a pale blouse).
Written to bench/overlays/tryon/NAME (default light_tops_sheet.jpg), 512 pixels a row so that
the shading shows; run it before and after a lighting change with two names to compare.

It also prints the figure for it: the folds printed on each light top, the standard deviation
(in percent of luminance) of log(try-on / warped garment) after its broad part (a Gaussian of
FOLD_SCALE of the height) is taken out, over the garment's opaque pixels. The warped garment's
own print and creases cancel in the ratio; what remains is the light the try-on put on it.

    .venv/bin/python bench/light_tops_sheet.py [--name light_tops_before.jpg] [--learned NAME]

With --learned NAME, the learned path (weights installed as NAME by `fitroom models install`)
instead of the default: its generator's shade is the light it puts on the garment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import cv2
import numpy as np
from shared_data import SHARED_DATA
from tryon_quality import OVERLAYS, draw_sheet

from services.common.artifacts import LocalArtifactStore
from services.common.errors import FitroomError
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.pipeline import Pipeline, TryonResult

LIGHT_TOPS = ("catvton_upper_21514384", "magicclothing_top_t1", "vitonhd_09133_00", "vitonhd_09290_00")
FOLD_SCALE = 0.06  # of the image height: light that varies over less than this is a fold (or a blotch)


def printed_folds(result: TryonResult) -> float:
    """Percent of luminance: the spread of the fine part of the light the try-on put on the garment."""
    warped = result.warped.rgba
    opaque = cv2.erode((warped[..., 3] > 0.98).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    if opaque.sum() < 100:
        return float("nan")
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    light = np.log(result.image.astype(np.float32) @ weights / 255.0 + 0.02) - np.log(warped[..., :3] @ weights + 0.02)
    # Where the try-on is not the garment (an arm or hair in front of it), the ratio is far
    # outside the shading's clamp: those pixels are left out.
    opaque &= (light > np.log(0.4)) & (light < np.log(1.8))
    sigma = FOLD_SCALE * warped.shape[0]
    known = opaque.astype(np.float32)
    broad = cv2.GaussianBlur(light * known, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(known, (0, 0), sigma), 1e-3)
    return float(100.0 * (light - broad)[opaque].std())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="light_tops_sheet.jpg")
    parser.add_argument("--learned", metavar="NAME", help="the learned path with the weights installed as NAME")
    args = parser.parse_args()
    photos = SHARED_DATA / "photos"
    if not photos.exists():
        print(f"no photos at {photos}: no sheet")
        return 0
    pipeline = Pipeline(LocalArtifactStore(tempfile.mkdtemp()), embedded_backend(), args.learned)
    garments = [(read_image_file(next((photos / "garment").glob(f"{n}.*")), rgba=True), "upper") for n in LIGHT_TOPS]
    persons = [read_image_file(path) for path in sorted((photos / "person").iterdir())]
    print(f"printed folds, % of luminance (fine light on the garment, scale < {FOLD_SCALE} of the height):")
    print("| person | " + " | ".join(LIGHT_TOPS) + " |\n| --- |" + " ---: |" * len(LIGHT_TOPS))
    figures = []
    for path, person in zip(sorted((photos / "person").iterdir()), persons, strict=True):
        row = []
        for garment, category in garments:
            try:
                row.append(printed_folds(pipeline.tryon(person, garment, category)))
            except FitroomError as exc:
                row.append(float("nan"))
                print(f"  {path.stem}: {exc.code}", file=sys.stderr)
        figures.append(row)
        print(f"| {path.stem} | " + " | ".join(f"{f:.1f}" for f in row) + " |")
    print(f"median over all pairs: {np.nanmedian(figures):.2f}, p90: {np.nanpercentile(figures, 90):.2f}")
    path = draw_sheet([pipeline], persons, garments, OVERLAYS / args.name, height=512)
    print(f"contact sheet: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
