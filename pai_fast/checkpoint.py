"""Checkpoints of dendritic models: safetensors plus the metadata that rebuilds the dendrite structure.

A pai_fast checkpoint is a safetensors file (the model's ``state_dict``) whose string metadata holds:

==========================  =========================================================================
``format``                  ``"pai_fast"``
``pai_fast.format_version`` ``"1"`` (files of a newer format are refused with a clear message)
``pai_fast.version``        the pai_fast version that wrote it (informational)
``pai_fast.dendrites``      JSON ``{module path: D}`` for every dendritic layer (DendriteMixin layers and any
                            module with ``num_dendrites`` and ``_set_num_dendrites``, e.g. the tracker's
                            generic ``DendriticModule``); ``""`` is the root module
``pai_fast.activations``    JSON ``{module path: activation name}`` (``"callable"`` for unnamed callables)
``pai_fast.channels``       JSON ``{module path: C}`` for generic wrappers that know their channel count
``pai_fast.aliases``        JSON ``{key: stored key}`` for tied tensors (stored once, see below)
``pai_fast.tracker_state``  JSON of the ``tracker_state`` argument (``null`` if none)
``pai_fast.extra_metadata`` JSON of the ``extra_metadata`` argument (``null`` if none)
``pai_fast.checksum``       ``sha256:<hex>`` over every other metadata entry and every tensor (sorted keys;
                            name, dtype, shape and raw bytes of each), verified on load
==========================  =========================================================================

Why each piece exists (measurements in shared/background/style-and-reliability.md §B.9):

* Dendrite counts: a layer's parameter shapes depend on D, so ``load_state_dict`` into a model with a
  different D fails; ``load_checkpoint`` first resizes every layer (``_set_num_dendrites``), outermost first
  (a generic wrapper's dendrites may hold dendritic layers themselves), then loads.
* Checksum: safetensors and ``torch.load`` return silently wrong tensors for ~99% of single flipped bytes.
* Atomic write: ``torch.save`` straight to the path left 21/25 files unloadable after ``kill -9`` during the
  save. Here: the file is written inside a uniquely named temp directory next to the target (safetensors'
  ``save_file`` adds a temp file of its own there), then ``fsync``, ``os.replace`` onto the target, ``fsync`` of
  the directory. Temp directories of killed saves (their pid is gone) are removed by the next save to that path.
* Tied tensors: safetensors refuses tensors that share storage; identical views are stored once under the
  first key (sorted) and re-created under every alias on load, partial overlaps are stored as copies.

A file written by perforatedai (keys with ``.main_module.``/``dendrites_to_top``, no pai_fast metadata) is
loaded through ``pai_fast.convert.from_perforatedai``; a ``torch.save`` zip is refused with a message.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ._atomic import _AtomicTarget, atomic_write
from ._version import __version__
from .activations import activation_name
from .nn._dendrites import DendriteMismatchError, DendriteMixin

__all__ = [
    "FORMAT_VERSION",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "atomic_write",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1

_FORMAT = "format"
_VERSION = "pai_fast.format_version"
_PAI_VERSION = "pai_fast.version"
_TORCH_VERSION = "pai_fast.torch_version"
_DENDRITES = "pai_fast.dendrites"
_ACTIVATIONS = "pai_fast.activations"
_CHANNELS = "pai_fast.channels"
_ALIASES = "pai_fast.aliases"
_TRACKER = "pai_fast.tracker_state"
_EXTRA = "pai_fast.extra_metadata"
_CHECKSUM = "pai_fast.checksum"
_REQUIRED = (_VERSION, _DENDRITES, _ALIASES, _CHECKSUM)
_MAX_LISTED = 20  # items per category in a mismatch message


class CheckpointError(Exception):
    """Base class of the checkpoint errors."""


class CheckpointCorruptError(CheckpointError):
    """The file is truncated, damaged or fails its checksum (the message names the file)."""


class CheckpointFormatError(CheckpointError):
    """The file is not a pai_fast checkpoint this version can read (another format, or a newer format)."""


class CheckpointMismatchError(CheckpointError, DendriteMismatchError):
    """The checkpoint does not fit the model (the message lists every difference)."""


# ---------------------------------------------------------------------------------------------------------------
# Model inspection


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose state dict is saved: without DataParallel/DDP/torch.compile wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
            model.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module
        ):
            model = model._modules["_orig_mod"]
        else:
            return model


def _is_dendritic(m: nn.Module) -> bool:
    # Checked on the type: generic wrappers forward unknown attributes to their main module.
    if isinstance(m, DendriteMixin):
        return True
    return callable(getattr(type(m), "_set_num_dendrites", None)) and hasattr(type(m), "num_dendrites")


def _dendritic_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if _is_dendritic(m)}


def _activation_of(m: nn.Module) -> str:
    if isinstance(m, DendriteMixin):
        return m.activation_name
    act = m.__dict__.get("activation", getattr(m, "_modules", {}).get("activation"))
    if act is None:
        return "unknown"
    try:
        name = activation_name(act)
    except (TypeError, ValueError):
        name = None
    return name or getattr(act, "__name__", "callable")


def _channels_of(m: nn.Module) -> int | None:
    c = m.__dict__.get("num_channels")
    return c if isinstance(c, int) and not isinstance(c, bool) else None


# ---------------------------------------------------------------------------------------------------------------
# JSON and checksum


def _to_jsonable(obj: Any, where: str) -> Any:
    """Plain JSON data; numpy/torch scalars become numbers, tensors/arrays lists, tuples lists."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be str to survive JSON, got {type(k).__name__} key {k!r}")
            out[k] = _to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, torch.Tensor):
        return _to_jsonable(obj.detach().cpu().tolist(), where)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist) and type(obj).__module__.startswith("numpy"):
        return _to_jsonable(tolist(), where)
    raise TypeError(
        f"{where}: expected JSON data (dict/list/str/int/float/bool/None, numpy or torch numbers), "
        f"got {type(obj).__name__}"
    )


