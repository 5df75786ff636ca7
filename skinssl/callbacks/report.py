"""The test report callback: ``metrics.json``, ``report.md``, ``per_class.csv``, ROC curves and
confusion matrices in the run directory and in TensorBoard, the summary printed. The report also
links the figures of an :class:`Explanations` callback that ran before it.

Works with any module that sets ``test_outputs`` (:class:`~skinssl.evaluation.CaseOutputs`) in
``on_test_epoch_end``, as :class:`~skinssl.lightning_modules.MultiLabelClassifier` does.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from skinssl.callbacks.explain import Explanations
from skinssl.callbacks.run_dir import log_dir, publish
from skinssl.evaluation.figures import confusion_figure, roc_figure
from skinssl.evaluation.report import build_report, markdown, write_report


class TestReport(L.Callback):
    """After ``test``, on rank 0: the full report of the test predictions.

    Args:
        resamples: bootstrap resamples over test cases for the 95 % intervals (0: none).
        seed: seed of the bootstrap.
        level: confidence level of the intervals.
        figures: also draw ROC curves and confusion matrices per head.
        print_report: print the Markdown report to stdout.
    """

    def __init__(
        self,
        resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
        figures: bool = True,
        print_report: bool = True,
    ) -> None:
        if resamples < 0 or not 0 < level < 1:
            raise ValueError(f"report: resamples {resamples} must be >= 0, level {level} in (0, 1)")
        self.resamples = resamples
        self.seed = seed
        self.level = level
        self.figures = figures
        self.print_report = print_report

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs = getattr(pl_module, "test_outputs", None)
        if outputs is None:
            return
        out = log_dir(trainer)
        report = build_report(outputs, self.resamples, self.seed, self.level)
        report["weights"] = (
            f"checkpoint {trainer.ckpt_path}"
            if trainer.ckpt_path
            else "the config's model as built (its init_from / weights), no fitted checkpoint"
        )
        figures = []
        if self.figures:
            for h, r in report["heads"].items():
                roc = roc_figure(outputs.probs[h], outputs.target(h), h)
                figures.append(publish(trainer, roc, f"roc_{h}", f"test/roc/{h}"))
                cm = confusion_figure(r["confusion"], h)
                figures.append(publish(trainer, cm, f"confusion_{h}", f"test/confusion/{h}"))
        figures += [f for c in trainer.callbacks if isinstance(c, Explanations) for f in c.figures]
        text = markdown(report, f"Test report: {out}", [str(f.relative_to(out)) for f in figures])
        write_report(report, out, text)
        if self.print_report:
            print(f"\n{text}")
