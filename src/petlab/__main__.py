"""``python -m petlab [overrides]``: train one configuration, or a sweep with ``-m``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from petlab.cli import exit_if_jobs_failed, one_line_config_errors, user_facing
from petlab.config import config_dir, share_fixed_keys, share_run_id
from petlab.errors import PetlabError
from petlab.resolvers import register_resolvers
from petlab.resume import overrides_of, resume_arguments
from petlab.slurm import use_queue_when_no_accounting

register_resolvers()


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@user_facing
def train_job(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg` answer without loading torch.
    from petlab.train import train

    return train(cfg).get(cfg.get("optimized_metric"))


def is_search(argv: list[str]) -> bool:
    """A hyperparameter search (``-m hparams_search=...``), run by petlab's own search rather than Hydra's sweeper;
    ``--help`` and ``--cfg`` still show the composed config."""
    asks = {"--help", "-h", "--cfg", "-c", "--info", "--hydra-help"}
    # Without -m, as with Hydra's sweepers, the search file is only composed into one run: how a search's
    # trials run, with the budget the file sets.
    multirun = {"-m", "--multirun"} & set(argv)
    return any(a.startswith("hparams_search=") for a in argv) and bool(multirun) and not asks & set(argv)


def main() -> None:
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
    except PetlabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if is_search(sys.argv[1:]):
        try:  # imported here: Optuna is the sweep extra's, and only a search needs it
            from petlab.search.run import main as search
        except ImportError as error:
            print(f"error: a search needs {error.name}: pip install -e '.[sweep]'", file=sys.stderr)
            sys.exit(2)
        search(sys.argv[1:])
        return
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        use_queue_when_no_accounting()
        share_run_id()
        share_fixed_keys(overrides_of(sys.argv[1:]))
    train_job()
    exit_if_jobs_failed()


if __name__ == "__main__":
    main()
