"""``python -m petlab [overrides]``: train one configuration, or a sweep with ``-m``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from petlab.cli import exit_if_jobs_failed, user_facing
from petlab.config import config_dir, share_fixed_keys, share_run_id
from petlab.errors import PetlabError
from petlab.resolvers import register_resolvers
from petlab.resume import overrides_of, resume_arguments

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@user_facing
def train_job(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg` answer without loading torch.
    from petlab.train import train

    return train(cfg).get(cfg.get("optimized_metric"))


def main() -> None:
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
    except PetlabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if {"-m", "--multirun"} & set(sys.argv[1:]) or any(a.startswith("hparams_search=") for a in sys.argv[1:]):
        share_run_id()
        share_fixed_keys(overrides_of(sys.argv[1:]))
    train_job()
    exit_if_jobs_failed()


if __name__ == "__main__":
    main()
