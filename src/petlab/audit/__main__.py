"""``python -m petlab.audit [data=...] [task=...] [audit.sections=[...]]``: see :mod:`petlab.audit`."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from petlab.cli import one_line_config_errors, user_facing
from petlab.config import config_dir
from petlab.resolvers import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="audit")
@user_facing
def main(cfg: DictConfig) -> None:
    from petlab.audit.run import audit  # imported here: --help answers without loading torch

    sections = audit(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    for section in sections.values():
        print(f"{section.name}: {'skipped: ' + section.skipped if section.skipped else section.summary}")
    print(f"Audit written to {output_dir} (report.md, CSVs, contact sheets, exclude.txt, relabel.csv, tensorboard/)")


if __name__ == "__main__":
    main()
