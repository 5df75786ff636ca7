"""``skinssl fit|validate|test|predict -c CONFIG``: the LightningCLI entry point."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from skinssl.callbacks import TestReport


class SkinSSLCLI(LightningCLI):
    """LightningCLI with the test report always attached (configurable as ``report``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TestReport, "report")


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: the command line)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_float32_matmul_precision("high")
    SkinSSLCLI(
        args=args,
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
