"""The `fitroom` command line: a thin shell over the stages; no try-on logic lives here.

Exit status: 0 success; 1 unexpected internal error; 2 an input could not be read
(image_invalid, image_too_large, ...) or its category told (category_uncertain: pass
--category); 3 no person (or no garment) found in at least one image, or a photo that cannot
wear the garment's category (category_unsupported); 4 models missing.
Expected failures never print a traceback (set FITROOM_DEBUG=1 to see one anyway).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.common.config import get_settings
from services.common.contracts import LIP_LABELS, LIP_PALETTE, PoseResult
from services.common.errors import (
    CategoryUnsupported,
    FitroomError,
    GarmentNotDetected,
    ModelUnavailable,
    NoPersonDetected,
)
from services.common.imageio import encode_jpeg, encode_label_png, encode_png, read_image_file
from services.common.inference import embedded_backend
from services.distributed.cli import add_commands as add_worker_commands
from services.gateway.cli import add_commands as add_gateway_commands

if TYPE_CHECKING:
    from services.pipeline import TryonResult

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NO_PERSON, EXIT_NO_MODELS = 0, 1, 2, 3, 4


def _fail(error: FitroomError) -> None:
    print(f"fitroom: error [{error.code}]: {error.message}", file=sys.stderr)


# --------------------------------------------------------------------------- models


def cmd_models_build(args: argparse.Namespace) -> int:
    """The imported MediaPipe models, then the models built from our own code (no weights)."""
    from services.common.mediapipe_models import MODELS, build_all
    from services.fusion import model as fusion_model
    from services.warp import model as warp_model

    settings = get_settings()
    repository = settings.model_repository
    built = build_all(repository, settings.cache_dir, wheel=args.wheel, force=args.force)
    states = {model.name: model.name in built for model in MODELS}
    states[warp_model.NAME] = warp_model.build(repository, force=args.force)
    states[fusion_model.NAME] = fusion_model.build(repository, force=args.force)
    for name, rebuilt in states.items():
        print(f"{name:22s} {'built' if rebuilt else 'up to date'}  {repository / name}")
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
    for out_dir in (args.mask_dir, args.overlay_dir):
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)

    def pose_one(path: str, image: np.ndarray) -> dict:
        pose = stage.run(image, infer)
        stem = Path(path).stem
        if args.mask_dir:
            mask = np.round(pose.mask * 255).astype(np.uint8)
            (Path(args.mask_dir) / f"{stem}_mask.png").write_bytes(encode_png(mask))
        if args.overlay_dir:
            (Path(args.overlay_dir) / f"{stem}_pose.jpg").write_bytes(encode_jpeg(draw_pose(image, pose)))
        return _pose_record(path, pose, args.format)

    return _each_image(args.images, pose_one)


# --------------------------------------------------------------------------- parse


def _output_conflict(images: Sequence[str], out_dir: Path, agnostic: bool) -> str | None:
    """Why the batch's outputs cannot be written, or None: an output must never overwrite an
    input image, nor two inputs with the same stem each other's outputs."""
    inputs = {Path(p).resolve() for p in images}
    owner: dict[Path, Path] = {}
    for path in map(Path, images):
        for out in [out_dir / f"{path.stem}.png"] + ([out_dir / f"{path.stem}_agnostic.png"] if agnostic else []):
            target = out.resolve()
            if target in inputs:
                return f"{out} would overwrite the input image {target}; choose another -o folder"
            if owner.setdefault(target, path.resolve()) != path.resolve():
                return f"{owner[target]} and {path} would both be written to {out}; rename one"
    return None


