"""Model registry: ``@register_model`` on a builder function, ``create_model(name, ...)`` to build.

Builders take ``num_classes`` and keyword arguments and return a freshly initialised network;
``create_model`` loads weights into it. ``pretrained=True`` always means the whole model's
released weights, as timm and torchvision: a builder records where they are published with
``@register_model(weights=Weights(...))``. A keyword argument the model does not take is a
:class:`ModelArgumentError` naming the model and the arguments it takes (:func:`model_arguments`);
a failed download, a :class:`~visattn.weights.DownloadError` naming the model.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..weights import DownloadError, fetch, load_weights, read_state_dict
from .segmentation.base import Segmentor, build_segmentor

__all__ = [
    "Weights", "register_model", "create_model", "list_models", "is_model", "released_weights", "load_pretrained",
    "without_starting_weights", "model_arguments", "ModelArgumentError",
]

Pretrained = bool | str | os.PathLike

# Builder arguments naming the encoder weights training starts from: trained weights replace them,
# and a file they name is the training machine's.
STARTING_WEIGHT_ARGUMENTS = ("encoder_weights", "pretrained_file")


def without_starting_weights(kwargs: Mapping) -> dict:
    """Builder arguments less :data:`STARTING_WEIGHT_ARGUMENTS`: what rebuilds a trained model."""
    return {k: v for k, v in kwargs.items() if k not in STARTING_WEIGHT_ARGUMENTS}


@dataclass(frozen=True)
class Weights:
    """Where a model's released (whole-model) weights are published.

    Args:
        source: the page that publishes them, named in errors when there is no direct download.
        url: a direct download (``pretrained=True`` fetches it through ``torch.hub``'s cache).
        sha256: the download's SHA-256 hex digest, checked by ``torch.hub`` when given.
    """

    source: str
    url: str | None = None
    sha256: str | None = None


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_WEIGHTS: dict[str, Weights] = {}
# One line per network file: importing it registers its builders. Imported on first use of the
# registry, so ``import visattn`` stays light and a misspelt or broken file fails loudly.
_BUILDER_MODULES = (
    "visattn.models.resnet",
    "visattn.models.epsanet",
    "visattn.models.segmentation.fcn",
    "visattn.models.segmentation.danet",
    "visattn.models.segmentation.ccnet",
    "visattn.models.segmentation.flanet",
    "visattn.models.segmentation.attnet",
    "visattn.models.segmentation.nlnet",
    "visattn.models.segmentation.pspnet",
    "visattn.models.segmentation.deeplabv3",
    "visattn.models.segmentation.deeplabv3plus",
    "visattn.models.segmentation.ann",
    "visattn.models.segmentation.ocrnet",
    "visattn.models.segmentation.gcnet",
    "visattn.models.segmentation.emanet",
    "visattn.models.segmentation.isanet",
    "visattn.models.segmentation.dnlnet",
)


def register_model(fn: Callable[..., nn.Module] | None = None, *, weights: Weights | None = None):
    """Decorator: register ``fn`` under its function name, with where its released ``weights``
    are (``@register_model`` or ``@register_model(weights=Weights(...))``)."""

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__] = fn
        if weights is not None:
            _WEIGHTS[fn.__name__] = weights
        return fn

    return register if fn is None else register(fn)


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        importlib.import_module(module)


def list_models(pattern: str = "") -> list[str]:
    """Registered model names, sorted: those matching ``pattern`` when it is a shell wildcard
    (``"danet*"``, ``"*_r101_d8"``, as ``timm.list_models``), else those containing it."""
    _load_builders()
    if any(c in pattern for c in "*?["):
        return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))
    return sorted(n for n in _MODELS if pattern in n)


def is_model(name: str) -> bool:
    _load_builders()
    return name in _MODELS


def released_weights(name: str) -> Weights | None:
    """Where the released weights of model ``name`` are published (``None``: none released)."""
    _load_builders()
    return _WEIGHTS.get(name)


class ModelArgumentError(TypeError, ValueError):
    """A keyword argument that model does not take: the message names the model, the argument and
    the arguments it takes (a ``TypeError`` as Python's own, and a ``ValueError``: a user's error)."""


# Arguments users bring from timm and segmentation_models_pytorch: what each is called here.
_FOREIGN_ARGUMENTS = {
    "features_only": "a segmentor's encoder is timm's features_only model (model.encoder); "
                     "visattn.models.segmentation.create_encoder(name, output_stride) builds one alone",
    "encoder_name": "the encoder is encoder= here (a timm model name)",
    "classes": "the class count is num_classes= here",
    "in_channels": "the image's channels are in_chans= here (timm's name), for segmentors",
    "encoder_depth": "segmentors use the encoder's last three stages at output_stride= 8 or 16",
}
# Taken from timm with the same meaning: passed to a segmentor's encoder.
_ENCODER_ARGUMENTS = ("in_chans",)


def _parameters(fn: Callable, skip: int = 0) -> set[str]:
    """Names of ``fn``'s keyword-passable parameters, less its first ``skip`` positional ones."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return {p.name for p in params[skip:]}


def _takes_any_keyword(fn: Callable) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def model_arguments(name: str) -> list[str]:
    """The keyword arguments of ``create_model(name, ...)``, sorted: the builder's own and, where it
    passes the rest on, those of what receives them (a segmentor: :func:`build_segmentor`'s, its
    head's and ``in_chans``; a classifier: its network class's)."""
    fn = _MODELS[_registered(name)]
    names = _parameters(fn) | {"pretrained"}
    if _takes_any_keyword(fn):
        try:
            with torch.device("meta"):  # no memory, no weights: only the parts' types are read
                model = fn()
        except (RuntimeError, NotImplementedError):  # an operation the meta device lacks
            return sorted(names)
        if isinstance(model, Segmentor):
            names |= _parameters(build_segmentor) - {"head", "aux_head"}
            names |= _parameters(type(model.head).__init__, skip=3) | set(_ENCODER_ARGUMENTS)  # self, in, classes
        else:
            names |= _parameters(type(model).__init__, skip=2)  # self, layers
    return sorted(names)


def _registered(name: str) -> str:
    """The registered name ``name`` spells (case does not matter, as for attentions); unknown names
    raise ``ValueError`` with close matches."""
    _load_builders()
    if name in _MODELS:
        return name
    if isinstance(name, str) and name.lower() in _MODELS:
        return name.lower()
    close = difflib.get_close_matches(str(name).lower(), list(_MODELS), n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} See visattn.list_models() for all {len(_MODELS)} names.")


def _argument_error(name: str, err: TypeError) -> ModelArgumentError | None:
    """The :class:`ModelArgumentError` a builder's ``TypeError`` is, when it is about an argument."""
    found = re.search(r"(unexpected keyword argument|multiple values for (?:keyword )?argument) '(\w+)'", str(err))
    if found is None:
        return None
    argument = found[2]
    if argument in _FOREIGN_ARGUMENTS:
        why = f" ({_FOREIGN_ARGUMENTS[argument]})"
    elif found[1].startswith("multiple"):
        why = " (the model sets it itself)"
    else:
        why = ""
    return ModelArgumentError(f"model {name!r} takes no argument {argument!r}{why}; it takes: "
                              f"{', '.join(model_arguments(name))}")


def _with_encoder_arguments(fn: Callable, kwargs: dict) -> dict:
    """``kwargs`` with the timm names of :data:`_ENCODER_ARGUMENTS` moved into a segmentor's
    ``encoder_kwargs``."""
    moved = {k: kwargs[k] for k in _ENCODER_ARGUMENTS if k in kwargs}
    if not moved or _parameters(fn) & set(moved) or not _builds_segmentor(fn):
        return kwargs
    rest = {k: v for k, v in kwargs.items() if k not in moved}
    return {**rest, "encoder_kwargs": {**moved, **(kwargs.get("encoder_kwargs") or {})}}


def _builds_segmentor(fn: Callable) -> bool:
    return inspect.signature(fn).return_annotation in (Segmentor, "Segmentor")


def _check_pretrained(name: str, pretrained: object) -> None:
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(f"{name}: pretrained must be True, False or a file path, got {pretrained!r}")


def create_model(
    name: str, *, num_classes: int | None = None, pretrained: Pretrained = False, **kwargs
) -> nn.Module:
    """Build the registered model ``name``, as ``timm.create_model``.

    Args:
        name: a name of :func:`list_models` (case does not matter); unknown names raise
            ``ValueError`` with close matches.
        num_classes: outputs of the classifier (default: the builder's own, 1000 for classifiers,
            19 for Cityscapes segmentors).
        pretrained: ``False``; ``True``, the whole model's released weights (downloaded when the
            authors publish a direct file, else a ``ValueError`` naming where to get them); or the
            path of a local weights file, in the authors' layout or visattn's. With ``num_classes``
            different from the weights', the classifier starts anew and everything else loads
            strictly (see :func:`load_pretrained`).
        **kwargs: the builder's arguments (:func:`model_arguments`); segmentors take
            ``encoder_weights="imagenet"`` (or a local encoder file) for an ImageNet-pretrained
            encoder, and ``in_chans`` for the image's channels (timm's argument). An argument the
            model does not take is a :class:`ModelArgumentError` listing those it does.
    """
    name = _registered(name)
    _check_pretrained(name, pretrained)
    if pretrained is True:
        _download_source(name)  # no download link: fail before building
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    builder = _MODELS[name]
    try:
        model = builder(**_with_encoder_arguments(builder, kwargs))
    except TypeError as err:
        problem = _argument_error(name, err)
        if problem is None:
            raise
        raise problem from None
    except DownloadError as err:  # the encoder's starting weights: say whose
        raise DownloadError(f"{name}: {err}") from None
    return load_pretrained(model, name, pretrained)


def _download_source(name: str) -> Weights:
    weights = _WEIGHTS.get(name)
    if weights is None:
        raise ValueError(
            f"{name}: no released weights; train it, or pass pretrained=path for a local weights file "
            f"(segmentors: encoder_weights='imagenet' for an ImageNet-pretrained encoder)"
        )
    if weights.url is None:
        raise ValueError(
            f"{name}: the released weights have no direct download; download them from {weights.source} "
            f"and load them with visattn.load_official(model, path) (or pass pretrained=path)"
        )
    return weights


def _read_release(name: str, weights: Weights) -> dict[str, Tensor]:
    # torch.hub checks the digest carried by the cached file's name (``name-<sha256>.ext``)
    file_name = None
    cached_name = os.path.basename(urllib.parse.urlsplit(weights.url).path)  # torch.hub's name without one
    if weights.sha256 is not None:
        stem, dot, ext = cached_name.partition(".")
        file_name = cached_name = f"{stem}-{weights.sha256}{dot}{ext}"
    state = fetch(
        lambda: torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", weights_only=True,
                                                   check_hash=weights.sha256 is not None, file_name=file_name),
        what=name, source=weights.url, cache_file=os.path.join(torch.hub.get_dir(), "checkpoints", cached_name))
    return read_state_dict(state)


