"""Plug-and-play: insert any visattn attention into an existing timm or torchvision CNN.

``insert_attention(model, name, where=...)`` puts ``create_attention(name, channels, **kwargs)``
modules at the standard places of the papers, finding every channel count itself:

- ``where="block"``: inside every residual block, on the residual branch's output just before the
  residual addition (where SE, CBAM and SGE go: after ``bn3`` of a bottleneck, as in SGE-ResNet
  and CBAM-ResNet).
- ``where="stage"``: on the output of chosen stages (stages 1-3 by default, as BAM-ResNet).
- ``where="conv3x3"``: replacing each bottleneck's 3×3 conv by ``cls(in, out, stride=...)``, for
  modules that can change channels and stride (PSA, as EPSANet).

Supported: torchvision ``ResNet`` (ResNet, ResNeXt, Wide ResNet), timm ``ResNet`` (ResNet,
ResNeXt, SE-/ECA-ResNet, ResNet-D ...), timm ``RegNet`` (RegNetX/Y/V) and timm ``ConvNeXt``.

The model is changed in place and returned. Existing parameter and buffer names and values are
untouched (``where="conv3x3"`` removes the replaced convs' weights, nothing else); the new modules
get new names:

=====================  ==========================================  ==============================
family                 ``where="block"``                           ``where="stage"`` (stage i)
=====================  ==========================================  ==============================
torchvision ResNet     ``layer1.0.<name>`` after ``bn3``           ``<name>i`` on the model, after
                       (``bn2`` in a BasicBlock)                   ``layer<i>`` (``bam1``..3)
timm ResNet            ``layer1.0.se``: timm's own attention       ``<name>i``, after ``layer<i>``
                       slot; if taken (SE-ResNet), ``attn`` after
                       it
timm RegNet            ``s1.b1.attn``, after ``conv3`` (+ its BN)  ``<name>i``, after ``s<i>``
timm ConvNeXt          ``stages.0.blocks.0.attn``, after the MLP,  ``<name>i``, after
                       before the layer scale                      ``stages.<i-1>``
=====================  ==========================================  ==============================

For torchvision ResNets these are the official names of SGE-, CBAM- and BAM-ResNet (``sge``,
``cbam``, ``bam1``), so the result has the state-dict layout of the authors' checkpoints and of
``visattn.models.resnet``; for timm ResNets it is the layout timm builds from ``attn_layer``
(see :func:`timm_attn_layer`).

How the module runs: in a timm ResNet the block calls its ``se`` slot itself. Elsewhere a forward
hook on the module just before the insertion point (``bn3``, ``conv3``, ``mlp``, the stage) feeds
its output through the attention; the attention module is registered on the block (or model), so
it is saved, loaded, moved, deep-copied and pickled with the model. ``torch.compile``,
``torch.export`` and ``torch.onnx.export(dynamo=True)`` trace forward hooks like any other code.
A hook keeps existing names intact where wrapping would not (``nn.Sequential(bn3, attn)`` renames
``bn3.weight`` to ``bn3.0.weight``) and needs no copy of the block's ``forward``.

ConvNeXt: the attention sees the MLP's output before the layer scale ``gamma`` (initialised to
1e-6); after it, normalising modules (SGE, BAM's BatchNorms) would see features near 1e-6, below
their epsilons, and stay inactive early in training.
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..attention import create_attention, get_attention_class

__all__ = ["insert_attention", "timm_attn_layer"]

_WHERES = ("block", "stage", "conv3x3")
_SUPPORTED = (
    "torchvision ResNet/ResNeXt/Wide ResNet (torchvision.models.resnet.ResNet), "
    "timm ResNet/ResNeXt (timm.models.resnet.ResNet), timm RegNet (timm.models.regnet.RegNet), "
    "timm ConvNeXt (timm.models.convnext.ConvNeXt)"
)


def _run_after(attn: nn.Module, nhwc: bool, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook: feed ``output`` through ``attn`` (a partial of it is registered as the hook).

    A ``functools.partial`` of a module-level function deep-copies and pickles with the model, its
    ``attn`` mapping to the copy's module.
    """
    if nhwc:  # timm ConvNeXt's Linear MLP runs in (B, H, W, C)
        return attn(output.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return attn(output)


def _our_hook(module: nn.Module) -> nn.Module | None:
    """The attention a previous ``insert_attention`` hooked onto ``module``, if any."""
    for hook in module._forward_hooks.values():
        if isinstance(hook, partial) and hook.func is _run_after:
            return hook.args[0]
    return None


def _is_visattn(module: nn.Module | None) -> bool:
    return module is not None and type(module).__module__.startswith("visattn.attention")


@dataclass
class _Stage:
    index: int  # 1-based
    path: str
    module: nn.Module
    blocks: list[tuple[str, nn.Module]]  # (path, block)


@dataclass
class _BlockSite:
    """Where a block's attention goes: a hook on ``target`` (or timm's ``se`` slot)."""

    block: nn.Module
    path: str
    channels: int
    target: nn.Module | None  # None: timm's empty ``se`` slot
    attr: str  # the attention's attribute name on the block
    nhwc: bool = False


def _out_channels(conv: nn.Module) -> int:
    """Output channels of a conv, or of timm's ``ConvNormAct`` around one."""
    return conv.conv.out_channels if hasattr(conv, "conv") else conv.out_channels


def _stages(model: nn.Module) -> tuple[str, list[_Stage]]:
    """The family name of ``model`` and its stages (families looked up only if already imported)."""
    tv = sys.modules.get("torchvision.models.resnet")
    timm_resnet = sys.modules.get("timm.models.resnet")
    regnet = sys.modules.get("timm.models.regnet")
    convnext = sys.modules.get("timm.models.convnext")
    if tv is not None and isinstance(model, tv.ResNet):
        family, paths = "torchvision ResNet", [f"layer{i}" for i in range(1, 5)]
    elif timm_resnet is not None and isinstance(model, timm_resnet.ResNet):
        family, paths = "timm ResNet", [f"layer{i}" for i in range(1, 5)]
    elif regnet is not None and isinstance(model, regnet.RegNet):
        family, paths = "timm RegNet", [f"s{i}" for i in range(1, 5)]
    elif convnext is not None and isinstance(model, convnext.ConvNeXt):
        family, paths = "timm ConvNeXt", [f"stages.{i}" for i in range(len(model.stages))]
    else:
        raise ValueError(f"insert_attention: unsupported model {type(model).__qualname__}; supported: {_SUPPORTED}")
    stages = []
    for index, path in enumerate(paths, start=1):
        module = model.get_submodule(path)
        blocks_path = f"{path}.blocks" if family == "timm ConvNeXt" else path
        blocks = [(f"{blocks_path}.{n}", b) for n, b in model.get_submodule(blocks_path).named_children()]
        stages.append(_Stage(index, path, module, blocks))
    return family, stages


def _block_site(path: str, block: nn.Module, name: str) -> _BlockSite:
    tv = sys.modules.get("torchvision.models.resnet")
    timm_resnet = sys.modules.get("timm.models.resnet")
    regnet = sys.modules.get("timm.models.regnet")
    convnext = sys.modules.get("timm.models.convnext")
    if tv is not None and isinstance(block, tv.Bottleneck):
        return _BlockSite(block, path, block.conv3.out_channels, block.bn3, name)
    if tv is not None and isinstance(block, tv.BasicBlock):
        return _BlockSite(block, path, block.conv2.out_channels, block.bn2, name)
    if timm_resnet is not None and isinstance(block, (timm_resnet.Bottleneck, timm_resnet.BasicBlock)):
        last_conv = block.conv3 if isinstance(block, timm_resnet.Bottleneck) else block.conv2
        # timm's own attention slot sits exactly here; if it is taken (SE-ResNet), go after it
        return _BlockSite(block, path, last_conv.out_channels, block.se, "se" if block.se is None else "attn")
    if regnet is not None and isinstance(block, (regnet.Bottleneck, regnet.PreBottleneck)):
        return _BlockSite(block, path, _out_channels(block.conv3), block.conv3, "attn")
    if convnext is not None and isinstance(block, convnext.ConvNeXtBlock):
        return _BlockSite(block, path, block.conv_dw.out_channels, block.mlp, "attn", nhwc=not block.use_conv_mlp)
    raise ValueError(f"insert_attention: unsupported block {type(block).__qualname__} at {path!r}")


def _conv3x3_site(path: str, block: nn.Module) -> tuple[nn.Module, str, str]:
    """(parent, attribute, path) of the 3×3 conv of a bottleneck block."""
    tv = sys.modules.get("torchvision.models.resnet")
    timm_resnet = sys.modules.get("timm.models.resnet")
    regnet = sys.modules.get("timm.models.regnet")
    if (tv is not None and isinstance(block, tv.Bottleneck)) or (
        timm_resnet is not None and isinstance(block, timm_resnet.Bottleneck)
    ) or (regnet is not None and isinstance(block, regnet.PreBottleneck)):
        return block, "conv2", f"{path}.conv2"
    if regnet is not None and isinstance(block, regnet.Bottleneck):
        return block.conv2, "conv", f"{path}.conv2.conv"
    raise ValueError(
        f"insert_attention: where='conv3x3' replaces the 3x3 conv of bottleneck blocks (torchvision and "
        f"timm ResNet Bottleneck, timm RegNet blocks); {path!r} is a {type(block).__qualname__}"
    )


def _select_stages(stages: list[_Stage], chosen: int | Iterable[int] | None, default: Iterable[int]) -> list[_Stage]:
    numbers = [s.index for s in stages]
    chosen = default if chosen is None else ([chosen] if isinstance(chosen, int) else list(chosen))
    bad = [s for s in chosen if s not in numbers]
    if bad or not chosen:
        raise ValueError(f"insert_attention: stages must be a non-empty subset of {numbers}, got {chosen!r}")
    return [s for s in stages if s.index in set(chosen)]


def _reference(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), torch.empty(0))
    return t.device, t.dtype


