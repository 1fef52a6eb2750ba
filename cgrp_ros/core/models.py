"""Saving, finding and loading network weights (one .pt file per network)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .data import replaced_on_success
from .errors import ModelLoadError
from .networks import NETWORKS

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
STAGES = ("generator", "registration", "fusion")


def models_dir() -> Path:
    """Where the shipped weights are: $CGRP_MODELS, the repo's models/, or the ament share dir."""
    from .data import shipped_folder

    return Path(os.environ["CGRP_MODELS"]) if os.environ.get("CGRP_MODELS") else shipped_folder("models")


def default_model_path(stage: str) -> Path:
    return models_dir() / f"{stage}.pt"


def model_files(folder) -> dict:
    """{stage: path of folder/STAGE.pt} for every network (PipelineConfig's field names)."""
    return {stage: str(Path(folder) / f"{stage}.pt") for stage in STAGES}


def save_model(path, network: str, model: torch.nn.Module, config: dict, meta: dict) -> None:
    """Weights + the constructor arguments that rebuild the network + provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    meta = json.loads(json.dumps(meta, default=str))  # plain types only: loadable with weights_only
    with replaced_on_success(path) as tmp:  # an interrupted save leaves the shipped weights intact
        torch.save({"network": network, "config": config, "state_dict": state, "meta": meta}, tmp)


def load_model(path, network: str, new_modules: tuple = ()) -> torch.nn.Module:
    """Rebuild and load `network` from `path`; any problem raises ModelLoadError naming the file.

    `new_modules`: names of submodules the file may lack (weights saved before they existed, for
    training them): they keep their initial weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "file not found")
    try:
        blob = _read(path)
    except Exception as exc:
        raise ModelLoadError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("network") != network:
        found = blob.get("network") if isinstance(blob, dict) else type(blob).__name__
        raise ModelLoadError(path, f"holds '{found}', expected '{network}'")
    try:
        model = NETWORKS[network](**blob.get("config", {}))
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
        missing = [k for k in missing if k.split(".")[0] not in new_modules]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as exc:
        raise ModelLoadError(path, f"weights do not fit the {network} network ({exc})") from None
    return model.eval()


def model_file_problem(path, network: str) -> str | None:
    """Why `path` holds no usable `network` weights (ModelLoadError's reason), or None where it does."""
    try:
        load_model(path, network)
    except ModelLoadError as exc:
        return exc.reason
    return None


def model_config(path) -> dict:
    """The constructor arguments stored with the weights ({} if unreadable)."""
    try:
        return _read(path).get("config", {})
    except Exception:
        return {}


def model_meta(path) -> dict:
    try:
        return _read(path).get("meta", {})
    except Exception:
        return {}


def _read(path):
    # TorchVersion is a str subclass; files written before meta was sanitised contain it
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)
