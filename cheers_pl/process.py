"""How a process that may have run distributed training ends: the process-group teardown and the exit.

Kept apart from `cheers_pl.train` (torch only, no Lightning): `python -m cheers_pl` and the multi-process test
drivers end through `exit_process`.
"""

import logging
import os
import sys

import torch


def end_process_group() -> None:
    """Tears down the default process group that Lightning leaves up (registered at exit by `train.run` after a
    multi-process fit; not after each fit: a process that trains again, as ablate and the resume tests do, reuses
    the group). A gloo group left to the interpreter's exit once aborted a finished 2-rank run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_process(code: int) -> None:
    """Ends the process with `code`. After a multi-process run (a process group was set up here), the group is torn
    down, stdio flushed and the exit immediate (`os._exit`): the interpreter's own teardown of a finished gloo run
    still aborted it now and then ("terminate called without an active exception", exit -6, seen in the 2-rank
    FSDP test after every output was written), even with the group destroyed at exit. Everything a run writes
    (checkpoints, TensorBoard events, the result) is on disk before `train.run` returns, so nothing is skipped.
    Without a process group this is `sys.exit(code)`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        sys.exit(code)
    end_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