def _dumps(obj: Any, where: str) -> str:
    return json.dumps(_to_jsonable(obj, where), allow_nan=True, separators=(",", ":"))


def _tensor_bytes(t: torch.Tensor):
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(torch.uint8).numpy()


def _digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    h = hashlib.sha256(b"pai_fast.checkpoint\n")

    def field(text: str) -> None:
        raw = text.encode()
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)

    for key in sorted(metadata):
        if key != _CHECKSUM:
            field(key)
            field(metadata[key])
    for key in sorted(tensors):
        t = tensors[key]
        field(key)
        field(str(t.dtype))
        field(",".join(str(s) for s in t.shape))
        data = _tensor_bytes(t.cpu())
        h.update(int(data.nbytes).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Save


def _prepare_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, storage-disjoint tensors (what safetensors accepts) and the aliases of tied ones."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"model: state dict entry {name!r} is a {type(t).__name__}, not a tensor (module extra state); "
                "pai_fast checkpoints store tensors only"
            )
        if t.layout != torch.strided:
            raise TypeError(f"model: state dict entry {name!r} is a {t.layout} tensor; only dense tensors are saved")
        if t.device.type == "meta":
            raise ValueError(f"model: state dict entry {name!r} is on the meta device (no data to save)")
        if t.numel() > 0:
            view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
        kept[name] = t
    users: dict[tuple, int] = {}
    for t in kept.values():
        if t.numel() > 0 and t.device.type == "cpu":
            key = (t.untyped_storage().data_ptr(),)
            users[key] = users.get(key, 0) + 1
    out: dict[str, torch.Tensor] = {}
    for name, t in kept.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")  # a fresh storage of its own
        elif t.numel() > 0 and users[(t.untyped_storage().data_ptr(),)] > 1:
            t = t.clone(memory_format=torch.contiguous_format)  # overlaps another tensor's storage
        if not t.is_contiguous():
            t = t.contiguous()
        out[name] = t
    return out, aliases


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tracker_state: dict | None = None,
    extra_metadata: dict | None = None,
) -> str:
    """Save ``model``'s state dict with its dendrite structure to ``path`` (safetensors), atomically.

    Args:
        model: the model (DataParallel/DDP/``torch.compile`` wrappers are unwrapped; the keys are the inner
            model's).
        path: the file; its directory must exist. Any extension (perforatedai uses ``.pt``).
        tracker_state: JSON data (str keys; tuples come back as lists) returned by ``load_checkpoint``.
        extra_metadata: more JSON data, returned by ``load_checkpoint`` under ``"extra_metadata"``.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    model = _unwrap(model)
    tensors, aliases = _prepare_tensors(model.state_dict())
    layers = _dendritic_layers(model)
    metadata = {
        _FORMAT: "pai_fast",
        _VERSION: str(FORMAT_VERSION),
        _PAI_VERSION: __version__,
        _TORCH_VERSION: torch.__version__,
        _DENDRITES: json.dumps({p: int(m.num_dendrites) for p, m in layers.items()}),
        _ACTIVATIONS: json.dumps({p: _activation_of(m) for p, m in layers.items()}),
        _CHANNELS: json.dumps({p: c for p, m in layers.items() if (c := _channels_of(m)) is not None}),
        _ALIASES: json.dumps(aliases),
        _TRACKER: _dumps(tracker_state, "tracker_state"),
        _EXTRA: _dumps(extra_metadata, "extra_metadata"),
    }
    metadata[_CHECKSUM] = _digest(tensors, metadata)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"path: the directory {directory!r} of {path!r} does not exist")
    with _AtomicTarget(path, private_dir=True) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Read


def _is_perforatedai_state(keys: Iterator[str] | list[str]) -> bool:
    return any(
        ".main_module." in k or k.startswith("main_module.") or "dendrites_to_top" in k or k == "tracker_string"
        for k in keys
    )


def _read_raw(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise CheckpointFormatError(
            f"{path!r} is a torch.save file, not a pai_fast checkpoint (safetensors). Load it with torch.load; for a "
            "perforatedai checkpoint saved with using_safe_tensors=False, load the pickled model with perforatedai "
            "installed and convert it with pai_fast.convert.from_perforatedai(model)"
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointCorruptError(
            f"{path!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); it is truncated, corrupt, "
            "or not a checkpoint"
        ) from exc
    return tensors, metadata


def _json_field(path: str, metadata: Mapping[str, str], key: str, default: Any) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except ValueError as exc:
        raise CheckpointCorruptError(f"{path!r}: metadata entry {key!r} is not valid JSON ({exc})") from exc


def _decode_metadata(path: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    raw_version = metadata[_VERSION]
    try:
        version = int(raw_version)
    except ValueError as exc:
        raise CheckpointCorruptError(f"{path!r}: format version {raw_version!r} is not an integer") from exc
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{path!r} was written by pai_fast {metadata.get(_PAI_VERSION, '?')} in checkpoint format {version}; "
            f"this pai_fast {__version__} reads formats up to {FORMAT_VERSION}: upgrade pai_fast"
        )
    out = {
        "path": path,
        "format": metadata.get(_FORMAT, "pai_fast"),
        "format_version": version,
        "pai_fast_version": metadata.get(_PAI_VERSION),
        "torch_version": metadata.get(_TORCH_VERSION),
        "dendrites": _json_field(path, metadata, _DENDRITES, {}),
        "activations": _json_field(path, metadata, _ACTIVATIONS, {}),
        "channels": _json_field(path, metadata, _CHANNELS, {}),
        "aliases": _json_field(path, metadata, _ALIASES, {}),
        "tracker_state": _json_field(path, metadata, _TRACKER, None),
        "extra_metadata": _json_field(path, metadata, _EXTRA, None),
        "checksum": metadata[_CHECKSUM],
    }
    for key in ("dendrites", "activations", "channels", "aliases"):
        if not isinstance(out[key], dict):
            raise CheckpointCorruptError(f"{path!r}: metadata {key!r} should be a JSON object, got {out[key]!r}")
    return out


def _resolve_map_location(map_location) -> torch.device | None:
    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        try:
            dev = torch.device(map_location)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"map_location: expected a device such as 'cpu' or 'cuda:0', got {map_location!r}"
            ) from exc
        if dev.type == "meta":
            raise ValueError("map_location: 'meta' holds no data; load onto a real device such as 'cpu'")
        return dev
    raise TypeError(
        "map_location: expected None, a device string or a torch.device (safetensors files record no device, "
        f"so a dict or a function has nothing to remap), got {type(map_location).__name__}"
    )


def _read_verified(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, metadata = _read_raw(path)
    if _VERSION not in metadata:
        ours = [k for k in metadata if k.startswith("pai_fast.")]
        if ours:  # our metadata with a damaged key: corruption, not a foreign file
            raise CheckpointCorruptError(f"{path!r}: pai_fast metadata is incomplete (have {sorted(ours)})")
        return tensors, metadata
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise CheckpointCorruptError(f"{path!r}: pai_fast metadata is missing {missing}")
    expected = metadata[_CHECKSUM]
    actual = _digest(tensors, metadata)
    if actual != expected:
        raise CheckpointCorruptError(
            f"{path!r} fails its checksum (stored {expected[:23]}..., computed {actual[:23]}...): the file was "
            "damaged after it was written (a changed byte); restore it from a copy"
        )
    return tensors, metadata


def read_checkpoint(path: str | os.PathLike, *, map_location=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified state dict (tied keys restored) and decoded metadata of a pai_fast checkpoint, no model needed.

    Raises CheckpointCorruptError (damaged file), CheckpointFormatError (not a pai_fast checkpoint, or a newer
    format), FileNotFoundError.
    """
    path = os.fspath(path)
    device = _resolve_map_location(map_location)
    tensors, metadata = _read_verified(path)
    if _VERSION not in metadata:
        hint = (
            "it looks like a perforatedai checkpoint: use load_checkpoint(model, path) or "
            "pai_fast.convert.from_perforatedai(path, model=YourModel())"
            if _is_perforatedai_state(list(tensors))
            else "load it with safetensors.torch.load_file and model.load_state_dict"
        )
        raise CheckpointFormatError(f"{path!r} is a safetensors file without pai_fast metadata; {hint}")
    info = _decode_metadata(path, metadata)
    return _expand(path, tensors, info["aliases"], device), info


