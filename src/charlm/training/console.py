"""Messages for the user: printed once, by the process of rank zero under data parallelism, and copied
to the run's train.log (conf/config.yaml's hydra.job_logging gives the "charlm" logger that file)."""

import logging
import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

from charlm.core.errors import log


@rank_zero_only
def say(message: str, stream=None) -> None:
    print(message, file=stream or sys.stdout, flush=True)
    log.log(logging.WARNING if stream is sys.stderr else logging.INFO, message)


def is_rank_zero() -> bool:
    """The first process of a data-parallel run (every process when launched by torchrun or SLURM)."""
    return getattr(rank_zero_only, "rank", 0) == 0
