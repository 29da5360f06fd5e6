"""The parser stage: person photo + pose -> LIP label map and the agnostic mask.

No learned human parser: the licensed ones are research-only. The labels come from the
models we may ship (the pose's person mask and landmarks, the face mesh) plus geometry and
colour, all on the photo at hand:

1. The face mesh's outline is the face; the pose's person probability is the prior for
   person against background.
2. Body geometry says which classes a pixel may take: a body frame (t = 0 on the shoulder
   line, 1 on the hip line) says what is above or below the waist; capsules along the arm
   and leg bones hold arms, sleeves and legs; a head zone holds hair; a neck zone, skin.
3. Colour decides within those zones, from models fitted on this photo: skin from the face,
   upper garment from the torso core, lower garment from below the hips (below the waist, in
   colours the top's do not explain, when the photo ends at the hips), hair from around
   the head, background from around the person. Each pixel takes its cheapest class.
4. Boundaries follow the photo: the class maps are guided-filtered with the image as guide,
   then brought to full resolution, where each pixel takes its most likely class.

Steps 1 to 3 run at a reduced height (WORK_HEIGHT) for speed.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.contracts import LANDMARK_INDEX, LIP, Category, ParseResult, PoseResult
from services.common.inference import Infer
from services.parser import colour
from services.parser.agnostic import agnostic_mask
from services.parser.face import face_mesh, face_oval
from services.parser.geometry import BodyFrame, arm_chain, landmark, leg_chain, limb_distance, segment_distance

WORK_HEIGHT = 256
PERSON_THRESHOLD = 0.5
SURE_PERSON, SURE_BACKGROUND = 0.9, 0.1  # colour models learn only from pixels this certain
FACE_GROWTH = 0.03  # of the face width
SKIN_COLOURED_GARMENT = 0.4  # a garment seed keeps its skin-like pixels when they are over 60% of it
SHOE_RADIUS = 0.2  # of the shoulder width, around the heel-toe and ankle-toe lines
FACE_MARGIN = 0.12  # skin this close to the face outline (face widths) is face
LANDMARK_VISIBLE = 0.5
# Colour-model spread floors in Lab units: below this, shading alone would look like another class.
# Lightness varies with shading far more than hue does, so its floor is higher.
SKIN_MIN_STD = np.array([8.0, 3.0, 3.0])
GARMENT_MIN_STD = np.array([6.0, 4.0, 4.0])
HAIR_MIN_STD = np.array([6.0, 4.0, 4.0])
BACKGROUND_MIN_STD = np.array([3.0, 2.0, 2.0])
# Geometric priors, in nats added to a class's colour cost where the geometry argues against it.
PENALTY_TORSO_SKIN = 2.0  # bare skin on the torso is rarer than garment there
PENALTY_HAIR_ON_NECK = 1.5  # the neck below the chin is usually skin, even in shadow
PENALTY_HAIR_ON_ARMS = 2.0  # hands raised to the head are still hands
PENALTY_PER_TORSO = 6.0  # upper garment below the hips / lower garment above them, per torso length
GUIDED_RADIUS_FRACTION = 0.008  # of the working height
GUIDED_EPS = 1e-3
ARMS_OVER_LOWER_T = 0.85  # above this, what lies along an arm is arm or sleeve, never the lower garment
# Below it, where the top and the lower garment are one colour (a tracksuit, a black satin set:
# the lower garment's model explains most of the top's seed pixels within SAME_COLOUR nats of
# the top's own), colour cannot tell a forearm's sleeve from the trousers behind it; there a
# pixel on the forearm's bone (FOREARM_RADIUS) is arm or sleeve. Taken for the trousers, a long
# sleeve's forearm was kept by the try-on below a short top's hem. Not the hand's bone: what a
# hand holds (a black clutch) is no sleeve.
SAME_COLOUR = 1.0
FOREARM_RADIUS = 0.1  # of the shoulder width
UNREACHABLE = 1e4  # the cost of a class its zone rules out
MAX_COLOUR_COST = 40.0
UNEXPLAINED = 16.0  # a colour cost (nats) above which no class's colour model explains a pixel
NEUTRAL_CHROMA = 8.0  # Lab chroma under which a colour has no hue: white, greys, black
HAIR_HUE_PERCENTILE = 2  # below the chin, hair has at least the hue of all but this share of the head's hair
# A photo cut at the hips (VITON's are, about one in twelve with nothing below them) leaves no
# seed for the lower garment, and jeans or a skirt under a tucked-in top were all taken for the
# top. There the seed is what lies below the waist (WAIST_T) that the top's colours do not
# explain as well as they explain the top's own seed (its TOP_TYPICAL percentile), when that is
# at least LOWER_SHARE of it: otherwise the top reaches the photo's edge. Not in a portrait cut
# above the hips: there the top's folds and what is held (the astronaut's helmet) lie below the waist.
WAIST_T = 0.75
TOP_TYPICAL = 90
LOWER_SHARE = 0.3


def guided_filter(guide: np.ndarray, maps: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide, applied to each channel of `maps` (H, W, C):
    the output follows the guide's edges, so label boundaries snap to the photo's."""
    size = (2 * radius + 1, 2 * radius + 1)
    box = lambda x: cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mean_i = box(guide)
    var_i = box(guide * guide) - mean_i * mean_i
    out = np.empty_like(maps)
    for c in range(maps.shape[2]):
        p = np.ascontiguousarray(maps[..., c])
        mean_p = box(p)
        a = (box(guide * p) - mean_i * mean_p) / (var_i + eps)
        b = mean_p - a * mean_i
        out[..., c] = box(a) * guide + box(b)
    return out