def _expand(path: str, tensors: dict[str, torch.Tensor], aliases: Mapping[str, str], device) -> dict:
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointCorruptError(f"{path!r}: tied key {alias!r} refers to {target!r}, which is not stored")
        tensors[alias] = tensors[target]
    return tensors


# ---------------------------------------------------------------------------------------------------------------
# Load


def _depth(path: str) -> tuple[int, str]:
    return (path.count(".") + 1 if path else 0, path)


def _shape(t) -> list[int]:
    return list(t.shape)


class _Report:
    """The differences between a checkpoint and a model (after resizing the model's dendritic layers)."""

    def __init__(self) -> None:
        self.layers_missing: list[str] = []  # dendritic in the checkpoint, absent from the model
        self.not_dendritic: list[str] = []  # dendritic in the checkpoint, a plain module in the model
        self.layers_extra: list[str] = []  # dendritic in the model, not in the checkpoint
        self.activations: list[str] = []
        self.missing_keys: list[str] = []
        self.unexpected_keys: list[str] = []
        self.shapes: list[str] = []

    def fatal(self, strict: bool) -> bool:
        if self.shapes:
            return True
        return strict and any(
            (
                self.layers_missing,
                self.not_dendritic,
                self.layers_extra,
                self.activations,
                self.missing_keys,
                self.unexpected_keys,
            )
        )

    def message(self, path: str, strict: bool, hint: str = "") -> str:
        parts = []

        def listed(title: str, items: list[str]) -> None:
            if items:
                lines = [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:_MAX_LISTED]]
                if len(items) > _MAX_LISTED:
                    lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
                parts.extend(lines)

        if strict:
            listed("dendritic layers in the checkpoint, missing from the model", self.layers_missing)
            listed("dendritic layers in the checkpoint that are plain modules in the model", self.not_dendritic)
            listed("dendritic layers in the model, not in the checkpoint", self.layers_extra)
            listed("activations that differ", self.activations)
            listed("missing keys (in the model, not in the checkpoint)", self.missing_keys)
            listed("unexpected keys (in the checkpoint, not in the model)", self.unexpected_keys)
        listed("shape mismatches", self.shapes)
        tail = " (strict=False loads what matches; shapes must match in any case)" if strict else ""
        return f"checkpoint {path!r} does not match the model{tail}:\n" + "\n".join(parts) + hint