def _conv3x3_factory(name: str, kwargs: dict) -> Callable[[nn.Conv2d], nn.Module]:
    cls = get_attention_class(name)
    params = inspect.signature(cls.__init__).parameters
    if "out_channels" not in params or "stride" not in params:
        raise ValueError(
            f"insert_attention: where='conv3x3' needs an attention built as (in_channels, out_channels, "
            f"stride=...), like 'psa'; {name!r} ({cls.__name__}) only maps C -> C: use where='block' or 'stage'"
        )
    clash = sorted({"out_channels", "stride"} & set(kwargs))
    if clash:
        raise ValueError(f"insert_attention: {', '.join(clash)} come from the replaced conv; do not pass them")

    def build(conv: nn.Conv2d) -> nn.Module:
        return create_attention(name, conv.in_channels, out_channels=conv.out_channels, stride=conv.stride[0], **kwargs)

    return build


def _check_conv3x3(path: str, conv: nn.Module) -> None:
    if _is_visattn(conv):
        raise ValueError(f"insert_attention: {path!r} is already a {type(conv).__name__} (attention inserted twice)")
    ok = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.dilation == (1, 1)
        and conv.stride[0] == conv.stride[1]
        and conv.padding == (1, 1)
    )
    if not ok:
        raise ValueError(
            f"insert_attention: where='conv3x3' replaces plain undilated 3x3 nn.Conv2d layers; {path!r} is {conv!r}"
        )