def _face_mask(
    shape: tuple[int, int], pts: np.ndarray, visible: np.ndarray, oval: np.ndarray | None, shoulder_width: float
) -> np.ndarray:
    """The face: the mesh outline grown a little (the mesh stops short of the ears and the
    hairline), or an ellipse around the nose when there is no mesh."""
    face = np.zeros(shape, np.uint8)
    if oval is not None:
        cv2.fillPoly(face, [np.round(oval).astype(np.int32)], 1)
        grow = max(1, round(FACE_GROWTH * (oval[:, 0].max() - oval[:, 0].min())))
        face = cv2.dilate(face, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    elif visible[LANDMARK_INDEX["nose"]] > LANDMARK_VISIBLE:
        nose = landmark(pts, "nose")
        axes = (max(1, round(0.22 * shoulder_width)), max(1, round(0.3 * shoulder_width)))
        cv2.ellipse(face, (round(nose[0]), round(nose[1])), axes, 0, 0, 360, 1, -1)
    return face.astype(bool)


def label_pixels(
    rgb: np.ndarray, person_prob: np.ndarray, pts: np.ndarray, visible: np.ndarray, oval: np.ndarray | None
) -> tuple[np.ndarray, bool]:
    """LIP labels at working resolution from an RGB image, the pose's person probability and
    the landmarks (both in working-resolution pixels), and whether the top and the lower
    garment are one colour (their boundary is then the priors' guess)."""
    h, w = person_prob.shape
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    body = BodyFrame.from_points(pts)
    t, across = body.coords(xs, ys)
    sw = body.shoulder_width
    person = person_prob > PERSON_THRESHOLD
    sure = person_prob > SURE_PERSON

    face = _face_mask((h, w), pts, visible, oval, sw) & person
    face_ys, face_xs = np.nonzero(face)
    if len(face_xs):
        chin_t = float(body.coords(face_xs.astype(np.float32), face_ys.astype(np.float32))[0].max())
        face_width = float(face_xs.max() - face_xs.min() + 1)
        face_centre = np.array([face_xs.mean(), face_ys.mean()])
    else:
        chin_t, face_width, face_centre = -0.15, 0.45 * sw, landmark(pts, "nose")
    face_across = body.coords(face_centre[:1], face_centre[1:])[1][0]

    # Zones from the geometry.
    head_zone = (np.abs(across - face_across) * body.length < 1.25 * face_width) & (t < chin_t + 0.45)
    above_chin = head_zone & (t < chin_t) & ~face  # hair or background, or face the mesh missed
    grow = max(1, round(FACE_MARGIN * face_width))
    face_margin = cv2.dilate(face.astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8)).astype(bool) & above_chin
    # The neck runs from the chin to the shoulder line along the body's centre, wherever the face turns.
    neck_zone = (np.abs(across) * body.length < 0.25 * sw) & (t >= chin_t - 0.1) & (t < 0.15)
    arm_radii = [0.2 * sw, 0.17 * sw, 0.2 * sw]
    left_arm = limb_distance(xs, ys, arm_chain(pts, "left"), arm_radii)
    right_arm = limb_distance(xs, ys, arm_chain(pts, "right"), arm_radii)
    arm_zone = np.minimum(left_arm, right_arm) < 1.0

    # Colour models from pixels the geometry vouches for.
    near = cv2.dilate(person.astype(np.uint8), np.ones((2 * max(2, h // 20) + 1,) * 2, np.uint8)).astype(bool)
    background_model = colour.fit(lab[near & (person_prob < SURE_BACKGROUND)], 3, BACKGROUND_MIN_STD)
    core = sure & ~face & ~arm_zone & (t > 0.2) & (t < 0.8) & (np.abs(across) * body.length < 0.3 * sw)
    face_core = cv2.erode(face.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    skin_model = colour.fit(lab[face_core & (ys > face_centre[1] - 0.1 * face_width)], 2, SKIN_MIN_STD)
    typical_skin = np.percentile(skin_model.nll(lab[face_core]), 90) if skin_model is not None else np.inf

    def not_skin(seed: np.ndarray) -> np.ndarray:
        """The seed without its skin-like pixels (a neckline, bare legs, ears), so garment
        and hair models do not learn skin. When most of the seed looks like skin, it is a
        skin-coloured garment (beige, tan), and the seed is kept whole."""
        if skin_model is None or not seed.any():
            return seed
        kept = seed.copy()
        kept[seed] = skin_model.nll(lab[seed]) > typical_skin
        return kept if kept.sum() >= SKIN_COLOURED_GARMENT * seed.sum() else seed

    upper_seed = lab[not_skin(core)]
    upper_model = colour.fit(upper_seed, 3, GARMENT_MIN_STD)
    centre_column = sure & ~arm_zone & (np.abs(across) * body.length < 0.35 * sw)  # the hips' width, down the body
    lower_model = colour.fit(lab[not_skin(centre_column & (t > 1.15) & (t < 1.7))], 2, GARMENT_MIN_STD)
    hips_in_photo = max(landmark(pts, "left_hip")[1], landmark(pts, "right_hip")[1]) < h
    if lower_model is None and upper_model is not None and hips_in_photo:
        under_waist = not_skin(centre_column & (t > WAIST_T))
        unlike_top = upper_model.nll(lab[under_waist]) > np.percentile(upper_model.nll(upper_seed), TOP_TYPICAL)
        if unlike_top.sum() >= LOWER_SHARE * max(1, under_waist.sum()):
            lower_model = colour.fit(lab[under_waist][unlike_top], 2, GARMENT_MIN_STD)
    one_colour = (
        upper_model is not None
        and lower_model is not None
        and np.mean(lower_model.nll(upper_seed) <= upper_model.nll(upper_seed) + SAME_COLOUR) > 0.5
    )
    forearm = np.zeros((h, w), bool)
    if one_colour:
        bones = (arm_chain(pts, side)[1:3] for side in ("left", "right"))
        forearm = np.minimum(*(segment_distance(xs, ys, *bone) for bone in bones)) < FOREARM_RADIUS * sw
    hair_seed = not_skin(sure & above_chin)
    hair_model = colour.fit(lab[hair_seed], 2, HAIR_MIN_STD)

    # Every pixel near the person takes its cheapest class: colour cost, plus the pose's person
    # probability as a prior for person against background, plus the zones' geometric priors.
    log_p = -np.log(np.clip(person_prob, 1e-3, 1.0))
    log_not_p = -np.log(np.clip(1.0 - person_prob, 1e-3, 1.0))
    garment_zone = np.where(above_chin, UNREACHABLE, 0.0)
    priors = {
        "background": log_not_p + np.where(sure, UNREACHABLE, 0.0),
        "upper": log_p + garment_zone + PENALTY_PER_TORSO * np.clip(t - 1.1, 0, None),
        # Above the chin, skin just around the outline is forehead or ears the mesh missed.
        "skin": log_p
        + np.where(above_chin & ~face_margin, UNREACHABLE, 0.0)
        + PENALTY_TORSO_SKIN * (~arm_zone & ~neck_zone & ~above_chin & (t < 1.0)),
        "lower": log_p
        + garment_zone
        + PENALTY_PER_TORSO * np.clip(0.9 - t, 0, None)
        + np.where((arm_zone & (t < ARMS_OVER_LOWER_T)) | forearm, UNREACHABLE, 0.0),
        "hair": log_p
        + np.where(head_zone, 0.0, UNREACHABLE)
        + PENALTY_HAIR_ON_NECK * neck_zone
        + PENALTY_HAIR_ON_ARMS * arm_zone,
    }
    models = {
        "background": background_model,
        "upper": upper_model,
        "skin": skin_model,
        "lower": lower_model,
        "hair": hair_model,
    }
    names = list(priors)
    # Colour costs are clipped: past a point, "very unlike" should not outweigh the priors.
    # A class without a colour model (too few seed pixels) explains nothing.
    pix = lab[near]
    chroma_map = np.hypot(lab[..., 1], lab[..., 2])
    chroma = chroma_map[near]
    # Hair with a hue (blond, brown, red) has no white or grey strands below the chin: there,
    # hair's model does not explain a colour with less hue than nearly all of the head's hair.
    # The white collar of a red top, between blond hair at the shoulders, was taken for hair, or
    # for neck (the face's skin explains white less badly than the red top does), and kept by
    # every try-on. Black or grey hair has no hue to tell it by: the floor falls to nothing.
    hair_chroma = chroma_map[hair_seed]
    hue_floor = min(NEUTRAL_CHROMA, np.percentile(hair_chroma, HAIR_HUE_PERCENTILE)) if len(hair_chroma) else 0.0
    not_hair_coloured = (t[near] > chin_t) & (chroma < hue_floor)
    colour_costs = np.full((len(names), len(pix)), UNREACHABLE, np.float32)
    costs = colour_costs.copy()
    for k, name in enumerate(names):
        if models[name] is not None:
            colour_costs[k] = np.minimum(models[name].nll(pix), MAX_COLOUR_COST)
            if name == "hair":
                colour_costs[k][not_hair_coloured] = MAX_COLOUR_COST
            costs[k] = colour_costs[k] + priors[name][near]
    # A colour no model of this photo explains, on the person, is garment (a stripe, a print, a
    # logo): skin and hair colours are known from the face and head, garments' are not. Away from
    # the head, hair's model does not explain a colour without hue (white, grey), which skin never
    # is: blond hair's "explained" a red sleeve's white stripes, so they were taken for arm and a
    # try-on filled the arm's skin with white.
    on_person = names.index("background") != np.argmin(costs, axis=0)
    person_classes = [names.index(n) for n in ("upper", "skin", "lower")]
    neutral = chroma < NEUTRAL_CHROMA
    hair_cost = np.where(head_zone[near] | ~neutral, colour_costs[names.index("hair")], np.inf)
    unexplained = on_person & (np.minimum(colour_costs[person_classes].min(axis=0), hair_cost) > UNEXPLAINED)
    costs[[names.index("skin"), names.index("hair")]] += np.where(unexplained, UNREACHABLE, 0.0)
    choice = np.full((h, w), names.index("background"))
    choice[near] = np.argmin(costs, axis=0)
    is_ = lambda n: (choice == names.index(n)) & ~face  # noqa: E731

    labels = np.zeros((h, w), np.uint8)
    labels[is_("upper")] = LIP["upper_clothes"]
    # Hair grows from the head: hair-coloured patches below the chin that do not join the hair
    # above it (a dark collar, a scarf) are garment.
    hair = is_("hair")
    _, parts = cv2.connectedComponents(hair.astype(np.uint8), connectivity=8)
    on_head = np.unique(parts[hair & above_chin])
    attached = np.isin(parts, on_head[on_head > 0])
    labels[hair & attached] = LIP["hair"]
    labels[hair & ~attached] = LIP["upper_clothes"]
    labels[is_("lower")] = LIP["pants"]
    # Shoes: what is not skin around each visible foot.
    for side in ("left", "right"):
        ankle, heel, toe = (landmark(pts, f"{side}_{j}") for j in ("ankle", "heel", "foot_index"))
        if visible[LANDMARK_INDEX[f"{side}_ankle"]] < LANDMARK_VISIBLE or not (0 <= ankle[1] < h):
            continue
        radius = max(2.0, SHOE_RADIUS * sw)
        near_foot = np.minimum(segment_distance(xs, ys, heel, toe), segment_distance(xs, ys, ankle, toe)) < radius
        shoe = near_foot & (t > 1.5) & (is_("lower") | is_("upper"))
        labels[shoe] = LIP[f"{side}_shoe"]
    # Shoes the pose's feet missed (feet drawn between the legs): a patch of the lower garment's
    # colour apart from the lower garment, wholly below the knees, is a shoe (dark heels under
    # a dark skirt). Left as the garment, a try-on repaints it as skin.
    lower = (labels == LIP["pants"]).astype(np.uint8)
    count, parts, stats, centroids = cv2.connectedComponentsWithStats(lower, connectivity=8)
    if count > 2:
        knees_t = min(float(body.coords(*landmark(pts, f"{side}_knee"))[0]) for side in ("left", "right"))
        top_t = np.full(count, np.inf, np.float32)
        np.minimum.at(top_t, parts[lower > 0], t[lower > 0])
        apart = top_t > knees_t
        apart[[0, 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]] = False
        hips = landmark(pts, "left_hip"), landmark(pts, "right_hip")
        centre_x, left_sign = (hips[0][0] + hips[1][0]) / 2, np.sign(hips[0][0] - hips[1][0])
        for k in np.flatnonzero(apart):
            side = "left" if np.sign(centroids[k][0] - centre_x) == left_sign else "right"
            labels[parts == k] = LIP[f"{side}_shoe"]
    skin = is_("skin")
    closer_left = left_arm < right_arm
    labels[skin & arm_zone & closer_left] = LIP["left_arm"]
    labels[skin & arm_zone & ~closer_left] = LIP["right_arm"]
    torso_skin = skin & ~arm_zone
    # Legs: skin below the hips. When the knees are not seen, only inside a leg's capsule:
    # skin-coloured things there (a held object, a photo cut at the waist) are not legs.
    leg_radii = [0.4 * sw, 0.32 * sw, 0.25 * sw]
    left_leg = limb_distance(xs, ys, leg_chain(pts, "left"), leg_radii)
    right_leg = limb_distance(xs, ys, leg_chain(pts, "right"), leg_radii)
    below_hips = torso_skin & (t > 1.0)
    knees_seen = visible[[LANDMARK_INDEX["left_knee"], LANDMARK_INDEX["right_knee"]]].min() > LANDMARK_VISIBLE
    leg_skin = below_hips & (knees_seen | (np.minimum(left_leg, right_leg) < 1.0))
    labels[leg_skin & (left_leg < right_leg)] = LIP["left_leg"]
    labels[leg_skin & (left_leg >= right_leg)] = LIP["right_leg"]
    labels[torso_skin & ~below_hips] = LIP["torso_skin"]
    labels[face | (skin & above_chin)] = LIP["face"]
    return labels, bool(one_colour)


def run(image: np.ndarray, pose: PoseResult, infer: Infer, category: Category | None = None) -> ParseResult:
    """LIP label map of `image` (RGB uint8) at full resolution; with `category`, its agnostic mask."""
    height, width = image.shape[:2]
    scale = min(1.0, WORK_HEIGHT / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    person_small = cv2.resize(pose.mask, size, interpolation=cv2.INTER_AREA)
    landmarks = pose.landmark_array()
    pts = landmarks[:, :2] * scale
    mesh = face_mesh(image, pose, infer)
    oval = face_oval(mesh) * scale if mesh is not None else None
    labels_small, one_colour = label_pixels(small, person_small, pts, landmarks[:, 3], oval)

    # Snap boundaries to the photo, then bring the class maps (background included) to full size.
    present = np.unique(labels_small)
    onehot = (labels_small[..., None] == present[None, None, :]).astype(np.float32)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(1, round(GUIDED_RADIUS_FRACTION * size[1]))
    smooth = guided_filter(grey, onehot, radius, GUIDED_EPS)
    if scale < 1:
        smooth = cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR)
    labels = present[np.argmax(smooth.reshape(height, width, -1), axis=2)].astype(np.uint8)
    agnostic = agnostic_mask(labels, pose, category) if category else None
    return ParseResult(
        image_width=width,
        image_height=height,
        labels=labels,
        category=category,
        agnostic=agnostic,
        one_colour_outfit=one_colour,
    )
