"""Lower garments and dresses on full-body persons: a contact sheet for people to look at (issue 18).

Rows: the 768x1024 photos of ../shared/data/photos/person that show knees (a lower garment or a
dress needs them). Columns: ../shared's trousers (dresscode_lower_051412_1) and dress
(dresscode_dress_051998_1), then the drawn jeans, shorts, mini and midi skirts, short and long
dresses of tests/warp/drawn.py, each with its category given. Written to
bench/overlays/tryon/lower_dress_sheet.jpg.

    .venv/bin/python bench/lower_dress_sheet.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from shared_data import SHARED_DATA
from tryon_quality import OVERLAYS, draw_sheet

from services.common.artifacts import LocalArtifactStore
from services.common.errors import CategoryUnsupported
from services.common.imageio import read_image_file
from services.common.inference import embedded_backend
from services.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.warp.drawn import CATALOGUE, product_image


def main() -> int:
    photos = SHARED_DATA / "photos"
    if not photos.exists():
        print(f"no photos at {photos}: no sheet")
        return 0
    pipeline = Pipeline(LocalArtifactStore(tempfile.mkdtemp()), embedded_backend())
    garments = [
        (read_image_file(photos / "garment" / "dresscode_lower_051412_1.jpg", rgba=True), "lower"),
        (read_image_file(photos / "garment" / "dresscode_dress_051998_1.jpg", rgba=True), "dress"),
        *(
            (product_image(*CATALOGUE[name][:2]), CATALOGUE[name][2])
            for name in ("jeans", "shorts", "mini skirt", "midi skirt", "short dress", "long dress")
        ),
    ]
    persons = []
    for path in sorted((photos / "person").iterdir()):
        person = read_image_file(path)
        if person.shape[:2] != (1024, 768):
            continue
        try:
            pipeline.tryon(person, garments[0][0], "lower")
        except CategoryUnsupported:  # no knees in the photo
            continue
        persons.append(person)
        print(f"person: {path.name}")
    path = draw_sheet([pipeline], persons, garments, OVERLAYS / "lower_dress_sheet.jpg")
    print(f"contact sheet: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