def cmd_parse(args: argparse.Namespace) -> int:
    from services.parser import stage as parser_stage
    from services.pose import stage as pose_stage

    out_dir = Path(args.output)
    problem = _output_conflict(args.images, out_dir, agnostic=args.agnostic is not None)
    if problem:
        print(f"fitroom: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    infer = embedded_backend()
    out_dir.mkdir(parents=True, exist_ok=True)

    def parse_one(path: str, image: np.ndarray) -> dict:
        pose = pose_stage.run(image, infer)
        parse = parser_stage.run(image, pose, infer, category=args.agnostic)
        stem = Path(path).stem
        labels_path = out_dir / f"{stem}.png"
        labels_path.write_bytes(encode_label_png(parse.labels, LIP_PALETTE))
        agnostic_path = None
        if parse.agnostic is not None:
            agnostic_path = out_dir / f"{stem}_agnostic.png"
            agnostic_path.write_bytes(encode_png(np.where(parse.agnostic, 255, 0).astype(np.uint8)))
        return {
            "image": path,
            "labels": str(labels_path),
            "agnostic": None if agnostic_path is None else str(agnostic_path),
            "size": [parse.image_width, parse.image_height],
            "labels_present": [LIP_LABELS[i] for i in np.unique(parse.labels)],
        }

    return _each_image(args.images, parse_one)


# --------------------------------------------------------------------------- garment and warp


def cmd_garment(args: argparse.Namespace) -> int:
    from services.warp.garment import analyse_garment

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    def analyse_one(path: str, image: np.ndarray) -> dict:
        analysis = analyse_garment(image, args.category)
        stem = Path(path).stem
        mask_path, json_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}.json"
        mask_path.write_bytes(encode_png(np.where(analysis.mask, 255, 0).astype(np.uint8)))
        record = {"image": path, "mask": str(mask_path), **analysis.model_dump()}
        json_path.write_text(json.dumps(record, indent=2) + "\n")
        return {**record, "landmarks_file": str(json_path)}

    return _each_image(args.images, analyse_one, rgba=True)


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """`<person file> <garment file>` per line, as VITON's test_pairs.txt; blank lines and # comments skipped."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected '<person file> <garment file>', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _images_in(folder: Path, flag: str) -> list[Path] | str:
    """The images in `folder`, sorted, or what is wrong with it (named after its `flag`)."""
    if not folder.is_dir():
        return f"{flag} {folder} is not a folder"
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return images or f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}"


def _pair_jobs(args: argparse.Namespace, suffix: str) -> list[tuple[str, str, Path]] | str:
    """(person, garment, output) of each try-on the arguments ask for, or why they are wrong.
    Batches write OUTDIR/<person stem>__<garment stem><suffix>."""
    out = Path(args.output)
    if args.pairs:
        if not (args.person_dir and args.garment_dir):
            return "--pairs needs --person-dir and --garment-dir"
        try:
            pairs = _read_pairs(Path(args.pairs))
        except (OSError, ValueError) as exc:
            return str(exc)
        pairs = [(str(Path(args.person_dir) / p), str(Path(args.garment_dir) / g)) for p, g in pairs]
    elif args.person and args.garment_dir and not args.garment:
        garments = _images_in(Path(args.garment_dir), "--garment-dir")
        if isinstance(garments, str):
            return garments
        pairs = [(args.person, str(g)) for g in garments]
    elif args.person and args.garment:
        return [(args.person, args.garment, out)]
    else:
        return (
            "give --person and --garment, --person with --garment-dir, or --pairs with --person-dir and --garment-dir"
        )
    return [(p, g, out / f"{Path(p).stem}__{Path(g).stem}{suffix}") for p, g in pairs]


def cmd_warp(args: argparse.Namespace) -> int:
    from services.parser import stage as parser_stage
    from services.pose import stage as pose_stage
    from services.warp import stage as warp_stage
    from services.warp.garment import analyse_garment

    jobs = _pair_jobs(args, ".png")
    if isinstance(jobs, str):
        print(f"fitroom: error: {jobs}", file=sys.stderr)
        return EXIT_BAD_INPUT
    infer = embedded_backend()
    learned = args.learned or get_settings().learned or None

    def warp_one(person_path: str, garment_path: str, out: Path) -> dict:
        person = read_image_file(person_path)
        garment_image = read_image_file(garment_path, rgba=True)
        garment = analyse_garment(garment_image, args.category)
        pose = pose_stage.run(person, infer)
        parse = parser_stage.run(person, pose, infer)
        warped = warp_stage.run(garment_image, garment, pose, parse, infer, learned)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_png(np.round(warped.rgba * 255).astype(np.uint8)))
        return {"person": person_path, "garment": garment_path, "category": garment.category, "output": str(out)}

    return _each_pair(jobs, warp_one)


def _draw_landmarks(image: np.ndarray, landmarks: dict[str, tuple[float, float]]) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(image[..., :3]).copy()
    radius = max(2, round(0.006 * max(out.shape[:2])))
    for name, (x, y) in landmarks.items():
        cv2.circle(out, (round(x), round(y)), radius, (255, 0, 0), -1)
        cv2.putText(out, name, (round(x) + radius, round(y)), cv2.FONT_HERSHEY_SIMPLEX, radius / 8, (0, 0, 160), 1)
    return out


def _write_debug(folder: Path, result: TryonResult, person: np.ndarray, garment: np.ndarray) -> None:
    """Every intermediate of one try-on, for a person to look at."""
    from services.pose.overlay import draw_pose

    folder.mkdir(parents=True, exist_ok=True)
    parse = result.parse
    (folder / "pose.jpg").write_bytes(encode_jpeg(draw_pose(person, result.pose)))
    (folder / "parse.png").write_bytes(encode_label_png(parse.labels, LIP_PALETTE))
    if parse.agnostic is not None:
        (folder / "agnostic.png").write_bytes(encode_png(np.where(parse.agnostic, 255, 0).astype(np.uint8)))
    (folder / "garment_mask.png").write_bytes(encode_png(np.where(result.garment.mask, 255, 0).astype(np.uint8)))
    (folder / "garment_landmarks.jpg").write_bytes(encode_jpeg(_draw_landmarks(garment, result.garment.landmarks)))
    (folder / "garment.json").write_text(json.dumps(result.garment.model_dump(), indent=2) + "\n")
    (folder / "warped.png").write_bytes(encode_png(np.round(result.warped.rgba * 255).astype(np.uint8)))


def cmd_tryon(args: argparse.Namespace) -> int:
    from services.common.artifacts import LocalArtifactStore
    from services.pipeline import Pipeline

    batch = not (args.person and args.garment)
    jobs = _pair_jobs(args, ".jpg")
    if isinstance(jobs, str):
        print(f"fitroom: error: {jobs}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not batch and jobs[0][2].suffix.lower() not in (".jpg", ".jpeg", ".png"):
        print("fitroom: error: -o must name a .jpg, .jpeg or .png file", file=sys.stderr)
        return EXIT_BAD_INPUT
    pipeline = Pipeline(
        LocalArtifactStore.from_settings(), embedded_backend(), args.learned or get_settings().learned or None
    )

    def tryon_one(person_path: str, garment_path: str, out: Path) -> dict:
        person = read_image_file(person_path)
        garment = read_image_file(garment_path, rgba=True)
        result = pipeline.tryon(person, garment, args.category)
        out.parent.mkdir(parents=True, exist_ok=True)
        encoded = encode_png(result.image) if out.suffix.lower() == ".png" else encode_jpeg(result.image)
        _write_atomically(out, encoded)
        record = {"person": person_path, "garment": garment_path, "category": result.category, "output": str(out)}
        if args.debug:
            folder = Path(args.debug) / out.stem if batch else Path(args.debug)
            _write_debug(folder, result, person, garment)
            record["debug"] = str(folder)
        record["ms"] = {stage: round(seconds * 1000, 1) for stage, seconds in result.seconds.items()}
        return record

    return _each_pair(jobs, tryon_one, progress=batch)


def _tryoff_jobs(args: argparse.Namespace) -> list[tuple[str, Path]] | str:
    """(photo, output) of each try-off, or why the arguments are wrong. One photo writes -o (.png:
    RGBA; .jpg: RGB on white); a folder writes OUTDIR/<stem>.png."""
    out = Path(args.output)
    if args.person and not args.person_dir:
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            return "-o must name a .png (RGBA) or .jpg (on white) file"
        return [(args.person, out)]
    if args.person_dir and not args.person:
        folder = Path(args.person_dir)
        photos = _images_in(folder, "--person-dir")
        if isinstance(photos, str):
            return photos
        if out.resolve() == folder.resolve():
            return "-o must be another folder than --person-dir"
        return [(str(p), out / f"{p.stem}.png") for p in photos]
    return "give --person PHOTO or --person-dir FOLDER"


def on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def cmd_tryoff(args: argparse.Namespace) -> int:
    from services.common.artifacts import LocalArtifactStore
    from services.pipeline import Pipeline
    from services.pose.overlay import draw_pose

    jobs = _tryoff_jobs(args)
    if isinstance(jobs, str):
        print(f"fitroom: error: {jobs}", file=sys.stderr)
        return EXIT_BAD_INPUT
    batch = args.person_dir is not None
    learned = args.learned or get_settings().learned_tryoff or None
    pipeline = Pipeline(LocalArtifactStore.from_settings(), embedded_backend(), learned_tryoff=learned)

    def tryoff_one(photo_path: str, _unused: str, out: Path) -> dict:
        photo = read_image_file(photo_path)
        start = time.perf_counter()
        result = pipeline.tryoff(photo, args.category)
        out.parent.mkdir(parents=True, exist_ok=True)
        jpeg = out.suffix.lower() in (".jpg", ".jpeg")
        _write_atomically(out, encode_jpeg(on_white(result.rgba)) if jpeg else encode_png(result.rgba))
        record = {
            "person": photo_path,
            "category": result.category,
            "sleeves": result.sleeves,
            "hidden_share": result.hidden_share,
            "path": f"learned:{learned}" if learned else "default",
            "output": str(out),
            "ms": round(1000 * (time.perf_counter() - start), 1),
        }
        if args.debug:
            folder = Path(args.debug) / out.stem if batch else Path(args.debug)
            folder.mkdir(parents=True, exist_ok=True)
            pose, parse = pipeline.person(photo)
            (folder / "pose.jpg").write_bytes(encode_jpeg(draw_pose(photo, pose)))
            (folder / "parse.png").write_bytes(encode_label_png(parse.labels, LIP_PALETTE))
            (folder / "flatlay_on_white.jpg").write_bytes(encode_jpeg(on_white(result.rgba)))
            record["debug"] = str(folder)
        return record

    return _each_pair([(photo, "", out) for photo, out in jobs], tryoff_one, progress=batch)


def _write_atomically(path: Path, data: bytes) -> None:
    """Never a half-written result: write beside the target, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _each_pair(
    jobs: Sequence[tuple[str, str, Path]], process: Callable[[str, str, Path], dict], progress: bool = False
) -> int:
    """Run `process` on each (person, garment, output), printing one JSON line per pair: its
    record or its error (the batch goes on). Returns the exit status, as _each_image does."""
    unreadable = nothing_found = False
    start = time.perf_counter()
    for n, (person_path, garment_path, out) in enumerate(jobs, 1):
        try:
            record = process(person_path, garment_path, out)
        except ModelUnavailable:
            raise
        except (NoPersonDetected, GarmentNotDetected, CategoryUnsupported) as exc:
            record, nothing_found = _pair_error(person_path, garment_path, exc), True
        except FitroomError as exc:
            record, unreadable = _pair_error(person_path, garment_path, exc), True
        print(json.dumps(record), flush=True)
        if progress:
            _progress(n, len(jobs), time.perf_counter() - start)
    return EXIT_BAD_INPUT if unreadable else EXIT_NO_PERSON if nothing_found else EXIT_OK


