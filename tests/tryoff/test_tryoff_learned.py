"""The learned try-off (services/warp/tryoff_net.py, `fitroom train tryoff`): its cache rows, a few
training steps on tiny drawn pairs that lower the loss, resuming, export to the model repository
(the installed network gives the eager network's output), the pipeline and the CLI with it, and
the clean error for weights that are not installed. No ../shared data: the pairs are the
astronaut wearing drawn tees (put on her by the try-on pipeline) and each tee's flat-lay."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from services import learned, train
from services.common.artifacts import LocalArtifactStore
from services.common.config import PROJECT_ROOT
from services.common.errors import ModelUnavailable
from services.common.imageio import encode_png
from services.common.inference import LocalBackend
from services.pipeline import Pipeline
from services.warp import tryoff, tryoff_net
from tests.learned.paired import write_paired_data

PAIRS = 6
STEPS = 12
BATCH = 2
SHAPE_STEPS = 20  # the shape prior's, alone, before the rest trains


@pytest.fixture(scope="module")
def paired_data(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray, repository: Path) -> Path:
    """VITON's layout: the astronaut (shifted, mirrored) wearing drawn tees of different colours,
    made by the geometric try-on, and each tee's flat-lay."""
    return write_paired_data(tmp_path_factory.mktemp("paired"), astronaut, repository, PAIRS, 1)


@pytest.fixture(scope="module")
def cache(paired_data: Path, tmp_path_factory: pytest.TempPathFactory) -> train.Cache:
    root = tmp_path_factory.mktemp("cache")
    return train.prepare(paired_data, root, "upper", workers=1, log=lambda _: None, tryoff=True)


def fixed_batch_loss(model: tryoff_net.TryoffGenerator, cache: train.Cache) -> float:
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready())
    with torch.no_grad():
        return float(train.tryoff_loss(model, batch, train.Weights(), None, None)[0])


def generator_of(checkpoint: Path) -> tryoff_net.TryoffGenerator:
    model = tryoff_net.TryoffGenerator()
    model.load_state_dict(train.load_checkpoint(checkpoint)["model"])
    return model.eval()


def test_prepare_adds_the_tryoff_rows_and_resumes(cache: train.Cache, paired_data: Path) -> None:
    assert list(cache.tryoff_ready()) == list(range(PAIRS))
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready())
    assert batch.flatlay.shape == batch.default.shape == (PAIRS, 4, 256, 192)
    # The answer: the drawn tee's mask from our garment analysis, fitted into the canvas less its margin.
    answer = batch.flatlay[:, 3]
    assert 0.3 < float(answer.mean()) < 0.8 and float(answer[:, :, : tryoff.MARGIN].max()) == 0.0
    # Our parse found the tee on every photo, and the default laid it flat.
    assert 0.05 < float(batch.worn.mean()) < 0.5 and float(batch.default[:, 3].mean()) > 0.3
    again = train.prepare(paired_data, cache.root, "upper", workers=1, log=pytest.fail, tryoff=True)
    assert list(again.tryoff_ready()) == list(range(PAIRS))


def test_rows_of_an_older_default_are_prepared_again(cache: train.Cache, paired_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    shutil.copytree(cache.root, root)
    # As if the rows had been prepared by an older default try-off: its output in them (wiped) and
    # its version beside them.
    np.load(root / "tryoff_default.npy", mmap_mode="r+")[:] = 0
    (root / "tryoff_version.json").write_text(json.dumps({"version": tryoff.VERSION - 1}))
    logged: list[str] = []
    again = train.prepare(paired_data, root, "upper", workers=1, log=logged.append, tryoff=True)
    assert any("preparing the try-off of 6 pairs" in line for line in logged)
    assert list(again.tryoff_ready()) == list(range(PAIRS))
    np.testing.assert_array_equal(
        np.asarray(again.tryoff["tryoff_default"]), np.asarray(cache.tryoff["tryoff_default"])
    )


def test_rows_held_on_the_device_are_the_cache_rows(cache: train.Cache) -> None:
    rows = cache.tryoff_ready()[[3, 1]]
    held = train.DeviceCache(cache, rows, torch.device("cpu"), loader=train.load_tryoff_batch)(rows)
    read = train.load_tryoff_batch(cache, rows)
    assert isinstance(held, train.TryoffBatch)
    for name in train.TryoffBatch.__dataclass_fields__:
        torch.testing.assert_close(getattr(held, name), getattr(read, name), atol=1 / 255, rtol=0)


def test_an_untrained_generator_lays_the_defaults_colours_filled_out_to_the_shape_priors_outline(
    cache: train.Cache,
) -> None:
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready())
    generator = tryoff_net.TryoffGenerator()
    train.train_shape_prior(
        generator.shape,
        cache,
        cache.tryoff_ready(),
        train.Run("tryoff", cache, Path("x"), set(), shape_steps=0),
        torch.device("cpu"),
        lambda _: None,
    )
    with torch.no_grad():
        out = generator(batch.person, batch.worn, batch.default)
        prior = generator.shape(torch.cat([batch.person, batch.worn, batch.default], dim=1))
    inside = batch.default[:, 3:4].expand(-1, 3, -1, -1) > 0.5
    torch.testing.assert_close(out[:, :3][inside], batch.default[:, :3][inside])
    for image, default in zip(out[:, :3], batch.default, strict=True):  # outside the default's mask: its mean
        outside = default[3] <= 0.5
        mean = (default[:3] * default[3]).sum((1, 2)) / default[3].sum()
        torch.testing.assert_close(image[:, outside], mean[:, None].expand(-1, int(outside.sum())))
    assert torch.equal(out[:, 3:4] > 0.5, prior > 0.5)
    assert 0.2 < float((prior > 0.5).float().mean()) < 0.8  # started at the flat-lays' own outlines