def _check_block_free(site: _BlockSite) -> None:
    target = site.target
    if target is not None:
        taken = _our_hook(target)
        if taken is None and _is_visattn(target):
            taken = target
        if taken is not None:
            raise ValueError(
                f"insert_attention: {site.path!r} already has an inserted {type(taken).__name__} "
                f"(one block attention per block)"
            )
    if target is not None and site.attr in site.block._modules:
        raise ValueError(f"insert_attention: {site.path!r} already has a submodule named {site.attr!r}")


def insert_attention(
    model: nn.Module,
    name: str,
    where: str = "block",
    stages: int | Iterable[int] | None = None,
    **kwargs,
) -> nn.Module:
    """Insert the registered attention ``name`` into ``model`` at ``where``; returns ``model``.

    Args:
        model: a torchvision ResNet, or a timm ResNet, RegNet or ConvNeXt (changed in place).
        name: a registered attention (``visattn.list_attentions()``).
        where: ``"block"`` (every residual block, before the residual addition), ``"stage"``
            (after chosen stages) or ``"conv3x3"`` (replace every bottleneck's 3×3 conv; only for
            modules constructed as ``(in_channels, out_channels, stride=...)``, i.e. ``"psa"``).
        stages: stage numbers, 1-based: the stages whose blocks get the module (block, conv3x3;
            default all) or after which it goes (stage; default ``(1, 2, 3)``, as BAM-ResNet).
        **kwargs: constructor arguments of the attention (``groups=64`` for SGE ...).

    Raises ``ValueError`` for unsupported models, blocks or positions, and when the chosen slots
    already hold an inserted attention. Nothing is changed unless every slot can take a module.

    Example: ``insert_attention(torchvision.models.resnet50(), "sge", groups=64)``.
    """
    if where not in _WHERES:
        raise ValueError(f"insert_attention: where must be one of {', '.join(map(repr, _WHERES))}, got {where!r}")
    get_attention_class(name)  # unknown names fail before anything else
    name = name.lower()
    family, all_stages = _stages(model)
    chosen = _select_stages(all_stages, stages, (1, 2, 3) if where == "stage" else [s.index for s in all_stages])

    # First build everything (construction errors leave the model untouched), then attach.
    attach: list[Callable[[], None]] = []
    if where == "block":
        for stage in chosen:
            for path, block in stage.blocks:
                site = _block_site(path, block, name)
                _check_block_free(site)
                attn = create_attention(name, site.channels, **kwargs)
                attach.append(partial(_attach_block, site, attn))
    elif where == "stage":
        for stage in chosen:
            attr = f"{name}{stage.index}"
            taken = _our_hook(stage.module)
            if taken is not None or attr in model._modules:
                raise ValueError(f"insert_attention: stage {stage.index} ({stage.path!r}) already has an inserted attention")
            if not stage.blocks:
                raise ValueError(f"insert_attention: stage {stage.index} ({stage.path!r}) has no blocks")
            channels = _block_site(*stage.blocks[-1], name).channels
            attn = create_attention(name, channels, **kwargs)
            attach.append(partial(_attach_hooked, model, attr, stage.module, attn, False))
    else:
        build = _conv3x3_factory(name, kwargs)
        for stage in chosen:
            for path, block in stage.blocks:
                parent, attr, conv_path = _conv3x3_site(path, block)
                conv = getattr(parent, attr)
                _check_conv3x3(conv_path, conv)
                attach.append(partial(_attach_replacement, parent, attr, build(conv)))
    if not attach:
        raise ValueError(f"insert_attention: no {where} slot found in this {family}")
    for fn in attach:
        fn()
    return model


