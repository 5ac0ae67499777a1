"""Checkpoints: weights in safetensors plus JSON metadata. Nothing a user hands us is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from abd.utils import versions, write_json


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


def save_model(directory: str | Path, stem: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` (state dict) and ``<stem>.json`` (``meta``, architecture, versions)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / f"{stem}.safetensors"))
    meta = {"arch": getattr(model, "arch", None), **meta, "versions": versions()}
    write_json(d / f"{stem}.json", meta)
    return d / f"{stem}.safetensors"


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``, failing with one line that names the file: PyTorch's own message
    ends by advising ``weights_only=False``, which must never be done with a file one did not write."""
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # the restricted unpickler refuses code; truncated and corrupt files fail too
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split("weights_only")[0].rstrip(" .(,:") or type(e).__name__
        raise CheckpointError(f"refused to load {path}: not a file of plain tensors ({type(e).__name__}: "
                              f"{first}); abd never unpickles anything else") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or a foreign .pt/.pth with ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p} is not a valid safetensors file: {e}") from e
    obj = safe_torch_load(p)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path, allow_cast: bool = False) -> nn.Module:
    """Load weights into `model`, failing in one line on mismatching keys or shapes, on another dtype than
    the model's (unless `allow_cast`) and on non-finite values."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:5]))
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + " | ".join(parts))
    dtype = [f"{k}: {state[k].dtype} (model: {own[k].dtype})" for k in own if state[k].dtype != own[k].dtype]
    if dtype and not allow_cast:
        raise CheckpointError(f"{path} holds weights of another dtype ({'; '.join(dtype[:3])}): a silent cast "
                              "changes the model (convert the file, or load_weights(..., allow_cast=True))")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in {', '.join(bad[:5])}")
    model.load_state_dict(state)
    return model


def read_meta(directory: str | Path, stem: str) -> dict[str, Any]:
    """The JSON metadata written beside a checkpoint."""
    p = Path(directory) / f"{stem}.json"
    if not p.is_file():
        raise CheckpointError(f"metadata not found: {p} (expected {stem}.json beside {stem}.safetensors)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON: {e}") from e


def load_model(directory: str | Path, stem: str = "teacher") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from ``<stem>.json`` (a registered model, or a ``module:factory`` whose module the
    caller has imported: loading never imports code) and load ``<stem>.safetensors``."""
    from abd.models.foreign import ModelSpecError, build_model

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"not a checkpoint directory: {d} (expected {stem}.safetensors + {stem}.json)")
    meta = read_meta(d, stem)
    arch = dict(meta.get("arch") or {})
    if "name" not in arch:
        raise CheckpointError(f"{d / (stem + '.json')} has no 'arch' entry naming a registered model")
    try:
        model = build_model(arch)
    except ModelSpecError as e:
        raise CheckpointError(f"{d / (stem + '.json')}: {e}") from None
    load_weights(model, d / f"{stem}.safetensors")
    return model, meta


def import_teacher(weights: str | Path, model: str, dataset: str, out_dir: str | Path, output: int | str | None = None,
                   data_root: str | None = None, allow_cast: bool = False) -> Path:
    """A teacher folder in `out_dir` from a foreign weights file (safetensors, or a .pt/.pth state dict read
    with ``weights_only=True``) and its architecture: a registered model name or ``module:factory`` (called
    with whichever of num_classes, in_channels, image_size it takes); ``output`` names the logits in a tuple
    or dict output. The weights are checked (keys, shapes, dtype, finite) and so are the logits on a probe
    batch. An existing folder is reused only when it holds the same weights."""
    from abd.data import load_dataset
    from abd.models.foreign import ModelSpecError, build_model, check_logits

    ds = load_dataset(dataset, root=data_root)
    arch = {"name": model, "num_classes": ds.num_classes, "in_channels": ds.channels, "image_size": ds.image_size,
            **({"output": output} if output is not None else {})}
    try:
        net = build_model(arch, import_module=True)
        inner = net.model if hasattr(net, "output") and hasattr(net, "model") else net
        load_weights(inner, weights, allow_cast=allow_cast)
        check_logits(net, (ds.channels, ds.image_size, ds.image_size), ds.num_classes)
    except ModelSpecError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    net = net.float()
    out = Path(out_dir)
    if (out / "teacher.safetensors").is_file():
        old = load_file(str(out / "teacher.safetensors"))
        new = net.state_dict()
        if set(old) != set(new) or any(not torch.equal(old[k], new[k].cpu()) for k in old):
            raise CheckpointError(f"{out} already holds another teacher: choose another --out")
        return out
    save_model(out, "teacher", net, {"kind": "teacher", "dataset": dataset, "data_root": data_root,
                                     "trigger": "none", "eval_trigger": None, "imported_from": Path(weights).name})
    return out
