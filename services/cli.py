"""The `fitroom` command line: a thin shell over the stages; no try-on logic lives here.

Exit status: 0 success; 1 unexpected internal error; 2 an input could not be read
(image_invalid, image_too_large, ...); 3 no person in at least one image; 4 models missing.
Expected failures never print a traceback (set FITROOM_DEBUG=1 to see one anyway).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.common.config import get_settings
from services.common.contracts import PoseResult
from services.common.errors import FitroomError, ModelUnavailable, NoPersonDetected
from services.common.imageio import encode_jpeg, encode_png, read_image_file
from services.common.inference import embedded_backend

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NO_PERSON, EXIT_NO_MODELS = 0, 1, 2, 3, 4


def _fail(error: FitroomError) -> None:
    print(f"fitroom: error [{error.code}]: {error.message}", file=sys.stderr)


# --------------------------------------------------------------------------- models


def cmd_models_build(args: argparse.Namespace) -> int:
    from services.common.mediapipe_models import MODELS, build_all

    settings = get_settings()
    built = build_all(settings.model_repository, settings.cache_dir, wheel=args.wheel, force=args.force)
    for model in MODELS:
        state = "built" if model.name in built else "up to date"
        print(f"{model.name:22s} {state}  {settings.model_repository / model.name}")
    return EXIT_OK


# --------------------------------------------------------------------------- pose


def _pose_record(path: str, pose: PoseResult, fmt: str) -> dict:
    from services.pose.openpose import to_openpose

    record: dict = {"image": path, "image_size": [pose.image_width, pose.image_height]}
    person: dict = {"box": pose.box.model_dump(), "score": round(pose.score, 4)}
    if fmt == "blazepose":
        flat = pose.landmark_array()[:, [0, 1, 3]]
        person["landmarks"] = [lm.model_dump() for lm in pose.landmarks]
    else:
        flat = to_openpose(pose, "COCO18" if fmt == "coco18" else "BODY25")
    person["pose_keypoints_2d"] = [round(float(v), 3) for v in flat.ravel()]
    record["people"] = [person]
    return record


def cmd_pose(args: argparse.Namespace) -> int:
    from services.pose import stage
    from services.pose.overlay import draw_pose

    infer = embedded_backend()
    unreadable = no_person = False
    for out_dir in (args.mask_dir, args.overlay_dir):
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
    for path in args.images:
        try:
            image = read_image_file(Path(path))
            pose = stage.run(image, infer)
        except NoPersonDetected as exc:
            print(json.dumps({"image": path, "error": exc.to_dict()}), flush=True)
            no_person = True
            continue
        except ModelUnavailable:
            raise
        except FitroomError as exc:
            print(json.dumps({"image": path, "error": exc.to_dict()}), flush=True)
            unreadable = True
            continue
        stem = Path(path).stem
        if args.mask_dir:
            mask = np.round(pose.mask * 255).astype(np.uint8)
            (Path(args.mask_dir) / f"{stem}_mask.png").write_bytes(encode_png(mask))
        if args.overlay_dir:
            (Path(args.overlay_dir) / f"{stem}_pose.jpg").write_bytes(encode_jpeg(draw_pose(image, pose)))
        print(json.dumps(_pose_record(path, pose, args.format)), flush=True)
    # An unreadable input outranks a photo without a person: the caller has a file to fix.
    return EXIT_BAD_INPUT if unreadable else EXIT_NO_PERSON if no_person else EXIT_OK


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitroom", description="Fitroom virtual try-on")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="manage the model repository (triton_models/)")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    build = models_commands.add_parser("build", help="fetch the MediaPipe wheel and build every model.pt")
    build.add_argument("--force", action="store_true", help="rebuild even when the cached build is current")
    build.add_argument("--wheel", type=Path, help="use this mediapipe-0.10.21 wheel instead of downloading it")
    build.set_defaults(func=cmd_models_build)

    pose = commands.add_parser("pose", help="body landmarks of each image, one JSON object per line")
    pose.add_argument("images", nargs="+", metavar="IMAGE")
    pose.add_argument("--format", choices=["coco18", "body25", "blazepose"], default="coco18")
    pose.add_argument("--mask-dir", help="write each person mask as DIR/<stem>_mask.png")
    pose.add_argument("--overlay-dir", help="write each pose drawn over its photo as DIR/<stem>_pose.jpg")
    pose.set_defaults(func=cmd_pose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ModelUnavailable as exc:
        _fail(exc)
        return EXIT_NO_MODELS
    except FitroomError as exc:
        _fail(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user; the message says how to get one
        if os.environ.get("FITROOM_DEBUG"):
            traceback.print_exc()
        print(
            f"fitroom: internal error: {exc.__class__.__name__}: {exc} (FITROOM_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
