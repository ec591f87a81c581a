"""The settings of a training run: :class:`TrainConfig`, its checks, and the model and optimizer it builds.

A run's ``config.json`` is ``config_dict(cfg)`` plus the data source
(written by ``engine.run.write_run_config``). Only user-facing settings live
here: the loop's debugging knobs (``max_steps``, ``step_delay``) are
arguments of :func:`engine.train.fit` and never reach ``config.json``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["TrainConfig", "config_problems", "check_config", "config_dict", "model_mode", "build_model",
           "make_optimizer", "input_shape", "split_size", "MAX_EVAL_CROPS"]

#: Most evaluation windows per clip (``eval_crops``, ``--crops K``): a 30 s clip at the paper's settings has
#: about 477 columns and a window 159, so past this count the windows only repeat (and K images per clip
#: must fit in memory at once).
MAX_EVAL_CROPS = 64


@dataclass
class TrainConfig:
    """Settings of one training run (all land in ``config.json``).

    Attributes
    ----------
    model : str
        Architecture name in ``engine.models.MODELS`` (default 'cnn6_rgb', the paper's best).
    epochs : int
        Maximum number of epochs (100, the paper's cap).
    batch_size : int
        Mini-batch size (16, the paper's).
    lr : float
        Adam learning rate (5e-4).
    dropout : float
        Dropout probability before the last Linear (0.4).
    weight_decay : float
        Adam's L2 weight decay (0).
    patience : int or None
        Stop when validation accuracy has not improved for this many epochs (None: off).
    device : {'cpu', 'gpu'}
    seed : int
        Seeds the weights, the data order and dropout.
    checkpoint_every : int
        Also checkpoint every this many steps inside an epoch (0: only at epoch ends).
    overfit_batch : bool
        Debug: every epoch trains one step on the same first training batch,
        and "validation" is that batch in eval mode.
    progress : bool
        Show a tqdm progress bar per epoch.
    augment : dict
        Batch-time augmentation of the training batches, ``engine.augment.AugmentConfig``'s
        fields (empty: off; evaluation never augments; ``--overfit-batch`` ignores it).
    sync_bn : bool
        Under ``--distributed``: BatchNorm statistics over the global batch (all ranks), not per rank.
    crops : {'random', 'fixed'}
        Training crop windows cut from each cached clip (``pipeline.windows.Windows``):
        'random' a new one per epoch from ``(seed, epoch, track)`` (default: the
        paper's "random 10 s crop", and more distinct images to learn from);
        'fixed' one per track for the whole run (as a cache of single crops).
    eval_crops : int
        Evenly spaced windows per clip whose probabilities are averaged in
        validation, test and ``evaluate`` (``predict`` uses the same number by
        default): 3 spans a 30 s clip with 10 s windows.
    """

    model: str = "cnn6_rgb"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 5e-4
    dropout: float = 0.4
    weight_decay: float = 0.0
    patience: int | None = None
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 50
    overfit_batch: bool = False
    progress: bool = True
    augment: dict = field(default_factory=dict)
    sync_bn: bool = False
    crops: str = "random"
    eval_crops: int = 3
    extra: dict = field(default_factory=dict)


def config_problems(cfg: TrainConfig) -> list:
    """Every invalid setting of ``cfg`` as ``(field, value, expected)`` triples (empty: all valid).

    The checks are those PyTorch's ``Adam`` / ``Dropout`` / ``DataLoader``
    make (lr > 0, weight_decay >= 0, 0 <= p < 1, batch_size >= 1), plus
    finite values and the loop's own limits: epochs >= 1, patience >= 1 (or
    None: off), checkpoint_every >= 0 (0: only at epoch ends), a known architecture and device.
    """
    from engine import models

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    bad = []
    if cfg.model not in models.MODELS:
        bad.append(("model", cfg.model, f"one of {sorted(models.MODELS)}"))
    if cfg.device not in ("cpu", "gpu"):
        bad.append(("device", cfg.device, "'cpu' or 'gpu'"))
    if not is_int(cfg.epochs) or cfg.epochs < 1:
        bad.append(("epochs", cfg.epochs, "an integer >= 1"))
    if not is_int(cfg.batch_size) or cfg.batch_size < 1:
        bad.append(("batch_size", cfg.batch_size, "an integer >= 1"))
    if not is_num(cfg.lr) or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        bad.append(("lr", cfg.lr, "a finite number > 0"))
    if not is_num(cfg.weight_decay) or not math.isfinite(cfg.weight_decay) or cfg.weight_decay < 0:
        bad.append(("weight_decay", cfg.weight_decay, "a finite number >= 0"))
    if not is_num(cfg.dropout) or not (0.0 <= cfg.dropout < 1.0):
        bad.append(("dropout", cfg.dropout, "a probability with 0 <= p < 1"))
    if cfg.patience is not None and (not is_int(cfg.patience) or cfg.patience < 1):
        bad.append(("patience", cfg.patience, "an integer >= 1 (or unset: no early stopping)"))
    if not is_int(cfg.checkpoint_every) or cfg.checkpoint_every < 0:
        bad.append(("checkpoint_every", cfg.checkpoint_every, "an integer >= 0 (0: only at epoch ends)"))
    if cfg.crops not in ("random", "fixed"):
        bad.append(("crops", cfg.crops, "'random' or 'fixed'"))
    if not is_int(cfg.eval_crops) or not 1 <= cfg.eval_crops <= MAX_EVAL_CROPS:
        bad.append(("eval_crops", cfg.eval_crops, f"an integer from 1 to {MAX_EVAL_CROPS}"))
    from engine import augment as aug_mod

    if not isinstance(cfg.augment, dict):
        bad.append(("augment", cfg.augment, "a dict of engine.augment.AugmentConfig fields"))
    else:
        unknown = sorted(set(cfg.augment) - set(aug_mod.AugmentConfig().to_dict()))
        if unknown:
            bad.append(("augment", unknown, f"fields of AugmentConfig {sorted(aug_mod.AugmentConfig().to_dict())}"))
        else:
            bad += aug_mod.config_problems(aug_mod.AugmentConfig.from_dict(cfg.augment))
    return bad


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming every invalid setting of ``cfg`` (see :func:`config_problems`).

    Raises
    ------
    ValueError
        e.g. ``"TrainConfig: batch_size = 0, expected an integer >= 1"``.
    """
    bad = config_problems(cfg)
    if bad:
        raise ValueError("TrainConfig: " + "; ".join(f"{f} = {v!r}, expected {e}" for f, v, e in bad))


def config_dict(cfg: TrainConfig) -> dict:
    """``TrainConfig`` as a plain dict (for ``config.json``)."""
    return asdict(cfg)


def model_mode(name: str) -> str:
    """'rgb' for the 3-channel models (``*_rgb``), else 'mono'."""
    return "rgb" if name.endswith("rgb") else "mono"


def build_model(cfg: TrainConfig, in_shape, n_classes: int):
    """``engine.models.build`` with the config's architecture, dropout and seed, on its device.

    Parameters
    ----------
    cfg : TrainConfig
    in_shape : tuple of int
        ``(C, H, W)`` of one input image.
    n_classes : int

    Returns
    -------
    engine.model.Sequential
    """
    from engine import models

    model = models.build(cfg.model, in_shape=tuple(in_shape), n_classes=n_classes,
                         dropout=cfg.dropout, seed=cfg.seed)
    if cfg.device != "cpu":
        moved = model.to(cfg.device)
        model = moved if moved is not None else model
    return model


def make_optimizer(model, cfg: TrainConfig):
    """PyTorch-convention Adam (``engine.optim.Adam``) over every parameter of ``model``."""
    from engine.optim import Adam

    return Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def input_shape(dataset, mode: str):
    """``(C, H, W)`` the model sees: the cache's H, W; C = 3 for rgb, 1 for mono."""
    if hasattr(dataset, "image_shape") and callable(dataset.image_shape):
        return tuple(int(v) for v in dataset.image_shape(mode))
    shp = tuple(dataset.images.shape[1:])
    return (3 if mode == "rgb" else 1, int(shp[-2]), int(shp[-1]))


def split_size(dataset, split: str) -> int:
    """Rows of ``dataset`` in ``split`` ('train', 'val' or 'test')."""
    return int((np.asarray(dataset.split) == split).sum())
