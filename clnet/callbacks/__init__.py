"""Callbacks: what a Trainer calls during a fit, one file each; subclass `Callback` for your own.

`Model.fit`'s keywords build the usual ones: verbose -> Progress, log -> MetricsLog, checkpoint ->
Checkpoint, schedule -> LearningRateScheduler, early_stopping -> EarlyStopping, and a NaNGuard
always; `callbacks=` adds any others (SaveBest, PlotCurves, yours).
"""

from .base import Callback, check_state
from .checkpoint import Checkpoint
from .early_stopping import EarlyStopping
from .metrics_log import MetricsLog
from .nan_guard import NaNGuard
from .plot_curves import PlotCurves
from .progress import Progress
from .save_best import SaveBest
from .schedule import SCHEDULES, CosineLR, LearningRateScheduler, ReduceLROnPlateau, Schedule, StepLR

__all__ = ["Callback", "Checkpoint", "CosineLR", "EarlyStopping", "LearningRateScheduler", "MetricsLog", "NaNGuard",
           "PlotCurves", "Progress", "ReduceLROnPlateau", "SCHEDULES", "SaveBest", "Schedule", "StepLR", "check_state"]