def _fit(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    dendrites: Mapping[str, int],
    activations: Mapping[str, str],
    channels: Mapping[str, int],
) -> _Report:
    """Resize ``model``'s dendritic layers to the checkpoint's counts; report what still differs."""
    report = _Report()
    for path in sorted(dendrites, key=_depth):
        d = int(dendrites[path])
        try:
            module = model.get_submodule(path)
        except AttributeError:
            report.layers_missing.append(f"{path!r} ({d} dendrites)")
            continue
        if not _is_dendritic(module):
            report.not_dendritic.append(f"{path!r} ({d} dendrites; the model has a {type(module).__name__})")
            continue
        c = channels.get(path)
        if c is not None and module.__dict__.get("num_channels", 0) is None and hasattr(module, "_learn_channels"):
            module._learn_channels(int(c))  # an unrun generic wrapper needs C before it can grow
        if module.num_dendrites != d:
            try:
                module._set_num_dendrites(d)
            except Exception as exc:
                raise CheckpointMismatchError(
                    f"layer {path!r}: could not resize it to the checkpoint's {d} dendrites: {exc}"
                ) from exc
    layers = _dendritic_layers(model)
    for path, module in layers.items():
        if path not in dendrites:
            report.layers_extra.append(repr(path))
            continue
        saved, have = activations.get(path), _activation_of(module)
        known = {"sigmoid", "tanh", "relu", "identity"}
        if saved in known and have in known and saved != have:
            report.activations.append(f"{path!r}: checkpoint {saved}, model {have}")
    own = model.state_dict()
    report.missing_keys = [k for k in own if k not in state]
    report.unexpected_keys = [k for k in state if k not in own]
    report.shapes = [
        f"{k!r}: checkpoint {_shape(state[k])}, model {_shape(own[k])}"
        for k in own
        if k in state and isinstance(own[k], torch.Tensor) and own[k].shape != state[k].shape
    ]
    return report


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A structural copy with every parameter and buffer on the meta device (no memory), or None if not copyable."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    try:
        return copy.deepcopy(model, memo)
    except Exception:
        return None