def _classifier_keys(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> list[str]:
    """The keys of the layers that output the classes, when the model's class count differs from the
    weights': in both, shapes differing in the first dimension only, which is the model's class
    count, the one first dimension of every mismatched bias."""
    differ = [
        k for k in own if k in state and own[k].shape != state[k].shape and own[k].dim() == state[k].dim() >= 1
    ]
    counts = {own[k].shape[0] for k in differ if k.endswith(".bias")}
    if len(counts) != 1:
        return []
    return [k for k in differ if own[k].shape[0] in counts and own[k].shape[1:] == state[k].shape[1:]]


def load_pretrained(model: nn.Module, name: str, pretrained: Pretrained) -> nn.Module:
    """Load the weights ``pretrained`` names (see :func:`create_model`) into the freshly built ``model``.

    A file whose keys are the model's own is visattn's state dict; any other is taken for the
    authors' layout and renamed by the model's ``convert_official_state_dict`` (as
    :func:`visattn.load_official`). Keys present in both whose shapes differ only in the class
    count (the classifier, when ``num_classes`` differs from the weights') keep their fresh
    initialisation, with a warning naming them, as timm's ``create_model``; any other difference is
    a ``ValueError`` naming the weights and listing the missing, unexpected and mismatched keys.
    """
    _check_pretrained(name, pretrained)
    if pretrained is False:
        return model
    if pretrained is True:
        weights = _download_source(name)
        state, origin = _read_release(name, weights), weights.url
    else:
        state, origin = read_state_dict(pretrained), f"file {os.fspath(pretrained)}"
    own = model.state_dict()
    convert = getattr(model, "convert_official_state_dict", None)
    if convert is not None and (pretrained is True or set(state) != set(own)):
        state = convert(state)
    for key in own:  # checkpoints older than PyTorch 0.4 have no BatchNorm step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    fresh = _classifier_keys(own, state)
    classes = (state[fresh[0]].shape[0], own[fresh[0]].shape[0]) if fresh else None
    state.update({k: own[k] for k in fresh})
    try:
        load_weights(model, state)
    except ValueError as err:
        raise ValueError(f"{name}: cannot load pretrained {origin}: {err}") from err
    if fresh:
        warnings.warn(
            f"{name}: the pretrained classifier has {classes[0]} classes, the model {classes[1]}: "
            f"{', '.join(fresh)} start from a fresh initialisation",
            stacklevel=3,
        )
    return model
