"""How the ``skinssl`` command reports what stops it: bad input in one line with what to do,
an unknown argument with the nearest name, a stop by signal or by another process."""

from __future__ import annotations

import difflib
import errno
import inspect
import re
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from skinssl.cli_checkpoints import import_class
from skinssl.datamodules.cases import DataError


class ConciseParser(LightningArgumentParser):
    """Parse errors without the full usage (dozens of lines): the tip and the error only; an
    unknown argument of a model or data class in one line, with the nearest name."""

    def print_usage(self, file: Any = None) -> None:
        """Nothing: ``--help`` shows the options."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(unknown_argument(message) or message, ex)


def named(kind: type) -> list[str]:
    """The named arguments of a class's own ``__init__``."""
    params = inspect.signature(kind.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def unknown_argument(message: str) -> str | None:
    """jsonargparse's report of an argument a class does not take (every type of the Union it
    tried), as one line naming the class and the nearest of its arguments; None otherwise."""
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"given class_path '([^']+)':\s*Option '([^']+)' is not accepted", message)
    kind = import_class(given.group(1)) if given else None
    if key is None or kind is None:
        return None
    names = sorted({n for c in inspect.getmro(kind) if "__init__" in vars(c) for n in named(c)})
    option = given.group(2)
    near = difflib.get_close_matches(option, names, n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"its arguments: {', '.join(names)}"
    return f"{key.group(1)}: {kind.__name__} takes no argument {option!r}; {hint}"


WORKER_DATA_ERROR = f"{DataError.__module__}.{DataError.__qualname__}: "
"""Where a worker's traceback, in the message of the error torch raises again, ends."""


ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"  # torch's


BATCH_OF_ONE = (
    "a training batch of one case reached a BatchNorm layer in training mode, which cannot "
    "normalise one value per channel (an epoch's last batch: the run warned at its start). Set "
    "--data.init_args.drop_last=true or another --data.init_args.batch_size"
)


def own_error(error: BaseException) -> ValueError | None:
    """The innermost ValueError raised by skinssl's own code in ``error``'s chain (jsonargparse
    wraps a class's error in its report of every type it tried), or None. A ``DataError`` a
    loader worker raised (torch raises it again with the worker's traceback in its message)
    comes back with its own message alone; torch's BatchNorm error for a batch of one, with
    what to change."""
    package, found, seen = Path(__file__).parent, None, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        raised_here = tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(
            package
        )
        if isinstance(current, ValueError) and raised_here:
            found = current
        elif isinstance(current, DataError) and WORKER_DATA_ERROR in str(current):
            found = DataError(str(current).rsplit(WORKER_DATA_ERROR, 1)[1].rstrip())
        elif isinstance(current, ValueError) and str(current).startswith(ONE_VALUE_PER_CHANNEL):
            found = ValueError(BATCH_OF_ONE)
        context = None if current.__suppress_context__ else current.__context__  # from None
        current = current.__cause__ or context
    return found


SIGTERM_STOP = (
    "skinssl: stopped by SIGTERM outside training, where nothing is saved. A fit continues "
    "with the same command and --resume true, from its run directory's checkpoints/last.ckpt"
)


# what gloo says in a process whose peer process stopped (e.g. on its data error)
PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


PEER_GONE_MESSAGE = (
    "another process of this run stopped (its error is above), so this one cannot go on"
)


# file-system errors that are the machine's, not skinssl's: said in one line, with what to do
FILE_SYSTEM_ERRORS = {
    errno.ENOSPC: "free space there, or write the runs elsewhere (trainer.logger.init_args"
    ".save_dir, trainer.default_root_dir)",
    errno.EDQUOT: "free space within your quota, or write the runs elsewhere",
    errno.EROFS: "write the runs to a writable folder (trainer.logger.init_args.save_dir)",
    errno.EACCES: "check its permissions, or use a folder you own",
}


def weights_mismatch(message: str) -> str | None:
    """torch's error for a checkpoint whose weights do not fit the model (e.g. a resume with
    other model settings), as one line with its first difference and what to do; else None."""
    head, _, details = message.partition("\n")
    if not head.startswith("Error(s) in loading state_dict for "):
        return None
    lines = [line.strip() for line in details.splitlines() if line.strip()]
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return (
        f"the checkpoint's weights do not fit the config's model ({head[35:].rstrip(':')}: "
        f"{lines[0] if lines else 'mismatch'}{more}): continue or evaluate it with the model "
        "settings it was trained with, e.g. its run's config.yaml (-c <run>/config.yaml) or "
        "the same --model.init_args overrides"
    )