def _rng_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _apply(
    model: nn.Module,
    path: str,
    state: dict[str, torch.Tensor],
    dendrites: Mapping[str, int],
    activations: Mapping[str, str],
    channels: Mapping[str, int],
    strict: bool,
    hint: str = "",
) -> tuple[list[str], list[str]]:
    # Growing draws random numbers (also in the dry run, for layers built on the CPU): keep the caller's streams.
    with torch.random.fork_rng(devices=_rng_devices(model)):
        # Dry run on a meta copy first, so a mismatching checkpoint leaves the model untouched.
        dry = _meta_copy(model)
        if dry is not None:
            try:
                report = _fit(dry, state, dendrites, activations, channels)
            except Exception:
                report = None  # the real run below reports it
            if report is not None and report.fatal(strict):
                raise CheckpointMismatchError(report.message(path, strict, hint))
        report = _fit(model, state, dendrites, activations, channels)
    if report.fatal(strict):
        raise CheckpointMismatchError(report.message(path, strict, hint))
    own = model.state_dict()
    to_load = {k: v for k, v in state.items() if k in own} if not strict else state
    try:
        model.load_state_dict(to_load, strict=strict)
    except (RuntimeError, DendriteMismatchError) as exc:
        raise CheckpointMismatchError(f"checkpoint {path!r} does not match the model: {exc}") from exc
    return report.missing_keys, report.unexpected_keys


def _plain_template(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each pai_fast layer replaced by the torch layer it extends (for the converter)."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        if not isinstance(m, DendriteMixin):
            continue
        w = m.weight
        kw = {"device": w.device, "dtype": w.dtype}
        if isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features, m.bias is not None, **kw)
        else:
            base = next(c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(m, c))
            plain = base(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                m.bias is not None,
                m.padding_mode,
                **kw,
            )
        plain.train(m.training)
        memo[id(m)] = plain
    return copy.deepcopy(model, memo)


