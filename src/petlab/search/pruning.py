"""The callback through which a trial's training talks to its study: it reports the monitored metric after
every validation and stops the run, as a finished one, when the pruner says the trial falls behind.

optuna-integration's ``PyTorchLightningPruningCallback`` raises ``TrialPruned`` out of ``fit``; this one lets
the run end normally instead, so that a pruned trial keeps its checkpoints, metrics.json and TensorBoard
events, and says in its directory that it was pruned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import optuna

from petlab.search.study import SearchSettings, open_study

log = logging.getLogger(__name__)


class ReportToTrial(L.Callback):
    """Report ``settings.monitor`` to trial ``number`` of the search after each validation; prune on its word."""

    def __init__(self, search_dir: str | Path, number: int) -> None:
        self.settings = SearchSettings.load(search_dir)
        self.number = number
        self.pruned_after: int | None = None  # the epochs trained when the pruner stopped the run
        self._trial: optuna.Trial | None = None

    def trial(self) -> optuna.Trial:
        if self._trial is None:
            study = open_study(self.settings)
            (frozen,) = (t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            self._trial = optuna.Trial(study, frozen._trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_after is not None:
            return
        value = trainer.callback_metrics.get(self.settings.monitor)
        prune = False
        if trainer.is_global_zero and value is not None:
            epochs = trainer.current_epoch + 1  # the resource the pruners count: epochs trained
            self.trial().report(float(value), step=epochs)
            prune = self.trial().should_prune()
        if trainer.strategy.broadcast(prune):  # every rank stops together
            self.pruned_after = trainer.current_epoch + 1
            trainer.should_stop = True
        if self.pruned_after is not None and trainer.is_global_zero:
            log.info(f"Pruned after epoch {self.pruned_after}: {self.settings.monitor} {float(value):.4f} falls "
                     f"behind the other trials ({self.settings.pruner} pruner)")  # fmt: skip
