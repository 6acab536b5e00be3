"""``python -m petlab [overrides]``: train one configuration, or a sweep with ``-m``."""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from petlab.config import config_dir, register_resolvers

register_resolvers()
log = logging.getLogger("petlab")


def _route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; Hydra's root handlers (console and run log) suffice."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()  # an advertisement, not information
    )


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg` answer without loading torch.
    from petlab.train import train, user_error

    _route_lightning_logs_through_hydra()
    try:
        metrics = train(cfg)
    except Exception as error:
        problem = user_error(error)
        if problem is None:
            raise
        log.error(f"error: {problem}")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise problem from None  # Hydra records the failed job and runs the others
        raise SystemExit(2) from None
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
