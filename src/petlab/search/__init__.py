"""Hyperparameter search with Optuna: a study in a shared storage, workers that pull trials from it as they
free up (local processes or SLURM jobs), trials that are ordinary petlab runs and report each validation so
that a pruner can stop the ones that fall behind.

``study`` (settings, storage, sampler, pruner) and ``space`` (the search space) sit low; ``pruning`` is the
callback a trial's training uses; ``worker`` runs trials; ``run`` is the command that starts a search.
"""
