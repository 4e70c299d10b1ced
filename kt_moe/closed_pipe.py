"""Commands that print (the kt-moe CLI, the bench scripts) stop quietly when the reader of their
output goes away first, as in `kt-moe schema | head`: no BrokenPipeError traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

SIGPIPE_STATUS = 141  # the status of a command a closed pipe stops: 128 + SIGPIPE (13)


def quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """command()'s exit status, or SIGPIPE_STATUS when stdout's pipe was closed under it."""
    try:
        status = command()
        sys.stdout.flush()  # the last lines may still be buffered: a closed pipe shows here
        return status
    except BrokenPipeError:
        # Python flushes stdout once more at exit; pointing it at /dev/null lets that flush succeed
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_STATUS
