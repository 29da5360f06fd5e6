"""The embedded pipeline runner: pose, parser, warp and fusion chained through the artifact store.

Person-side results (pose, parse) are stored under the person image's content hash and a
garment's analysis under the garment's, so a shopper trying twenty garments runs pose and
parser once and a catalog garment is analysed once. The runner holds no try-on logic: it
calls each stage's `run` and moves results in and out of the store. The CLI's `tryon` and the
gateway's worker threads both drive this class.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from services.common.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    get_array,
    get_json,
    image_digest,
    put_array,
    put_json,
)
from services.common.contracts import LANDMARK_INDEX, Category, GarmentAnalysis, ParseResult, PoseResult, WarpResult
from services.common.errors import CategoryUnsupported
from services.common.inference import Infer
from services.fusion import stage as fusion_stage
from services.parser import stage as parser_stage
from services.parser.agnostic import agnostic_mask
from services.pose import stage as pose_stage
from services.warp import stage as warp_stage
from services.warp import tryoff as tryoff_stage
from services.warp.cache import cached_analysis

STAGES = ("pose", "parser", "garment", "warp", "fusion")
# Bump when a stage's output changes: person entries of older versions are then ignored.
PERSON_VERSION = 6
VISIBLE = 0.5
# The joints a category's warp and agnostic mask stand on; a photo where they are not seen
# cannot wear that category (a half-body photo and trousers, say).
REQUIRED_JOINTS: dict[Category, tuple[str, ...]] = {
    "upper": ("left_shoulder", "right_shoulder"),
    "lower": ("left_hip", "right_hip", "left_knee", "right_knee"),
    "dress": ("left_shoulder", "right_shoulder", "left_hip", "right_hip", "left_knee", "right_knee"),
}
# From behind, the pose puts the person's left shoulder on the photo's left: their x order, as a
# share of the shoulders' distance, is below this (front views >= 0, side views near 0). On VITON's
# 1,000 validation photos the three back views read -0.90 to -1.00, every other photo 0.37 or more;
# on 3,000 of its training photos, 16 read below it: 15 back views, and one front view (a head bowed
# under long hair) that the pose takes for a back view.
FACING_AWAY = -0.5

# on_stage(stage, event, seconds): event is "running" (seconds 0), "done" (seconds spent) or
# "cached" (seconds 0: the result came from the store, nothing was computed).
StageCallback = Callable[[str, str, float], None]

# A lock per person-side result (its store key): a second try-on of the same photo that starts while
# the first computes its pose waits and then finds it stored, so a shopper's batch runs pose and
# parser once however many workers take its jobs. Distributed mode passes a Redis lock instead.
PersonLock = Callable[[str], AbstractContextManager[object]]
_LOCAL_LOCKS = tuple(threading.Lock() for _ in range(64))  # striped: bounded, and never nested


def local_person_lock(key: str) -> AbstractContextManager[object]:
    return _LOCAL_LOCKS[hash(key) % len(_LOCAL_LOCKS)]


@dataclass
class TryonResult:
    image: np.ndarray  # HxWx3 uint8, the person photo's size
    category: Category
    pose: PoseResult
    parse: ParseResult  # with the agnostic mask of `category`
    garment: GarmentAnalysis
    warped: WarpResult
    seconds: dict[str, float] = field(default_factory=dict)  # per stage; 0 when served from the store


def person_prefix(image: np.ndarray) -> str:
    """Where everything derived from this person photo is stored (erase it with delete_prefix)."""
    return f"person/{image_digest(image)}/"


def check_category(pose: PoseResult, category: Category) -> None:
    """CategoryUnsupported when the photo does not show the joints `category` needs, or shows the
    person from behind: a garment is put on and taken off the front of a body (its print, its
    neckline, its buttons), and from behind the parse takes long hair for the top."""
    landmarks = pose.landmarks
    left, right = landmarks[LANDMARK_INDEX["left_shoulder"]], landmarks[LANDMARK_INDEX["right_shoulder"]]
    shown = min(left.visibility, right.visibility) >= VISIBLE  # a crop of the legs says nothing here
    if shown and left.x - right.x < FACING_AWAY * math.hypot(left.x - right.x, left.y - right.y):
        raise CategoryUnsupported(
            "the person faces away from the camera (their left shoulder is on the photo's left): "
            "send a photo of the front of the person"
        )
    missing = [j for j in REQUIRED_JOINTS[category] if landmarks[LANDMARK_INDEX[j]].visibility < VISIBLE]
    inside = all(
        0 <= landmarks[LANDMARK_INDEX[j]].x < pose.image_width
        and 0 <= landmarks[LANDMARK_INDEX[j]].y < pose.image_height
        for j in REQUIRED_JOINTS[category]
    )
    if missing or not inside:
        seen = ", ".join(missing) if missing else "joints outside the photo"
        raise CategoryUnsupported(
            f"a {category} garment needs the photo to show {', '.join(REQUIRED_JOINTS[category])} (not seen: {seen})"
        )


class Pipeline:
    """The stages with results reused through `store`. Each method is one stage: `tryon` chains them
    in one process (embedded mode); distributed mode runs each as its own Celery task
    (services/distributed/tasks.py), on the same methods."""

    def __init__(
        self,
        store: ArtifactStore,
        infer: Infer,
        learned: str | None = None,
        person_lock: PersonLock | None = None,
        learned_tryoff: str | None = None,
    ) -> None:
        self.store = store
        self.infer = infer
        self.learned = learned  # the learned path's weights (FITROOM_LEARNED), or None: geometric
        self.learned_tryoff = learned_tryoff  # the learned try-off's (FITROOM_LEARNED_TRYOFF), or None
        self.person_lock = person_lock or local_person_lock

    def pose(self, image: np.ndarray, on_stage: StageCallback | None = None) -> PoseResult:
        """The pose of a person photo, from the store or computed and stored."""
        notify = on_stage or _ignore
        key = _person_key(image)
        with self.person_lock(f"{key}/pose"):
            try:
                record = get_json(self.store, f"{key}/pose.json")
                mask = get_array(self.store, f"{key}/pose_mask.npy")
                notify("pose", "cached", 0.0)
            except ArtifactNotFound:
                notify("pose", "running", 0.0)
                start = time.perf_counter()
                computed = pose_stage.run(image, self.infer)
                record, mask = computed.model_dump(), (computed.mask * 255).round().astype(np.uint8)
                put_array(self.store, f"{key}/pose_mask.npy", mask)
                put_json(self.store, f"{key}/pose.json", record)
                notify("pose", "done", time.perf_counter() - start)
        # The stored mask is 8-bit; the parser sees the same mask on the first run as on later ones.
        return PoseResult.model_validate({**record, "mask": mask.astype(np.float32) / 255.0})

    def parse(self, image: np.ndarray, pose: PoseResult, on_stage: StageCallback | None = None) -> ParseResult:
        """The label map of a person photo, from the store or computed and stored."""
        notify = on_stage or _ignore
        key = _person_key(image)
        with self.person_lock(f"{key}/parse"):
            try:
                parse = ParseResult.model_validate(
                    {**get_json(self.store, f"{key}/parse.json"), "labels": get_array(self.store, f"{key}/labels.npy")}
                )
                notify("parser", "cached", 0.0)
            except ArtifactNotFound:
                notify("parser", "running", 0.0)
                start = time.perf_counter()
                parse = parser_stage.run(image, pose, self.infer)
                put_array(self.store, f"{key}/labels.npy", parse.labels)
                put_json(self.store, f"{key}/parse.json", parse.model_dump())
                notify("parser", "done", time.perf_counter() - start)
        return parse

    def person(self, image: np.ndarray, on_stage: StageCallback | None = None) -> tuple[PoseResult, ParseResult]:
        """Pose and parse of a person photo."""
        pose = self.pose(image, on_stage)
        return pose, self.parse(image, pose, on_stage)

    def garment(
        self, image: np.ndarray, category: Category | None = None, on_stage: StageCallback | None = None
    ) -> GarmentAnalysis:
        """The garment's analysis (category detected when None), from the store or computed."""
        notify = on_stage or _ignore
        notify("garment", "running", 0.0)
        start = time.perf_counter()
        analysis, from_store = cached_analysis(self.store, image, category)
        if from_store:
            notify("garment", "cached", 0.0)
        else:
            notify("garment", "done", time.perf_counter() - start)
        return analysis

    def warp(
        self,
        garment_image: np.ndarray,
        garment: GarmentAnalysis,
        pose: PoseResult,
        parse: ParseResult,
        on_stage: StageCallback | None = None,
    ) -> tuple[ParseResult, WarpResult]:
        """The parse with the agnostic mask of the garment's category, and the garment warped onto
        the body. CategoryUnsupported when the photo cannot wear that category."""
        notify = on_stage or _ignore
        dressed = for_category(pose, parse, garment.category)
        notify("warp", "running", 0.0)
        start = time.perf_counter()
        warped = warp_stage.run(garment_image, garment, pose, dressed, self.infer, self.learned)
        notify("warp", "done", time.perf_counter() - start)
        return dressed, warped

    def fuse(
        self,
        person_image: np.ndarray,
        pose: PoseResult,
        dressed: ParseResult,
        warped: WarpResult,
        on_stage: StageCallback | None = None,
    ) -> np.ndarray:
        """The try-on photo from the warped garment and the parse of `for_category`."""
        notify = on_stage or _ignore
        notify("fusion", "running", 0.0)
        start = time.perf_counter()
        image = fusion_stage.run(person_image, dressed, pose, warped, self.infer, self.learned)
        notify("fusion", "done", time.perf_counter() - start)
        return image

    def tryoff(self, image: np.ndarray, category: Category = "upper") -> tryoff_stage.Tryoff:
        """The garment of `category` worn in `image` (RGB uint8) as a flat-lay; pose and parse come from
        the store like a shopper's. NoPersonDetected, CategoryUnsupported (the photo lacks the joints
        the category stands on) or GarmentNotDetected (nothing of that category is worn). With
        learned_tryoff, the learned try-off (ModelUnavailable when those weights are not installed)."""
        pose, parse = self.person(image)
        check_category(pose, category)
        return tryoff_stage.extract(image, pose, parse, category, learned=self.learned_tryoff, infer=self.infer)

    def tryon(
        self,
        person_image: np.ndarray,
        garment_image: np.ndarray,
        category: Category | None = None,
        on_stage: StageCallback | None = None,
    ) -> TryonResult:
        """`garment_image` (RGB or RGBA uint8) worn by the person in `person_image` (RGB uint8)."""
        seconds: dict[str, float] = {}

        def notify(stage: str, event: str, elapsed: float) -> None:
            if event != "running":
                seconds[stage] = elapsed
            if on_stage:
                on_stage(stage, event, elapsed)

        garment = self.garment(garment_image, category, notify)
        pose, parse = self.person(person_image, notify)
        dressed, warped = self.warp(garment_image, garment, pose, parse, notify)
        image = self.fuse(person_image, pose, dressed, warped, notify)
        return TryonResult(image, garment.category, pose, dressed, garment, warped, seconds)


def for_category(pose: PoseResult, parse: ParseResult, category: Category) -> ParseResult:
    """The parse with the agnostic mask of `category`; CategoryUnsupported when the photo lacks its joints."""
    check_category(pose, category)
    return parse.model_copy(update={"category": category, "agnostic": agnostic_mask(parse.labels, pose, category)})


def _person_key(image: np.ndarray) -> str:
    return f"{person_prefix(image)}v{PERSON_VERSION}"


def _ignore(stage: str, event: str, seconds: float) -> None:
    pass