def _pair_error(person_path: str, garment_path: str, error: FitroomError) -> dict:
    """The JSON line of a failed pair (a try-off has no garment file: "")."""
    return {"person": person_path, **({"garment": garment_path} if garment_path else {}), "error": error.to_dict()}


def _progress(done: int, total: int, elapsed: float) -> None:
    """A progress bar on stderr (stdout carries the JSON lines)."""
    width = 30
    filled = round(width * done / total)
    eta = elapsed / done * (total - done)
    end = "\n" if done == total else ""
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {elapsed:.1f}s elapsed, {eta:.1f}s left"
    print(line, end=end, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- batches


def _each_image(paths: Sequence[str], process: Callable[[str, np.ndarray], dict], rgba: bool = False) -> int:
    """Decode each image and `process` it, printing one JSON line per image in order: its
    record, or {"image", "error"} when the image is unreadable or has no person (the batch
    goes on). Missing models stop the batch (main exits 4). Returns the exit status."""
    unreadable = no_person = False
    for path in paths:
        try:
            record = process(path, read_image_file(Path(path), rgba=rgba))
        except (NoPersonDetected, GarmentNotDetected) as exc:
            record, no_person = {"image": path, "error": exc.to_dict()}, True
        except ModelUnavailable:
            raise
        except FitroomError as exc:
            record, unreadable = {"image": path, "error": exc.to_dict()}, True
        print(json.dumps(record), flush=True)
    # An unreadable input outranks a photo without a person: the caller has a file to fix.
    return EXIT_BAD_INPUT if unreadable else EXIT_NO_PERSON if no_person else EXIT_OK


# --------------------------------------------------------------------------- main


def _add_pair_arguments(command: argparse.ArgumentParser, output_help: str) -> None:
    """The person and garment arguments of the commands that _pair_jobs reads."""
    command.add_argument("--person", help="person photo")
    command.add_argument("--garment", help="product image of the garment")
    command.add_argument("--garment-dir", help="with --person (a catalog) or --pairs: folder of garment images")
    command.add_argument("--pairs", help="batch: lines of '<person file> <garment file>' (VITON's test_pairs.txt)")
    command.add_argument("--person-dir", help="with --pairs: folder of the person photos")
    command.add_argument("--category", choices=["auto", "upper", "lower", "dress"], default="auto")
    command.add_argument(
        "--learned", type=_weights_name, help="run the learned path with these installed weights (FITROOM_LEARNED)"
    )
    command.add_argument("-o", "--output", required=True, help=output_help)


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Prepare the paired data (cached) and train the learned warp, try-on generator or try-off."""
    from services import train

    data = Path(args.data)
    try:
        pairs = train.read_pairs(data)
    except FileNotFoundError as exc:
        print(f"fitroom: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.val_pairs and not Path(args.val_pairs).is_file():
        print(f"fitroom: error: no validation pairs file at {args.val_pairs}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.kind == "tryon" and not (args.warp or args.resume):
        print("fitroom: error: training the try-on needs the trained warp: --warp WARP_CHECKPOINT", file=sys.stderr)
        return EXIT_BAD_INPUT
    for given in (args.warp, args.resume):
        if given and not Path(given).is_file():
            print(f"fitroom: error: no checkpoint at {given}", file=sys.stderr)
            return EXIT_BAD_INPUT
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    size = train.TRAIN_SIZE
    cache_root = Path(args.cache) if args.cache else train.default_cache(data, args.category, size)
    try:
        cache = train.prepare(
            data, cache_root, args.category, size, args.workers, args.limit, log, args.kind == "tryoff"
        )
    except ValueError as exc:
        print(f"fitroom: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    given = {
        "smoothness": args.smoothness,
        "colour": args.colour_weight,
        "perceptual": args.perceptual,
        "adversarial": args.adversarial,
    }
    given |= {"mask": args.mask_weight, "alpha": args.alpha_weight}
    weights = train.Weights(**{k: v for k, v in given.items() if v is not None})
    run = train.Run(
        kind=args.kind,
        cache=cache,
        output=Path(args.output),
        val_ids=train.validation_ids(Path(args.val_pairs) if args.val_pairs else None),
        max_minutes=args.max_minutes,
        resume=Path(args.resume) if args.resume else None,
        warp=Path(args.warp) if args.warp else None,
        batch_size=args.batch_size,
        lr=args.lr,
        final_lr=args.final_lr,
        eval_minutes=args.eval_minutes,
        weights=weights,
        trained_on=args.trained_on,
        seed=args.seed,
        precision=args.precision,
        shape_steps=args.shape_steps,
    )
    log(f"{len(pairs)} pairs in {data}; cache {cache_root} ({len(cache.ready())} ready)")
    try:
        state = train.train(run, log)
    except ValueError as exc:
        print(f"fitroom: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = {"checkpoint": args.output, "kind": args.kind, "samples": state["samples"], **state["curve"][-1]}
    print(json.dumps(summary | {"best": state["best"]}))
    return EXIT_OK


def cmd_models_install(args: argparse.Namespace) -> int:
    """Export a `fitroom train` checkpoint into the model repository under --name."""
    from services import learned

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"fitroom: error: no checkpoint at {checkpoint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    repository = get_settings().model_repository
    names = learned.install(checkpoint, repository, args.name)
    setting = "FITROOM_LEARNED_TRYOFF" if names == [learned.tryoff_model(args.name)] else "FITROOM_LEARNED"
    print(json.dumps({"installed": names, "repository": str(repository), "use": f"{setting}={args.name}"}))
    return EXIT_OK


def _weights_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", value):
        raise argparse.ArgumentTypeError("lower-case letters, digits and '-' (at most 41)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitroom", description="Fitroom virtual try-on")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="manage the model repository (triton_models/)")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    build = models_commands.add_parser("build", help="fetch the MediaPipe wheel and build every model.pt")
    build.add_argument("--force", action="store_true", help="rebuild even when the cached build is current")
    build.add_argument("--wheel", type=Path, help="use this mediapipe-0.10.21 wheel instead of downloading it")
    build.set_defaults(func=cmd_models_build)
    install = models_commands.add_parser(
        "install",
        help="export a `fitroom train` checkpoint into the repository (FITROOM_LEARNED=NAME uses it; "
        "a try-off checkpoint: FITROOM_LEARNED_TRYOFF=NAME)",
    )
    install.add_argument("checkpoint", metavar="CHECKPOINT")
    install.add_argument("--name", required=True, type=_weights_name, help="the weights' name, e.g. acme-2026-12")
    install.set_defaults(func=cmd_models_install)

    pose = commands.add_parser("pose", help="body landmarks of each image, one JSON object per line")
    pose.add_argument("images", nargs="+", metavar="IMAGE")
    pose.add_argument("--format", choices=["coco18", "body25", "blazepose"], default="coco18")
    pose.add_argument("--mask-dir", help="write each person mask as DIR/<stem>_mask.png")
    pose.add_argument("--overlay-dir", help="write each pose drawn over its photo as DIR/<stem>_pose.jpg")
    pose.set_defaults(func=cmd_pose)

    parse = commands.add_parser("parse", help="LIP label map of each image as DIR/<stem>.png, one JSON object per line")
    parse.add_argument("images", nargs="+", metavar="IMAGE")
    parse.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the label maps (created)")
    parse.add_argument(
        "--agnostic",
        choices=["upper", "lower", "dress"],
        help="also write the region a garment of this category may repaint as DIR/<stem>_agnostic.png",
    )
    parse.set_defaults(func=cmd_parse)

    garment = commands.add_parser(
        "garment", help="garment mask (DIR/<stem>_mask.png) and landmarks (DIR/<stem>.json) of product images"
    )
    garment.add_argument("images", nargs="+", metavar="IMAGE")
    garment.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="folder for masks and landmarks (created)"
    )
    garment.add_argument("--category", choices=["upper", "lower", "dress"], help="skip detection: the garment is this")
    garment.set_defaults(func=cmd_garment)

    warp = commands.add_parser("warp", help="the garment warped onto the person: RGBA PNG on the person's canvas")
    _add_pair_arguments(warp, "OUT.png; batches: a folder of <person stem>__<garment stem>.png")
    warp.set_defaults(func=cmd_warp)

    tryon = commands.add_parser(
        "tryon",
        help="the person wearing the garment; batches: one person and a --garment-dir catalog, or VITON-style --pairs",
    )
    _add_pair_arguments(tryon, "OUT.jpg or OUT.png; batches: a folder of <person stem>__<garment stem>.jpg")
    tryon.add_argument(
        "--debug", metavar="DIR", help="write every intermediate there (batches: one sub-folder per result)"
    )
    tryon.set_defaults(func=cmd_tryon)
    tryoff = commands.add_parser(
        "tryoff",
        help="the garment a person wears as a frontal flat-lay product image (the default, geometric try-off)",
        description="Lay the garment of --category that the photo's person wears flat, as a product shot: "
        "our parse gives its pixels and our pose the body, the warp's splines run backwards onto a canonical "
        "flat-lay of the category, and what hair or arms hide is filled from the garment's own colours. "
        "Writes the photo's size; .png is RGBA, .jpg is on white. Exit 3: no person, or no such garment worn.",
    )
    tryoff.add_argument("--person", help="the on-model photo")
    tryoff.add_argument("--person-dir", help="batch: every image in this folder (models loaded once)")
    tryoff.add_argument("--category", choices=["upper", "lower", "dress"], default="upper")
    tryoff.add_argument(
        "-o", "--output", required=True, help="GARMENT.png (RGBA) or .jpg (on white); batches: OUTDIR/<stem>.png"
    )
    tryoff.add_argument("--debug", metavar="DIR", help="write pose, parse and the flat-lay on white there")
    tryoff.add_argument(
        "--learned",
        type=_weights_name,
        help="the learned try-off with these installed weights (FITROOM_LEARNED_TRYOFF; `fitroom train tryoff`)",
    )
    tryoff.set_defaults(func=cmd_tryoff)
    train_command = commands.add_parser(
        "train", help="train the learned warp, try-on generator or try-off on paired photos (docs/TRAINING.md)"
    )
    train_command.add_argument(
        "kind",
        choices=["warp", "tryon", "tryoff"],
        help="warp first, then tryon (which uses the warp); tryoff: person in, flat-lay out (on its own)",
    )
    train_command.add_argument(
        "--data", required=True, help="VITON's layout: train_pairs.txt, train/image/<id>_0, train/cloth/<id>_1"
    )
    train_command.add_argument("--val-pairs", help="pairs held out of training and scored as it trains")
    train_command.add_argument("--max-minutes", type=float, default=60.0, help="stop (with a checkpoint) after this")
    train_command.add_argument("--resume", help="a checkpoint of this kind to go on from")
    train_command.add_argument(
        "--warp",
        help="tryon: the trained warp it builds on (with --resume: in place of the one the checkpoint carries)",
    )
    train_command.add_argument("-o", "--output", required=True, help="the checkpoint (rewritten atomically)")
    train_command.add_argument("--cache", help="the prepared pairs (default FITROOM_DATA_DIR/training/...)")
    train_command.add_argument("--category", choices=["auto", "upper", "lower", "dress"], default="auto")
    train_command.add_argument("--workers", type=int, default=2, help="processes preparing the pairs")
    train_command.add_argument("--limit", type=int, help="only the first N pairs")
    train_command.add_argument("--batch-size", type=int, default=8)
    train_command.add_argument("--lr", type=float, default=1e-3)
    train_command.add_argument(
        "--final-lr", type=float, help="let the learning rate fall from --lr to this along a cosine over the run"
    )
    train_command.add_argument("--eval-minutes", type=float, default=5.0, help="score and checkpoint this often")
    train_command.add_argument("--smoothness", type=float, help="loss weight (default: services/train.py Weights)")
    train_command.add_argument("--colour-weight", type=float, help="loss weight (default: services/train.py Weights)")
    train_command.add_argument("--perceptual", type=float, help="loss weight (default: services/train.py Weights)")
    train_command.add_argument("--adversarial", type=float, help="loss weight (default: services/train.py Weights)")
    train_command.add_argument("--mask-weight", type=float, help="loss weight (default: services/train.py Weights)")
    train_command.add_argument(
        "--alpha-weight", type=float, help="tryoff: the mask's BCE weight (default: services/train.py Weights)"
    )
    train_command.add_argument(
        "--shape-steps",
        type=int,
        default=3000,
        help="tryoff: batches the shape prior trains on alone first where it is new (a fresh run, an older checkpoint)",
    )
    train_command.add_argument("--trained-on", default="", help="what the data is and its licence (kept with it)")
    train_command.add_argument("--seed", type=int, default=0)
    train_command.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast, or fp32; auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX)",
    )
    train_command.set_defaults(func=cmd_train)
    add_gateway_commands(commands)  # serve, keys (the REST gateway)
    add_worker_commands(commands)  # worker, worker-health (distributed mode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "category", None) == "auto":
        args.category = None  # detect it
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
