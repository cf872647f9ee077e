"""A trained PyTorch model adapted to one recording, in memory (`heart predict --adapt`,
`heart evaluate --records --adapt`).

Every function works on a copy (:func:`adapted_copy`): the loaded model, its run folder and
its exports are never changed, and each recording starts again from the model as trained.

* :func:`adabn` (Li et al. 2016, "Revisiting batch normalization for practical domain
  adaptation"): every BatchNorm layer's running mean and variance are re-estimated on the
  recording's learning-period beats. One forward pass with the BatchNorm layers in training
  mode over all those beats at once (in chunks of :data:`CHUNK` beats when there are more)
  normalises each layer by the statistics of the recording's beats as the layers below it
  already see them, and leaves those statistics as the layer's running ones. No label is
  read and no weight changes.
* :func:`recentre_rhythm`: the rhythm input (``[model] rhythm``) standardises its features
  by the training fold's median and IQR (:class:`heartcli.model.network.RhythmInput`); here
  the centre is re-estimated on the recording's own learning period (the scale kept), so a
  beat's rhythm is read against that patient's usual one: the recording's own RR
  normalisation. (Re-estimating the scale too did worse on DS1: see
  benchmarks/bench_adapt.py's docstring.)
* :func:`fine_tune` (the patient-specific protocol: Hu et al. 1997, Ince et al. 2009,
  Kiranyaz et al. 2016, Llamedo & Martínez 2012): the learning period's labelled beats
  fine-tune the fully connected head (and the rhythm path straight to the logits) of the
  model as trained, its conv features fixed (computed once, which keeps it well under a
  second). Full-batch Adam, :data:`STEPS` steps at :data:`LR`, cross-entropy weighted
  towards the rarer classes (:func:`class_weights`), dropout off: no random draw at all, so
  the same beats always give the same model; the torch RNG is seeded (``seed``) and
  restored all the same.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.errors import DataError

if TYPE_CHECKING:
    from torch import nn

CHUNK = 4096  # beats per AdaBN forward pass: a 5-minute learning period is one pass
STEPS = 20  # full-batch fine-tuning steps of --adapt labels
LR = 5e-4  # Adam's learning rate for them (the recipes train at 2e-3 to 4e-3)


def adapted_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode: what adaptation changes."""
    return copy.deepcopy(module).eval()


def members(module: nn.Module) -> list[Any]:
    """The networks of a model: an ensemble's members, or the model itself."""
    inner = getattr(module, "members", None)
    return list(inner) if inner is not None else [module]


def _tensors(inputs: Sequence[np.ndarray], rows: slice | None = None) -> list[Any]:
    import torch

    rows = rows or slice(None)
    return [torch.from_numpy(np.ascontiguousarray(a[rows], np.float32)) for a in inputs]


def adabn(module: nn.Module, inputs: Sequence[np.ndarray]) -> int:
    """Re-estimate every BatchNorm layer of ``module`` (in place) on ``inputs`` (the
    learning period's beats, and their rhythm features for a rhythm model); returns the
    number of layers re-estimated."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative mean over the chunks
        layer.train()
    n = len(inputs[0])
    try:
        with torch.no_grad():
            for start in range(0, n, CHUNK):
                module(*_tensors(inputs, slice(start, start + CHUNK)))
    except ValueError as exc:  # BatchNorm on one value per channel
        raise DataError(f"cannot re-estimate BatchNorm on {n} beat(s) ({exc})") from None
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
            layer.eval()
    return len(layers)


def recentre_rhythm(module: nn.Module, rhythm: np.ndarray) -> int:
    """The centre of every rhythm input's standardisation re-estimated on ``rhythm`` (the
    learning period's nine rhythm columns) by the estimator of training (the median on the
    log scale, the mean on the linear one), in place; the training fold's scale is kept.
    Returns how many rhythm inputs were re-centred."""
    import torch

    from heartcli.model.network import RhythmInput

    layers = [m for m in module.modules() if isinstance(m, RhythmInput)]
    for layer in layers:
        with torch.no_grad():
            values = layer.features(torch.from_numpy(np.ascontiguousarray(rhythm, np.float32)))
            centre = values.median(dim=0).values if layer.log else values.mean(dim=0)
            layer.center.copy_(centre.float())
    return len(layers)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Cross-entropy weights balancing the classes present in ``labels``, tempered: each
    class weighs ``1 / sqrt(count)``, scaled so the mean weight over the beats is 1 (full
    inverse-frequency weights let 3 beats of a class outweigh 300; on DS1 they did worse).
    Absent classes 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[counts > 0] = 1.0 / np.sqrt(counts[counts > 0])
    weights *= len(labels) / float((weights * counts).sum())
    return weights.astype(np.float32)


def fine_tune(
    module: nn.Module,
    inputs: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    seed: int = 0,
    steps: int = STEPS,
    lr: float = LR,
) -> dict[str, Any]:
    """Fine-tune the heads of ``module`` (in place) on the labelled beats ``inputs`` with
    class indices ``labels`` (see the module docstring); returns the loss before and after."""
    import torch

    nets = members(module)
    if not all(hasattr(net, "embed") and hasattr(net, "classify") for net in nets):
        raise DataError("--adapt labels: this model has no separable head to fine-tune")
    ensemble = len(nets) > 1 or getattr(module, "members", None) is not None
    tensors = _tensors(inputs)
    with torch.no_grad():
        features = [net.embed(tensors[0]) for net in nets]
    takes = [bool(getattr(net, "uses_rhythm", False)) for net in nets]
    rhythm = tensors[1] if len(tensors) > 1 else None
    n_classes = int(getattr(nets[0], "n_classes", int(labels.max()) + 1))
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weight = torch.from_numpy(class_weights(np.asarray(labels), n_classes))
    params = [p for net in nets for part in (net.head, net.wide) if part is not None
              for p in part.parameters()]  # fmt: skip

    def loss_now() -> Any:
        logits = [
            net.classify(z, rhythm if uses else None)
            for net, z, uses in zip(nets, features, takes, strict=True)
        ]
        if ensemble:
            probs = torch.stack([torch.softmax(x, dim=1) for x in logits]).mean(dim=0)
            out = torch.log(probs.clamp_min(1e-12))
        else:
            out = logits[0]
        return torch.nn.functional.cross_entropy(out, target, weight=weight)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            before = float(loss_now())
        adam(params, loss_now, steps=steps, lr=lr)
        with torch.no_grad():
            after = float(loss_now())
    for p in module.parameters():
        p.grad = None
    module.eval()
    return {"steps": steps, "lr": lr, "loss_before": before, "loss_after": after}


def adam(
    params: list[Any],
    loss: Any,
    *,
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """``steps`` steps of Adam (Kingma & Ba 2015) on ``loss()`` over ``params``, written out:
    ``torch.optim``'s constructor imports torch._dynamo, seconds of a cold start that a
    20-step fine-tuning per recording cannot afford."""
    import torch

    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    b1, b2 = betas
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss(), params)
        with torch.no_grad():
            for p, g, m, v in zip(params, grads, first, second, strict=True):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = lr / (1 - b1**t)
                p.addcdiv_(m, (v / (1 - b2**t)).sqrt_().add_(eps), value=-step)