def test_the_shape_prior_learns_the_flat_lays_outline(cache: train.Cache) -> None:
    """It starts at k-means outlines of the training flat-lays' masks (far from a prior of 0.5
    everywhere, BCE 0.69), and trained alone (as `fitroom train tryoff` does first where the
    prior is new) its BCE against them falls further. The drawn tees all have one outline, so
    the start is already close."""
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready())
    inputs = torch.cat([batch.person, batch.worn, batch.default], dim=1)

    def bce(steps: int) -> float:
        prior = tryoff_net.ShapePrior()
        run = train.Run("tryoff", cache, Path("x"), set(), shape_steps=steps)
        train.train_shape_prior(prior, cache, cache.tryoff_ready(), run, torch.device("cpu"), lambda _: None)
        with torch.no_grad():
            return float(
                torch.nn.functional.binary_cross_entropy(prior(inputs).clamp(1e-4, 1 - 1e-4), batch.flatlay[:, 3:4])
            )

    start = bce(0)
    assert start < 0.1 and bce(30) < start


@pytest.fixture(scope="module")
def checkpoint(cache: train.Cache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tryoff") / "tryoff.pt"
    weights = train.Weights(perceptual=0.0)  # the adversarial term stays: every other loss runs
    run = train.Run(
        "tryoff",
        cache,
        path,
        set(),
        max_steps=STEPS,
        batch_size=BATCH,
        lr=3e-3,
        weights=weights,
        shape_steps=SHAPE_STEPS,
    )
    train.train(run, log=lambda _: None)
    return path


def test_training_lowers_the_loss(cache: train.Cache, checkpoint: Path) -> None:
    before = fixed_batch_loss(tryoff_net.TryoffGenerator(), cache)
    # 12 steps of 2 pairs: 1.78 -> 1.47 (mostly the mask's BCE, which starts at the default's outline)
    assert fixed_batch_loss(generator_of(checkpoint), cache) < 0.9 * before
    state = train.load_checkpoint(checkpoint)
    assert state["kind"] == "tryoff" and state["step"] == STEPS and "warp" not in state
    assert "discriminator" in state


def test_resume_goes_on_from_the_checkpoint(cache: train.Cache, checkpoint: Path, tmp_path: Path) -> None:
    saved = train.load_checkpoint(checkpoint)
    resumed = tmp_path / "resumed.pt"
    run = train.Run("tryoff", cache, resumed, set(), max_steps=STEPS, batch_size=BATCH, resume=checkpoint)
    state = train.train(run, log=lambda _: None)  # already there: nothing more to do
    for name, value in saved["model"].items():
        assert torch.equal(state["model"][name], value), name
    run = train.Run("tryoff", cache, resumed, set(), max_steps=STEPS + 2, batch_size=BATCH, resume=checkpoint)
    state = train.train(run, log=lambda _: None)
    assert state["step"] == STEPS + 2 and state["samples"] == saved["samples"] + 2 * BATCH
    assert len(state["curve"]) == len(saved["curve"]) + 1
    # Weights only, in fp16 (as weights/research/viton/tryoff.pt): fresh optimisers, the same step count.
    light = {k: v for k, v in saved.items() if k not in ("optimiser", "d_optimiser")}
    light["model"] = {k: v.half() for k, v in saved["model"].items()}
    light_path = tmp_path / "light.pt"
    torch.save(light, light_path)
    run = train.Run("tryoff", cache, resumed, set(), max_steps=STEPS + 1, batch_size=BATCH, resume=light_path)
    assert train.train(run, log=lambda _: None)["step"] == STEPS + 1
    with pytest.raises(ValueError, match="not warp"):
        train.train(train.Run("warp", cache, tmp_path / "x.pt", set(), resume=checkpoint), log=lambda _: None)


def test_a_tryoff_from_before_the_shape_prior_goes_on_with_one(
    cache: train.Cache, checkpoint: Path, tmp_path: Path
) -> None:
    """A NET_VERSION 1 checkpoint (no prior; the U-Net's alpha a residual over the default's
    mask) is refused at install. In training its U-Net goes on with the prior's input channel at
    zero and its mask residual at zero, after the prior has trained alone."""
    saved = train.load_checkpoint(checkpoint)
    old = {k: v for k, v in saved["model"].items() if not k.startswith("shape.")}
    first = "unet.down.0.layers.0.weight"
    old[first] = old[first][:, : tryoff_net.IN_CHANNELS]
    older = {k: v for k, v in saved.items() if k not in ("net_version", "optimiser")} | {"model": old}
    torch.save(older, tmp_path / "v1.pt")
    with pytest.raises(ModelUnavailable, match=r"network version 1; .*fitroom train tryoff --resume"):
        learned.install(tmp_path / "v1.pt", tmp_path / "models", "old")  # served, it would lack its prior
    logged: list[str] = []
    run = train.Run(
        "tryoff",
        cache,
        tmp_path / "v2.pt",
        set(),
        max_steps=STEPS,
        resume=tmp_path / "v1.pt",
        shape_steps=5,
        batch_size=BATCH,
    )
    state = train.train(run, log=logged.append)  # no step more: the prior alone
    assert state["net_version"] == tryoff_net.NET_VERSION and any("before the shape prior" in line for line in logged)
    assert torch.equal(state["model"][first][:, : tryoff_net.IN_CHANNELS], old[first])
    assert not state["model"][first][:, tryoff_net.IN_CHANNELS :].any()
    assert not state["model"]["unet.head.weight"][3].any() and float(state["model"]["unet.head.bias"][3]) == 0.0
    assert not torch.equal(state["model"]["shape.outlines"], saved["model"]["shape.outlines"])


def test_a_cache_without_tryoff_rows_is_refused(paired_data: Path, cache: train.Cache, tmp_path: Path) -> None:
    plain = train.Cache(cache.root)
    plain.tryoff_status = None
    with pytest.raises(ValueError, match="no try-off rows"):
        train.train(train.Run("tryoff", plain, tmp_path / "x.pt", set(), max_steps=1), log=lambda _: None)


@pytest.fixture(scope="module")
def installed(checkpoint: Path, repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built repository with the briefly trained try-off installed as `test`."""
    target = tmp_path_factory.mktemp("models") / "triton_models"
    shutil.copytree(repository, target, ignore=shutil.ignore_patterns("warp_gmm-*", "tryon_generator-*", "tryoff_*"))
    assert learned.install(checkpoint, target, "test") == ["tryoff_generator-test"]
    return target


def test_the_installed_network_gives_the_eager_output(installed: Path, checkpoint: Path, cache: train.Cache) -> None:
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready()[:1])
    inputs = {
        "photo__0": batch.person.numpy(),
        "worn__1": batch.worn.numpy(),
        "default__2": batch.default.numpy(),
    }
    generator = generator_of(checkpoint)
    generator.mirror_average = True  # as installed: averaged with its mirror image
    with torch.no_grad():
        eager = generator(batch.person, batch.worn, batch.default).numpy()
    served = LocalBackend(installed)("tryoff_generator-test", inputs)["flatlay__0"]
    assert served.shape == (1, 4, 256, 192)
    np.testing.assert_allclose(served, eager, atol=1e-5)
    source = json.loads((installed / "tryoff_generator-test" / "1" / "source.json").read_text())
    assert source["module"] == "services.warp.tryoff_net" and source["samples"] == STEPS * BATCH


def test_the_pipeline_runs_the_learned_tryoff(installed: Path, checkpoint: Path, paired_data: Path) -> None:
    photo = np.array(Image.open(paired_data / "train" / "image" / "000000_0.png").convert("RGB"))
    photo = cv2.resize(photo, (384, 512), interpolation=cv2.INTER_CUBIC)  # served at another size than trained
    infer = LocalBackend(installed)
    pipeline = Pipeline(LocalArtifactStore(paired_data / "artifacts"), infer, learned_tryoff="test")
    result = pipeline.tryoff(photo, "upper")
    assert result.rgba.shape == (512, 384, 4) and result.category == "upper"
    # It is the network's answer at the training size, averaged with its answer to the mirrored
    # inputs (mirrored back), scaled onto the photo-sized canvas.
    pose, parse = pipeline.person(photo)
    small, small_pose, small_parse = tryoff_net.at_training_size(photo, pose, parse)
    default, _ = tryoff_net.default_aligned(small, small_pose, small_parse, "upper")
    inputs = [torch.from_numpy(v) for v in tryoff_net.inputs(small, small_parse.labels, default, "upper").values()]
    with torch.no_grad():
        generator = generator_of(checkpoint)
        eager = ((generator(*inputs) + generator(*(x.flip(-1) for x in inputs)).flip(-1)) / 2)[0].numpy()
    expected = cv2.resize(eager.transpose(1, 2, 0), (384, 512), interpolation=cv2.INTER_LINEAR)
    alpha = result.rgba[..., 3].astype(np.float32) / 255.0
    assert np.abs(alpha - np.where(expected[..., 3] < 1 / 255, 0, expected[..., 3])).max() < 0.01
    inside = alpha > 0.5
    assert inside.mean() > 0.2
    assert np.abs(result.rgba[..., :3][inside] / 255.0 - expected[..., :3][inside]).max() < 0.01
    assert (result.rgba[..., :3][alpha == 0] == 255).all()  # white where there is no garment
    # The default path, without the setting, is another image.
    assert not np.array_equal(Pipeline(pipeline.store, infer).tryoff(photo, "upper").rgba, result.rgba)


def test_weights_not_installed_are_a_clean_error(
    repository: Path, paired_data: Path, tmp_path: Path, installed: Path
) -> None:
    photo = np.array(Image.open(paired_data / "train" / "image" / "000000_0.png").convert("RGB"))
    pipeline = Pipeline(LocalArtifactStore(tmp_path / "artifacts"), LocalBackend(installed), learned_tryoff="nope")
    with pytest.raises(ModelUnavailable, match=r"FITROOM_LEARNED_TRYOFF=nope .*fitroom models install CHECKPOINT"):
        pipeline.tryoff(photo, "upper")
    # The CLI: exit 4 (no models) with the same words, no traceback.
    env = {
        "FITROOM_DATA_DIR": str(tmp_path / "data"),
        "FITROOM_MODEL_REPOSITORY": str(installed),
        "PATH": "/usr/bin:/bin",
    }
    (tmp_path / "model.png").write_bytes(encode_png(photo))
    command = [sys.executable, "-m", "services.cli", "tryoff", "--person", str(tmp_path / "model.png")]
    ran = subprocess.run(
        [*command, "-o", str(tmp_path / "tee.png"), "--learned", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert ran.returncode == 4, ran.stderr
    assert "fitroom models install CHECKPOINT --name nope" in ran.stderr and "Traceback" not in ran.stderr
    ran = subprocess.run(
        [*command, "-o", str(tmp_path / "tee.png")],
        capture_output=True,
        text=True,
        env={**env, "FITROOM_LEARNED_TRYOFF": "test"},
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["path"] == "learned:test"


def test_scores_are_the_benchmarks(cache: train.Cache) -> None:
    """tryoff.grey_ssim is skimage's structural_similarity as bench/tryoff_quality.py called it;
    the network's size is training's."""
    assert tryoff_net.SIZE == train.TRAIN_SIZE == tryoff.CANVAS
    batch = train.load_tryoff_batch(cache, cache.tryoff_ready()[:2])
    a, b = ((x[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for x in batch.default)
    grey_a, grey_b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    expected = structural_similarity(
        grey_a, grey_b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert tryoff.grey_ssim(a, b) == pytest.approx(expected, abs=1e-9)
    assert tryoff.scores(tryoff.aligned(a, a[..., 0] < 250), tryoff.aligned(a, a[..., 0] < 250)) == (1.0, 1.0)


def test_the_api_registers_a_model_photo_through_the_learned_tryoff(
    installed: Path, paired_data: Path, tmp_path: Path
) -> None:
    """POST /v1/garments with photo_type model on a server with FITROOM_LEARNED_TRYOFF: the
    flat-lay registered and served is the learned try-off's."""
    from tests.gateway.helpers import Server

    photo_png = (paired_data / "train" / "image" / "000002_0.png").read_bytes()
    photo = np.array(Image.open(paired_data / "train" / "image" / "000002_0.png").convert("RGB"))
    expected = Pipeline(LocalArtifactStore(tmp_path / "local"), LocalBackend(installed), learned_tryoff="test")
    expected_rgba = expected.tryoff(photo, "upper").rgba
    server = Server(
        tmp_path / "gateway", {"FITROOM_MODEL_REPOSITORY": str(installed), "FITROOM_LEARNED_TRYOFF": "test"}
    )
    server.start()
    try:
        key = server.create_key("acme")
        with server.client(key) as client:
            created = client.post(
                "/v1/garments",
                files={"image": ("model.png", photo_png, "image/png")},
                data={"photo_type": "model", "category": "upper"},
            )
            assert created.status_code == 201, created.text
            served = client.get(f"/v1/garments/{created.json()['id']}/image")
    finally:
        server.stop()
    flatlay = np.array(Image.open(io.BytesIO(served.content)))
    assert flatlay.shape == expected_rgba.shape
    # The same network in another process: bf16 rounding moves the colours under a faint alpha
    # (a shape prior's soft edge) by a few levels, which on white are invisible.
    assert np.abs(flatlay[..., 3].astype(int) - expected_rgba[..., 3].astype(int)).max() <= 2
    garment = expected_rgba[..., 3] >= 128
    assert garment.mean() > 0.1
    assert np.abs(flatlay[garment].astype(int) - expected_rgba[garment].astype(int)).max() <= 3
    on_white = lambda rgba: rgba[..., :3] * (rgba[..., 3:] / 255.0) + 255.0 * (1 - rgba[..., 3:] / 255.0)  # noqa: E731
    assert np.abs(on_white(flatlay) - on_white(expected_rgba)).max() <= 5


def test_cli_train_tryoff_and_install(paired_data: Path, cache: train.Cache, installed: Path, tmp_path: Path) -> None:
    """`fitroom train tryoff` on the prepared cache (a few seconds), then `fitroom models install`
    names the try-off's own setting."""
    repository = tmp_path / "models"
    shutil.copytree(installed, repository)
    env = {"FITROOM_DATA_DIR": str(tmp_path / "data"), "FITROOM_MODEL_REPOSITORY": str(repository)}
    env["PATH"] = "/usr/bin:/bin"

    def fitroom(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)

    checkpoint = tmp_path / "cli.pt"
    trained = fitroom(
        "train", "tryoff", "--data", str(paired_data), "--cache", str(cache.root), "--category", "upper",
        "--max-minutes", "0.02", "--batch-size", "2", "--perceptual", "0", "--trained-on", "drawn tees",
        "--shape-steps", "5", "-o", str(checkpoint),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    record = json.loads(trained.stdout)
    assert record["kind"] == "tryoff" and record["samples"] >= 2
    assert train.load_checkpoint(checkpoint)["trained_on"] == "drawn tees"
    done = fitroom("models", "install", str(checkpoint), "--name", "cli")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["installed"] == ["tryoff_generator-cli"]
    assert json.loads(done.stdout)["use"] == "FITROOM_LEARNED_TRYOFF=cli"
    assert (repository / "tryoff_generator-cli" / "config.pbtxt").is_file()


def test_a_packed_cache_carries_its_tryoff_rows(cache: train.Cache, tmp_path: Path) -> None:
    """bench/train_on_device.py: the try-off's rows travel with a packed cache (JPEG q85, PNG), so
    that `fitroom train tryoff` on a GPU machine prepares nothing there."""
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    import train_on_device

    val = tmp_path / "val.txt"
    val.write_text(f"{cache.ids[0]}_0.png {cache.ids[0]}_1.png\n")
    train_on_device.pack(cache.root, val, tmp_path / "pack", max_mb=10.0, parts=1)
    train_on_device.unpack([tmp_path / "pack" / "1"], tmp_path / "data", tmp_path / "cache")
    unpacked = train.Cache(tmp_path / "cache")
    assert len(unpacked.tryoff_ready()) == PAIRS
    for n, pair in enumerate(unpacked.ids):
        row = cache.ids.index(pair)
        for name in ("flatlay", "tryoff_default"):
            ours, theirs = unpacked.tryoff[name][n].astype(int), cache.tryoff[name][row].astype(int)
            np.testing.assert_array_equal(ours[..., 3], theirs[..., 3])  # PNG: exact
            assert np.abs(ours[..., :3] - theirs[..., :3]).mean() < 4  # JPEG q85, of 255