def _load_perforatedai(model: nn.Module, path: str, tensors: dict[str, torch.Tensor], device, strict: bool) -> dict:
    try:
        from .convert import from_perforatedai
    except ImportError:
        from_perforatedai = None
    if from_perforatedai is None:
        raise CheckpointFormatError(
            f"{path!r} is a perforatedai checkpoint (keys with '.main_module.'/'dendrites_to_top'), not a pai_fast "
            "one: convert it with pai_fast.convert.from_perforatedai(path, model=YourModel())"
        )
    tracker_text = None
    if "tracker_string" in tensors:
        raw = tensors["tracker_string"]
        try:
            tracker_text = bytes(raw.to(torch.uint8).flatten().tolist()).decode("utf-8", "replace")
        except Exception:
            tracker_text = None
    acts = {m.activation_name for m in model.modules() if isinstance(m, DendriteMixin)}
    activation = acts.pop() if len(acts) == 1 and next(iter(acts)) != "callable" else None
    converted = from_perforatedai(tensors, model=_plain_template(model), activation=activation, strict=strict)
    layers = _dendritic_layers(converted)
    state = converted.state_dict()
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    hint = (
        "\n  (a perforatedai checkpoint: a model without pai_fast layers is converted with "
        "model = pai_fast.convert.from_perforatedai(path, model=model))"
    )
    missing, unexpected = _apply(
        model,
        path,
        state,
        {p: int(m.num_dendrites) for p, m in layers.items()},
        {p: _activation_of(m) for p, m in layers.items()},
        {},
        strict,
        hint,
    )
    return {
        "path": path,
        "format": "perforatedai",
        "format_version": None,
        "pai_fast_version": None,
        "dendrites": {p: int(m.num_dendrites) for p, m in layers.items()},
        "activations": {p: _activation_of(m) for p, m in layers.items()},
        "tracker_state": None,
        "extra_metadata": None,
        "perforatedai_tracker_string": tracker_text,
        "missing_keys": missing,
        "unexpected_keys": unexpected,
    }


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, map_location=None, strict: bool = True) -> dict:
    """Load a checkpoint into ``model`` in place, first resizing its dendritic layers to the saved counts.

    Args:
        model: the model (same architecture as when saved; any dendrite counts).
        path: a file written by ``save_checkpoint`` (or by perforatedai's ``save_system``, converted through
            ``pai_fast.convert.from_perforatedai``).
        map_location: device the checkpoint tensors are staged on before they are copied into the model's own
            parameters (which stay where they are; new dendrites are created on their layer's device).
        strict: require the same layers and keys; ``False`` loads what matches. Shapes must match in both cases.

    Returns:
        The metadata: ``tracker_state``, ``extra_metadata``, ``dendrites``, ``activations``, ``format_version``,
        ``pai_fast_version``, ``missing_keys``, ``unexpected_keys``, ``path``.

    Raises:
        CheckpointCorruptError: truncated file or failed checksum (nothing in the model is changed).
        CheckpointMismatchError: the checkpoint does not fit the model; the message lists every difference.
        CheckpointFormatError: not a pai_fast checkpoint (e.g. ``torch.save`` output) or a newer format.

    Resized layers hold new Parameter objects: build the optimizer after loading.
    """
    path = os.fspath(path)
    device = _resolve_map_location(map_location)
    model = _unwrap(model)
    tensors, metadata = _read_verified(path)
    if _VERSION not in metadata:
        if _is_perforatedai_state(list(tensors)):
            return _load_perforatedai(model, path, tensors, device, strict)
        raise CheckpointFormatError(
            f"{path!r} is a safetensors file without pai_fast metadata; load it with safetensors.torch.load_file "
            "and model.load_state_dict"
        )
    info = _decode_metadata(path, metadata)
    state = _expand(path, tensors, info["aliases"], device)
    missing, unexpected = _apply(model, path, state, info["dendrites"], info["activations"], info["channels"], strict)
    info["missing_keys"] = missing
    info["unexpected_keys"] = unexpected
    return info
