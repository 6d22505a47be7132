"""Convert models and checkpoints of the real perforatedai package (3.2.9) to pai_fast layers, and back.

perforatedai wraps each layer f in a ``PAINeuronModule`` (spec §2.1) that computes (spec §2.3)

    y = f(x) + sum_i w_i * act(h_i(x) + sum_{j<i} b_{i,j} * a_j)

with ``h_i = dendrite_module.layers[i]`` (full copies of f), ``w_i = dendrites_to_top[-1][i]`` (only the
last, live entry of that ParameterList is read; older entries are frozen stale copies) and
``b_{i,j} = dendrite_module.dendrites_to_dendrites[i][j]`` (entry 0 is an empty placeholder). A pai_fast
``DendriticLinear`` / ``DendriticConvNd`` holds the same numbers in four tensors:

    weight, bias            <- main_module.weight, main_module.bias
    dendrite_weight[i]      <- dendrite_module.layers[i].weight        (dendrite_bias likewise)
    dendrite_gate           <- dendrites_to_top[-1]                    [D, C]
    dendrite_cascade[i, :i] <- dendrite_module.dendrites_to_dendrites[i]  [i, C]

and ``act`` is perforatedai's global ``pai_forward_function`` (its forward reads the global config, not the
per-module copy). ``TrackedNeuronModule`` wrappers are pass-throughs and become their ``main_module``.

Two entry points:

* ``from_perforatedai(wrapped_model)``: a model wrapped by ``perforatedai.utils_perforatedai.perforate_model``
  (live, with its dendrites). Returns a deep copy of the model with every wrapper replaced; the input is not
  modified. Parameters shared between modules (weight tying) stay shared in the copy.
* ``from_perforatedai(path_or_state_dict, model=unwrapped_instance)``: a checkpoint written by
  ``save_system``/``save_net`` (a safetensors file, usually with a ``.pt`` extension, spec §6.2) plus an
  instance of the user's model class *before* ``perforate_model``. The wrapped layers are found from the
  ``{path}.dendrite_module.num_cycles`` keys (D = num_cycles / 2) and every other key has its
  ``.main_module.`` wrapper infix removed. perforatedai itself is not needed for this path.

``to_perforatedai_state_dict(model)`` goes the other way: the state-dict keys perforatedai's ``load_system``
expects, for loading a pai_fast model into ``perforate_model(user_model)``.

Not converted (a ``PerforatedAIConversionError`` names the module path): wrapped modules other than
``nn.Linear`` / ``nn.Conv1d/2d/3d`` (e.g. ``PAISequential([Conv2d, BatchNorm2d])`` blocks, whose dendrites are
copies of the whole block, LSTM/GRU with processors); a ``PAISequential`` holding exactly one such layer is
converted. Also not converted: modules with a processor, custom dendrite factories that change the layer's
hyper-parameters, node dimensions other than the output channel (``set_this_output_dimensions`` with the 0
anywhere but the channel dim), pickled whole-module checkpoints (``using_safe_tensors=False``), the old
camelCase ``pb_*`` checkpoints, and "clean" checkpoints written by ``prepare_final_model``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .activations import ActivationLike, activation_name
from .nn import DendriteMixin, DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear

__all__ = ["PerforatedAIConversionError", "from_perforatedai", "to_perforatedai_state_dict"]

# Exact torch layer type -> pai_fast class. Subclasses of these are accepted only if they keep the forward.
_DENDRITIC: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: DendriticLinear,
    nn.Conv1d: DendriticConv1d,
    nn.Conv2d: DendriticConv2d,
    nn.Conv3d: DendriticConv3d,
}
_PAI_WRAPPER = "PAINeuronModule"
_TRACKED_WRAPPER = "TrackedNeuronModule"
_NUM_CYCLES = "dendrite_module.num_cycles"
_SUPPORTED_TEXT = "nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d (or a PAISequential holding exactly one of them)"


class PerforatedAIConversionError(ValueError):
    """A perforatedai model or checkpoint holds something pai_fast cannot represent (the message says where)."""


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the root module"


def _is_pai_wrapper(m: nn.Module) -> bool:
    return type(m).__name__ == _PAI_WRAPPER and hasattr(m, "main_module") and hasattr(m, "dendrite_module")


def _is_tracked_wrapper(m: nn.Module) -> bool:
    return type(m).__name__ == _TRACKED_WRAPPER and hasattr(m, "main_module")


def _dendritic_class(m: nn.Module) -> type[nn.Module] | None:
    for base, cls in _DENDRITIC.items():
        # A subclass with its own forward computes something else: refuse it rather than guess.
        if isinstance(m, base) and not isinstance(m, DendriteMixin) and type(m).forward is base.forward:
            return cls
    return None


def _leaf(path: str, m: nn.Module) -> nn.Module:
    """The Linear/ConvNd that ``m`` is, or that a one-layer PAISequential/nn.Sequential around it holds."""
    seen = m
    while _dendritic_class(m) is None:
        if type(m).__name__ == "PAISequential" or type(m) is nn.Sequential:
            children = list(m.children())
            if len(children) == 1:
                m = children[0]
                continue
        raise PerforatedAIConversionError(
            f"{_where(path)}: perforatedai wraps a {type(seen).__name__} here; pai_fast converts wrapped "
            f"{_SUPPORTED_TEXT}. Dendrites of other modules (multi-layer PAISequential blocks such as "
            "[Conv2d, BatchNorm2d], recurrent layers with processors) have no pai_fast equivalent: leave such "
            "modules unwrapped (perforatedai's module_names_to_perforate) or convert them by hand"
        )
    return m


def _hyper(m: nn.Module) -> tuple:
    if isinstance(m, nn.Linear):
        return (type(m), m.in_features, m.out_features, m.bias is not None)
    return (
        type(m),
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        m.groups,
        m.bias is not None,
        m.padding_mode,
    )


def _check_node_dims(path: str, leaf: nn.Module, dims: list[int] | None) -> None:
    """pai_fast gates per output channel: the node dim must be the Linear's last / the conv's channel dim."""
    if dims is None:
        return
    zeros = [i for i, v in enumerate(dims) if v == 0]
    nd = 0 if isinstance(leaf, nn.Linear) else leaf.weight.dim() - 2
    want = "the last dim" if nd == 0 else f"the channel dim ({nd + 1} dims from the end)"
    if len(zeros) != 1 or len(dims) - zeros[0] != nd + 1:
        raise PerforatedAIConversionError(
            f"{_where(path)}: its this_output_dimensions is {dims}; pai_fast gates dendrites per output channel of "
            f"the {type(leaf).__name__}, so the node dim (the single 0) must be {want}"
        )


def _global_forward_function() -> Any:
    gpa = sys.modules.get("perforatedai.globals_perforatedai")
    pc = getattr(gpa, "pc", None)
    getter = getattr(pc, "get_pai_forward_function", None)
    return getter() if callable(getter) else None


def _resolve_activation(activation: ActivationLike | None, found: Any) -> ActivationLike:
    act = activation if activation is not None else (found if found is not None else "sigmoid")
    name = activation_name(act)  # validates; torch.sigmoid & co. become their names (fused kernels)
    return name if name is not None else act


def _as_param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().to(device=like.device, dtype=like.dtype).clone())


def _build_layer(
    path: str,
    main: nn.Module,
    layers: list[nn.Module],
    tops: list[torch.Tensor],
    cascades: list[torch.Tensor],
    dims: list[int] | None,
    activation: ActivationLike,
    memo: dict | None,
) -> nn.Module:
    """One pai_fast layer from the parts of a PAINeuronModule (see the module docstring for the mapping)."""
    leaf = _leaf(path, main)
    cls = _dendritic_class(leaf)
    _check_node_dims(path, leaf, dims)
    d = len(layers)
    dleaves = []
    for i, layer in enumerate(layers):
        dpath = f"{path}.dendrite_module.layers.{i}"
        dl = _leaf(dpath, layer)
        if _hyper(dl) != _hyper(leaf) or dl.weight.shape != leaf.weight.shape:
            raise PerforatedAIConversionError(
                f"{_where(dpath)}: dendrite {i} is {dl!r} but the wrapped layer is {leaf!r}; pai_fast dendrites are "
                "copies of the layer (a custom set_create_dendrite factory cannot be converted)"
            )
        dleaves.append(dl)
    new = cls.from_module(leaf, activation=activation)
    if memo is not None:
        # Through the deepcopy memo, so a parameter shared with another module stays shared in the copy.
        new.weight = copy.deepcopy(leaf.weight, memo)
        if leaf.bias is not None:
            new.bias = copy.deepcopy(leaf.bias, memo)
    ref = new.weight
    n = ref.shape[0]
    if d:
        if not tops:
            raise PerforatedAIConversionError(f"{_where(path)}: {d} dendrites but no dendrites_to_top entry")
        gate = tops[-1]
        if tuple(gate.shape) != (d, n):
            raise PerforatedAIConversionError(
                f"{_where(path)}: dendrites_to_top[-1] (the live output weights): expected shape [{d}, {n}] "
                f"for {d} dendrites and {n} output channels, got {list(gate.shape)}"
            )
        cascade = torch.zeros((d, d, n), dtype=ref.dtype, device=ref.device)
        for i in range(1, d):
            if i >= len(cascades) or tuple(cascades[i].shape) != (i, n):
                got = list(cascades[i].shape) if i < len(cascades) else "nothing"
                raise PerforatedAIConversionError(
                    f"{_where(path)}: dendrite_module.dendrites_to_dendrites[{i}]: expected shape [{i}, {n}], got {got}"
                )
            cascade[i, :i] = cascades[i].detach().to(cascade)
        with torch.no_grad():
            new.dendrite_weight = _as_param(torch.stack([dl.weight for dl in dleaves]), ref)
            if leaf.bias is not None:
                new.dendrite_bias = _as_param(torch.stack([dl.bias for dl in dleaves]), ref)
            new.dendrite_gate = _as_param(gate, ref)
            new.dendrite_cascade = nn.Parameter(cascade)
    new.train(main.training)
    return new


def _dims_list(t: Any) -> list[int] | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.flatten().tolist()]
    return [int(v) for v in t]


# ----------------------------------------------------------------------------------------------------------------
# Live wrapped models


def _collect_live(m: nn.Module, path: str, memo: dict, activation: ActivationLike, visited: set[int]) -> None:
    """Post-order walk: put the replacement of every wrapper into ``memo`` (deepcopy then substitutes it)."""
    if id(m) in visited:
        return
    visited.add(id(m))
    if _is_pai_wrapper(m):
        if getattr(m, "processor", None) is not None:
            raise PerforatedAIConversionError(
                f"{_where(path)}: has a processor ({type(m.processor).__name__}); modules with processors cannot "
                "be converted"
            )
        dm = m.dendrite_module
        memo[id(m)] = _build_layer(
            path,
            m.main_module,
            list(dm.layers),
            list(m.dendrites_to_top),
            list(getattr(dm, "dendrites_to_dendrites", [])),
            _dims_list(getattr(m, "this_output_dimensions", None)),
            activation,
            memo,
        )
        return
    if _is_tracked_wrapper(m):
        _collect_live(m.main_module, path, memo, activation, visited)
        memo[id(m)] = copy.deepcopy(m.main_module, memo)
        return
    for name, child in m._modules.items():
        if child is not None:
            _collect_live(child, f"{path}.{name}" if path else name, memo, activation, visited)


def _strip_root(new: nn.Module) -> nn.Module:
    # perforatedai's bookkeeping on the root: the serialized tracker and a copy of its variables.
    new._buffers.pop("tracker_string", None)
    new._non_persistent_buffers_set.discard("tracker_string")
    new.__dict__.pop("member_vars", None)
    return new


def _from_live(model: nn.Module, activation: ActivationLike | None) -> nn.Module:
    act = _resolve_activation(activation, _global_forward_function())
    memo: dict = {}
    _collect_live(model, "", memo, act, set())
    return _strip_root(copy.deepcopy(model, memo))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        sd = load_file(os.fspath(path), device="cpu")
        with safe_open(os.fspath(path), "pt") as f:
            metadata = f.metadata() or {}
        # weight_tying_experimental stores a tied tensor once, with {"dropped key": "kept key"} in the metadata.
        for dst, src in json.loads(metadata.get("weight_tying", "{}")).items():
            if dst not in sd and src in sd:
                sd[dst] = sd[src]
        return sd
    except (SafetensorError, OSError) as err:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_or_path: no such file {os.fspath(path)!r}") from err
        safetensors_err = err
    try:
        # perforatedai writes safetensors by default; a plain torch.save'd state dict is accepted too.
        sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise PerforatedAIConversionError(
            f"model_or_path: {os.fspath(path)!r} is neither a safetensors file ({safetensors_err}) nor a torch.save'd "
            f"state dict ({type(err).__name__}). A whole pickled model (perforatedai's using_safe_tensors=False) "
            "must be loaded by you (torch.load(..., weights_only=False), with perforatedai installed) and passed "
            "as the model"
        ) from err
    if not isinstance(sd, Mapping):
        raise PerforatedAIConversionError(
            f"model_or_path: {os.fspath(path)!r} holds a {type(sd).__name__}, expected a state dict"
        )
    return dict(sd)


def _resolve_key(model: nn.Module, key: str) -> str:
    """The user-model key of a perforatedai key: drop the ``main_module`` segments that wrappers added."""
    out: list[str] = []
    cur: nn.Module | None = model
    parts = key.split(".")
    for k, seg in enumerate(parts):
        if cur is not None and seg in cur._modules:
            out.append(seg)
            cur = cur._modules[seg]
        elif seg == "main_module" and k < len(parts) - 1:
            continue
        else:
            out.append(seg)
            cur = None
    return ".".join(out)


def _sub_state(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _load_into(path: str, template: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    m = copy.deepcopy(template)
    try:
        m.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise PerforatedAIConversionError(
            f"{_where(path)}: the checkpoint's {what} does not fit the model's {type(template).__name__}: {err}"
        ) from err
    return m


def _from_checkpoint(
    sd: Mapping[str, torch.Tensor], model: nn.Module, activation: ActivationLike | None, strict: bool
) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected the user's nn.Module (before perforate_model), got {type(model).__name__}")
    if any(_is_pai_wrapper(m) or _is_tracked_wrapper(m) for m in model.modules()):
        raise PerforatedAIConversionError(
            "model: expected an instance of your model class before perforate_model, got a perforatedai-wrapped "
            "model; load the checkpoint into it with perforatedai's load_system and pass that model alone, or pass "
            "a fresh unwrapped instance"
        )
    sd = {k: v for k, v in sd.items() if k != "tracker_string"}
    if sd and all(k.startswith("module.") for k in sd) and "module" not in model._modules:
        sd = {k[len("module.") :]: v for k, v in sd.items()}  # saved from a DataParallel wrapper
    act = _resolve_activation(activation, None)
    # Wrapped modules, outermost first so a prefix never swallows another wrapper's keys twice.
    prefixes = sorted(
        (k[: -len(_NUM_CYCLES)] for k in sd if k == _NUM_CYCLES or k.endswith("." + _NUM_CYCLES)), key=len
    )
    memo: dict = {}
    consumed: set[str] = set()
    converted_paths: list[str] = []
    for prefix in prefixes:
        if prefix + _NUM_CYCLES in consumed:  # nested inside a wrapper converted already
            continue
        path = _resolve_key(model, prefix.rstrip(".")) if prefix else ""
        try:
            target = model.get_submodule(path)
        except AttributeError as err:
            raise PerforatedAIConversionError(
                f"{_where(path)}: the checkpoint has dendrites for it (key {prefix + _NUM_CYCLES!r}) but the model "
                "has no such module; pass an instance of the model class that was perforated"
            ) from err
        cycles = float(sd[prefix + _NUM_CYCLES].flatten()[0])
        d = int(round(cycles)) // 2
        main_sd = _sub_state(sd, prefix + "main_module.")
        main = _load_into(path, target, main_sd, "main_module weights")
        layers = [
            _load_into(
                f"{path}.dendrite_module.layers.{i}",
                target,
                _sub_state(sd, f"{prefix}dendrite_module.layers.{i}."),
                f"dendrite {i} weights",
            )
            for i in range(d)
        ]
        n_tops = sum(
            1 for k in sd if k.startswith(prefix + "dendrites_to_top.") and k.count(".") == prefix.count(".") + 1
        )
        tops = [sd[f"{prefix}dendrites_to_top.{k}"] for k in range(n_tops)]
        cprefix = f"{prefix}dendrite_module.dendrites_to_dendrites."
        n_casc = sum(1 for k in sd if k.startswith(cprefix) and k[len(cprefix) :].isdigit())
        cascades = [sd[f"{cprefix}{k}"] for k in range(n_casc)]
        dims = sd.get(prefix + "this_output_dimensions", sd.get(prefix + "this_input_dimensions"))
        layer = _build_layer(path, main, layers, tops, cascades, _dims_list(dims), act, None)
        memo[id(target)] = layer
        # A weight the model shares with another module (weight tying) stays shared with the new layer.
        leaf = _leaf(path, target)
        memo[id(leaf.weight)] = layer.weight
        if leaf.bias is not None:
            memo[id(leaf.bias)] = layer.bias
        consumed.update(k for k in sd if k.startswith(prefix))
        converted_paths.append(path)
    new = copy.deepcopy(model, memo)
    rest = {_resolve_key(model, k): v for k, v in sd.items() if k not in consumed}
    missing, unexpected = new.load_state_dict(rest, strict=False)

    def inside_converted(key: str) -> bool:
        return any(not p or key.startswith(p + ".") for p in converted_paths)

    missing = [k for k in missing if not inside_converted(k)]
    if strict and (missing or unexpected):
        raise PerforatedAIConversionError(
            f"checkpoint does not match the model: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} (pass strict=False to load "
            "what matches, e.g. for modules listed in perforatedai's module_names_to_not_save)"
        )
    return new


def from_perforatedai(
    model_or_path: nn.Module | str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module | None = None,
    *,
    activation: ActivationLike | None = None,
    strict: bool = True,
) -> nn.Module:
    """A pai_fast model equivalent to a perforatedai 3.2.9 model or checkpoint.

    Args:
        model_or_path: a model wrapped by perforatedai (``perforate_model``), or a checkpoint written by its
            ``save_system``/``save_net`` (path to the safetensors file, ``.pt`` extension or not, or the state
            dict already loaded).
        model: with a checkpoint, an instance of the user's model class *before* ``perforate_model``; its
            structure receives the weights (it is not modified; a converted copy is returned).
        activation: the dendrite activation (perforatedai's ``pai_forward_function``). Default: for a live model
            perforatedai's current global setting, for a checkpoint ``"sigmoid"`` (checkpoints do not record it).
        strict: with a checkpoint, raise if keys outside the converted layers are missing or unexpected.

    Returns:
        A deep copy of the model in which each wrapped Linear/ConvNd is a ``DendriticLinear`` /
        ``DendriticConv1d/2d/3d`` holding the same main weights, dendrites, output weights and cascades, and each
        tracked module is the plain module. Computes the same function (up to floating-point rounding).
    """
    if isinstance(model_or_path, nn.Module):
        if model is not None:
            raise TypeError("model: only used with a checkpoint path or state dict; got a model as model_or_path too")
        return _from_live(model_or_path, activation)
    if isinstance(model_or_path, Mapping):
        sd = dict(model_or_path)
    elif isinstance(model_or_path, (str, os.PathLike)):
        sd = _read_checkpoint(model_or_path)
    else:
        raise TypeError(
            "model_or_path: expected a perforatedai-wrapped nn.Module, a checkpoint path or a state dict, "
            f"got {type(model_or_path).__name__}"
        )
    if model is None:
        raise TypeError(
            "model: a checkpoint needs an instance of your model class (before perforate_model) to "
            "receive the weights; pass model=YourModel(...)"
        )
    return _from_checkpoint(sd, model, activation, strict)


# ----------------------------------------------------------------------------------------------------------------
# Export


def _default_dims(layer: nn.Module) -> list[int]:
    nd = 0 if isinstance(layer, nn.Linear) else layer.weight.dim() - 2
    return [-1, 0] + [-1] * nd


def _layer_state(prefix: str, layer: nn.Module, dims: list[int]) -> dict[str, torch.Tensor]:
    """perforatedai 3.2.9 keys of one PAINeuronModule holding ``layer`` (plain or dendritic)."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    d = layer.num_dendrites if isinstance(layer, DendriteMixin) else 0
    n = w.shape[0]
    kw = {"dtype": w.dtype, "device": w.device}
    out: dict[str, torch.Tensor] = {}
    idx = torch.tensor(dims, dtype=torch.int64)
    node = int(dims.index(0))
    out[prefix + "this_node_index"] = torch.tensor(node, dtype=torch.int64)
    out[prefix + "this_output_dimensions"] = idx.clone()

    def lin(p: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        out[p + "weight"] = weight.clone()
        if bias is not None:
            out[p + "bias"] = bias.clone()

    lin(prefix + "main_module.", w, b)
    dm = prefix + "dendrite_module."
    out[dm + "num_cycles"] = torch.tensor([2.0 * d])
    out[dm + "this_output_dimensions"] = idx.clone()
    out[dm + "this_node_index"] = torch.tensor(node, dtype=torch.int64)
    # parent_module is the wrap-time template of new dendrites; it never runs, any values of the right shape do.
    lin(dm + "parent_module.", w, b)
    vt = dm + "dendrite_values.0."
    out[vt + "initialized"] = torch.zeros(1)
    out[vt + "current_d_init"] = torch.ones(1) if d else torch.zeros(1)
    out[vt + "this_output_dimensions"] = idx.clone()
    out[vt + "this_node_index"] = torch.tensor([node], dtype=torch.int64)
    storage = [n if v == 0 else 1 for v in dims]
    out[vt + "dendrite_storage_shape"] = torch.tensor(storage, dtype=torch.int64)
    out[vt + "shape"] = torch.zeros(storage)
    if d:
        gate = layer.dendrite_gate.detach()
        for i in range(d):
            lin(
                f"{dm}layers.{i}.",
                layer.dendrite_weight[i].detach(),
                None if layer.dendrite_bias is None else layer.dendrite_bias[i].detach(),
            )
            out[f"{prefix}dendrites_to_top.{i}"] = gate[: i + 1].clone()  # stale entries never run
        if d >= 2:
            cascade = layer.dendrite_cascade.detach()
            out[dm + "dendrites_to_dendrites.0"] = torch.zeros(0, **kw)
            for i in range(1, d):
                out[f"{dm}dendrites_to_dendrites.{i}"] = cascade[i, :i].clone()
            out[dm + "dendrites_to_candidates.0"] = torch.zeros((d - 1, n), **kw)  # unused scaffolding
    return out


def to_perforatedai_state_dict(
    model: nn.Module,
    *,
    wrap_plain: bool = True,
    output_dimensions: Mapping[str, list[int]] | None = None,
    tracked: Callable[[str, nn.Module], bool] | None = None,
    tracker_string: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """perforatedai 3.2.9 state-dict keys for a pai_fast model (for ``save_net`` files / ``load_system``).

    Every Dendritic layer becomes a ``PAINeuronModule`` entry (``X.main_module.*``, ``X.dendrite_module.*``,
    ``X.dendrites_to_top.*``, bookkeeping buffers); with ``wrap_plain`` (perforatedai's default wrapping) plain
    ``nn.Linear``/``nn.ConvNd`` modules become entries with 0 dendrites. ``output_dimensions`` maps module paths to
    their perforatedai node-dimension list (default ``[-1, 0]`` for Linear, ``[-1, 0, -1, ...]`` for convs; it
    only matters for perforatedai's bookkeeping buffers); ``tracked(path, module)`` marks modules perforatedai
    wraps in a TrackedNeuronModule (their keys gain ``.main_module.``). ``tracker_string`` (uint8) is stored as
    the root ``tracker_string`` buffer when given. Save the result with ``safetensors.torch.save_file``.
    """
    dims_over = dict(output_dimensions or {})
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()

    def visit(m: nn.Module, path: str, key_prefix: str) -> None:
        is_dendritic = isinstance(m, DendriteMixin)
        if is_dendritic or (wrap_plain and _dendritic_class(m) is not None):
            dims = _dims_list(dims_over.get(path)) or _default_dims(m)
            _check_node_dims(path, m, dims)
            out.update(_layer_state(key_prefix, m, dims))
            done.add(path)
            return
        if tracked is not None and path and tracked(path, m):
            key_prefix = key_prefix + "main_module."
        for name, p in m._parameters.items():
            if p is not None:
                out[key_prefix + name] = p.detach().clone()
        for name, buf in m._buffers.items():
            if buf is not None and name not in m._non_persistent_buffers_set:
                out[key_prefix + name] = buf.detach().clone()
        for name, child in m._modules.items():
            if child is not None:
                cpath = f"{path}.{name}" if path else name
                visit(child, cpath, f"{key_prefix}{name}.")

    visit(model, "", "")
    unknown = set(dims_over) - done
    if unknown:
        raise ValueError(f"output_dimensions: paths {sorted(unknown)} are not exported dendritic/wrapped layers")
    if tracker_string is not None:
        out["tracker_string"] = tracker_string.detach().to(torch.uint8).clone()
    return out
