"""Messages for the user: printed once, by the process of rank zero under data parallelism."""

import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only


@rank_zero_only
def say(message: str, stream=None) -> None:
    print(message, file=stream or sys.stdout, flush=True)
