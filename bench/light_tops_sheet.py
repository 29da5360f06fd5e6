"""Light tops on every person of ../shared/data/photos: the foil-like shading check (issue 18).

A white, light grey or pale top takes the old garment's light as a multiplier; where that light
is blotchy (satin sheen, corduroy ribs, a print's ghost) the new garment looks like crumpled foil.
Rows: the persons of ../shared/data/photos/person; columns: the light tops of
../shared/data/photos/garment (a grey cardigan, a white tee, a white tank top, a pale blouse).
Written to bench/overlays/tryon/NAME (default light_tops_sheet.jpg), 512 pixels a row so that
the shading shows; run it before and after a lighting change with two names to compare.

    .venv/bin/python bench/light_tops_sheet.py [--name light_tops_before.jpg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from shared_data import SHARED_DATA
from tryon_quality import OVERLAYS, draw_sheet

from services.common.artifacts import LocalArtifactStore
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.pipeline import Pipeline

LIGHT_TOPS = ("catvton_upper_21514384", "magicclothing_top_t1", "vitonhd_09133_00", "vitonhd_09290_00")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="light_tops_sheet.jpg")
    args = parser.parse_args()
    photos = SHARED_DATA / "photos"
    if not photos.exists():
        print(f"no photos at {photos}: no sheet")
        return 0
    pipeline = Pipeline(LocalArtifactStore(tempfile.mkdtemp()), embedded_backend())
    garments = [(read_image_file(next((photos / "garment").glob(f"{n}.*")), rgba=True), "upper") for n in LIGHT_TOPS]
    persons = [read_image_file(path) for path in sorted((photos / "person").iterdir())]
    path = draw_sheet([pipeline], persons, garments, OVERLAYS / args.name, height=512)
    print(f"contact sheet: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
