"""Why a training run stopped abnormally: the exceptions of :func:`engine.train.fit`, each with the CLI's exit code.

``Interrupted`` (130, Ctrl-C: a checkpoint was saved), ``NonFiniteLoss`` and
``NonFiniteWeights`` (3), ``CheckpointNotSaved`` (4, a full disk); their
messages end with :func:`resume_command` where a resume is possible.
"""
from __future__ import annotations

import os
import shlex

__all__ = ["TrainingError", "Interrupted", "NonFiniteLoss", "NonFiniteWeights", "CheckpointNotSaved",
           "resume_command"]


class TrainingError(RuntimeError):
    """A training run stopped abnormally; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class Interrupted(TrainingError):
    """SIGINT: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


class NonFiniteLoss(TrainingError):
    """The loss became NaN or inf; the message names the step."""

    exit_code = 3


class NonFiniteWeights(NonFiniteLoss):
    """Weights, BatchNorm statistics or Adam moments became NaN / inf; they were not saved."""


class CheckpointNotSaved(TrainingError):
    """The run ended with a checkpoint it could not write (e.g. a full disk); the message says how to resume."""

    exit_code = 4


def resume_command(out) -> str:
    """The shell-quoted command that resumes the run in ``out``."""
    return shlex.join(["python", "cli.py", "train", "--resume", "--out", os.fspath(out)])
