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
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from petlab.search.study import SearchSettings, open_study

log = logging.getLogger(__name__)


class ReportToTrial(L.Callback):
    """Report ``settings.monitor`` to trial ``number`` of the search after each validation; prune on its word."""

    def __init__(self, search_dir: str | Path, number: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "using an existing study": in every trial's log
        self.settings = SearchSettings.load(search_dir)
        self.number = number
        self.pruned_after: int | None = None  # the epochs trained when the pruner stopped the run
        self._trial: optuna.Trial | None = None
        self._ended = False  # the trial ended before this run: a resumed trial's run trains on by itself

    def trial(self) -> optuna.Trial | None:
        if self._trial is None and not self._ended:
            study = open_study(self.settings)
            (frozen,) = (t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            if frozen.state == TrialState.RUNNING:
                self._trial = optuna.Trial(study, frozen._trial_id)
            else:
                self._ended = True
                log.info(f"Trial {self.number} of {self.settings.directory} has ended ({frozen.state.name.lower()}): "
                         "this run trains on without reporting to the search")  # fmt: skip
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_after is not None:
            return
        value = trainer.callback_metrics.get(self.settings.monitor)
        prune = False
        if trainer.is_global_zero and value is not None and (trial := self.trial()) is not None:
            try:
                trial.report(float(value), step=trainer.current_epoch + 1)  # the pruners' resource: epochs trained
                prune = trial.should_prune()
            except UpdateFinishedTrialError:  # taken for lost (its worker's heartbeat was late) and retried
                self._ended = True
                self._trial = None
                log.warning(f"Trial {self.number} was ended by the search meanwhile: this run trains on by itself")
        if trainer.strategy.broadcast(prune):  # every rank stops together
            self.pruned_after = trainer.current_epoch + 1
            trainer.should_stop = True
        if self.pruned_after is not None and trainer.is_global_zero:
            log.info(f"Pruned after epoch {self.pruned_after}: {self.settings.monitor} {float(value):.4f} falls "
                     f"behind the other trials ({self.settings.pruner} pruner)")  # fmt: skip
