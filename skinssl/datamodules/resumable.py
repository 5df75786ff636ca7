"""Training order that is a function of (seed, epoch) and can resume in the middle of an epoch.

The sampler yields ``(position, epoch)`` keys: the dataset seeds each case's augmentations from
(seed, epoch, case), so a case gets the same views whichever worker, rank or restart loads it.
The loader implements Lightning's ``state_dict``/``load_state_dict`` protocol: a checkpoint
taken mid-epoch records the epoch and the batches already trained on, and the resumed loader
starts with the next batch of the same permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (seeded permutation per epoch, one shard per rank) that yields
    ``(position, epoch)`` and can skip the first ``skip`` keys of its next iteration."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        return iter([(i, epoch) for i in list(super().__iter__())[skip:]])


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position survives a checkpoint.

    ``progress`` returns (batches of the current epoch the training loop has finished, batches
    per epoch as the loop counts them, e.g. after ``limit_train_batches``); the loader itself
    runs ahead of the loop by its prefetch, so it cannot count them.
    """

    def __init__(
        self, *args: Any, progress: Callable[[], tuple[int, int]] = lambda: (0, 1), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: (epoch, batches of it already trained on), and the
        layout (ranks, batch size) those batches were cut with."""
        done, per_epoch = self.progress()
        layout = {"replicas": self.sampler.num_replicas, "batch_size": int(self.batch_size)}
        if done >= per_epoch:  # the epoch is complete: the next one starts from its beginning
            return {"epoch": self.sampler.epoch + 1, "batches": 0, **layout}
        return {"epoch": self.sampler.epoch, "batches": int(done), **layout}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after ``state["batches"]`` batches of epoch ``state["epoch"]``.

        Mid-epoch, the ranks and batch size must be those of the run that stopped: with others
        the remaining cases of the epoch are not the ones not yet seen.
        """
        then = (state.get("replicas", self.sampler.num_replicas), state.get("batch_size"))
        now = (self.sampler.num_replicas, self.batch_size)
        if state["batches"] and then[1] is not None and then != now:
            raise ValueError(
                f"this checkpoint stopped mid-epoch with {then[0]} process(es) x batch {then[1]}; "
                f"resuming with {now[0]} x {now[1]} would repeat or skip cases. Resume with "
                f"{then[0]} process(es) (--trainer.devices={then[0]}, or devices x num_nodes = "
                f"{then[0]}) and --data.init_args.batch_size={then[1]}: after this epoch, a "
                "resume may change them. Or start from a checkpoint taken at an epoch's end"
            )
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = state["batches"] * self.batch_size
