"""The learned path in the model repository: its models' names, which stage loads which, and
`fitroom models install CHECKPOINT --name NAME`.

The learned warp (services/warp/gmm.py) and try-on generator (services/fusion/tom.py) are
installed under the name of their weights, `warp_gmm-NAME` and `tryon_generator-NAME`, so that
a repository can hold several (a retailer's own, a research reference) and FITROOM_LEARNED=NAME
picks one. The learned try-off (services/warp/tryoff_net.py) is `tryoff_generator-NAME`, picked
by FITROOM_LEARNED_TRYOFF=NAME (its own setting: a retailer may train one and not the other).
Nothing is installed by default: the default path is the geometric one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from services.common.errors import ModelUnavailable
from services.common.model_repository import install_model
from services.fusion import tom
from services.warp import gmm


def warp_model(weights: str) -> str:
    return f"{gmm.NAME}-{weights}"


def tryon_model(weights: str) -> str:
    return f"{tom.NAME}-{weights}"


def tryoff_model(weights: str) -> str:
    from services.warp.tryoff_net import NAME  # not at the top: tryoff_net -> tryoff -> warp stage -> here

    return f"{NAME}-{weights}"


def learned_models(stage: str, weights: str | None) -> tuple[str, ...]:
    """The learned models a stage's worker loads (none without FITROOM_LEARNED)."""
    if not weights:
        return ()
    return {"warp": (warp_model(weights),), "fusion": (tryon_model(weights),)}.get(stage, ())


def unavailable(exc: ModelUnavailable, weights: str, setting: str = "FITROOM_LEARNED") -> ModelUnavailable:
    """The loader's error, with what makes the learned path's models exist."""
    return ModelUnavailable(
        f"{exc.message} ({setting}={weights} needs the learned path's weights installed: "
        f"`fitroom models install CHECKPOINT --name {weights}`, docs/TRAINING.md)"
    )


def install(checkpoint: Path, repository: Path, weights: str) -> list[str]:
    """Export the networks of a `fitroom train` checkpoint into the repository as TorchScript,
    with their config.pbtxt: a warp checkpoint gives warp_gmm-NAME, a try-on checkpoint (which
    carries its warp) both, a try-off checkpoint tryoff_generator-NAME. Returns the models' names."""
    from services.train import load_checkpoint, representation_of, tryon_input_of, warp_from_checkpoint
    from services.warp import tryoff_net

    state = load_checkpoint(checkpoint)
    if state["kind"] in ("warp", "tryon") and representation_of(state) != gmm.REPRESENTATION:
        raise ModelUnavailable(
            f"{checkpoint} was trained on person representation {representation_of(state)}; this Fitroom "
            f"draws version {gmm.REPRESENTATION} (services/warp/gmm.py): go on training it first, "
            f"`fitroom train {state['kind']} --resume {checkpoint} ...` (docs/TRAINING.md)"
        )
    if state["kind"] == "tryon" and tryon_input_of(state) != tom.INPUT:
        raise ModelUnavailable(
            f"{checkpoint} was trained on fused photos of input version {tryon_input_of(state)}; this Fitroom "
            f"gives version {tom.INPUT} (services/fusion/tom.py INPUT): go on training it first, "
            f"`fitroom train tryon --resume {checkpoint} ...` (docs/TRAINING.md)"
        )
    if state["kind"] == "tryoff" and state.get("net_version", 1) != tryoff_net.NET_VERSION:
        raise ModelUnavailable(
            f"{checkpoint} is a try-off of network version {state.get('net_version', 1)}; this Fitroom's is "
            f"version {tryoff_net.NET_VERSION} (services/warp/tryoff_net.py NET_VERSION, the shape prior): go on "
            f"training it first, `fitroom train tryoff --resume {checkpoint} ...` (docs/TRAINING.md)"
        )
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    networks: list[tuple[str, torch.nn.Module, object]] = []
    if state["kind"] == "tryoff":
        extractor = tryoff_net.TryoffGenerator()
        extractor.load_state_dict({k: v.float() for k, v in state["model"].items()})
        extractor.mirror_average = True  # served averaged with its mirror image (services.common.unet.mirror_mean)
        networks.append((tryoff_model(weights), extractor.eval(), tryoff_net))
    else:
        networks.append((warp_model(weights), warp_from_checkpoint(state), gmm))
    if state["kind"] == "tryon":
        generator = tom.TryonGenerator()
        generator.load_state_dict({k: v.float() for k, v in state["model"].items()})
        generator.mirror_average = True  # as the try-off; the warp is served in one pass (gmm.WarpGMM.forward)
        networks.append((tryon_model(weights), generator.eval(), tom))
    for name, network, module in networks:
        signature = dataclasses.replace(module.SIGNATURE, name=name)

        def export(path: Path, network: torch.nn.Module = network) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.jit.script(network).save(str(path))

        source = {
            "module": f"{module.__name__}",
            "checkpoint": digest,
            "trained_on": state.get("trained_on", ""),
            "samples": state.get("samples", 0),
        }
        install_model(repository, signature, source, export, force=True)
    return [name for name, _, _ in networks]