def _prepare(attn: nn.Module, like: nn.Module) -> nn.Module:
    device, dtype = _reference(like)
    return attn.to(device=device, dtype=dtype).train(like.training)


def _attach_hooked(owner: nn.Module, attr: str, target: nn.Module, attn: nn.Module, nhwc: bool) -> None:
    owner.add_module(attr, _prepare(attn, target))
    target.register_forward_hook(partial(_run_after, attn, nhwc))


def _attach_block(site: _BlockSite, attn: nn.Module) -> None:
    if site.target is None:  # timm's empty attention slot: the block calls it itself
        site.block.se = _prepare(attn, site.block)
    else:
        _attach_hooked(site.block, site.attr, site.target, attn, site.nhwc)


def _attach_replacement(parent: nn.Module, attr: str, attn: nn.Module) -> None:
    setattr(parent, attr, _prepare(attn, getattr(parent, attr)))


def _timm_attn(name: str, kwargs: dict, channels: int, device=None, dtype=None) -> nn.Module:
    return create_attention(name, channels, **kwargs).to(device=device, dtype=dtype)


def timm_attn_layer(name: str, **kwargs) -> Callable[..., nn.Module]:
    """A timm ``attn_layer``: ``layer(channels, device=None, dtype=None)`` builds ``name``.

    timm's ResNet blocks call ``attn_layer(out_channels)`` for the gate after the last norm (their
    ``se`` slot)::

        timm.create_model("resnet50", block_args=dict(attn_layer=timm_attn_layer("sge", groups=64)))

    ``kwargs`` go to the attention's constructor; they are checked now, not at model build.
    The result is picklable (a ``functools.partial``).
    """
    cls = get_attention_class(name)
    params = inspect.signature(cls.__init__).parameters
    bad = sorted(set(kwargs) - set(params) - {"self", "channels"})
    if bad:
        raise ValueError(f"timm_attn_layer: unknown argument(s) {', '.join(bad)} for {name!r}")
    return partial(_timm_attn, name.lower(), dict(kwargs))
