"""Pretrain each method, fine-tune it in each setting and label fraction, test, write one table.

For every method (and seed) the pretraining runs once; then for every setting (``linear``:
heads on frozen trunks; ``finetune``: trunks too) and label fraction the downstream classifier
is fitted with its checkpoint chosen on validation (``val/auc_key_classes``, as the configs
monitor) and tested. Every run is
the ``skinssl`` CLI in a subprocess on the shipped configs (``configs/baselines``,
``configs/sm3``), shrunk by the budget's overrides. ``results.json`` in the output folder is
rewritten after every finished cell (method x setting x label fraction x seed) and pretraining,
so a rerun of the same command skips what is done and resumes an interrupted fit from its
``last.ckpt``. The Markdown table (mean ± std over seeds) is printed and written to
``table.md``.

Methods: each pretraining config in ``configs/baselines`` by name (``simclr``, ``byol``,
``moco``, ``simsiam``, ``barlow_twins``, ``swav``, ``deepcluster_v2``; optionally ``:derm``,
``:clinic`` or ``:both``, the default), ``sm3``
(stage 1 + stage 2, downstream on its label tokens), and the reference rows ``supervised``
(random trunks) and ``imagenet`` (ImageNet trunks; needs the torchvision weights).

    # CPU-sized run on the built-in synthetic data (the defaults)
    python bench/compare.py --seeds 0 1
    # the published budget (configs as shipped: ResNet-50, 224 px, 400 + 100 epochs, GPUs)
    python bench/compare.py --budget published --data derm7pt --root data/derm7pt \\
        --methods sm3 simclr byol moco simsiam barlow_twins swav deepcluster_v2 \\
        simclr:derm supervised imagenet --fractions 1.0 0.1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCES = {"supervised": "supervised_scratch", "imagenet": "supervised_imagenet"}
# every pretraining config in configs/baselines (a new method's config joins by its name)
SSL_METHODS = tuple(
    sorted(
        p.stem
        for p in (REPO / "configs" / "baselines").glob("*.yaml")
        if p.stem not in ("finetune", *REFERENCES.values())
    )
)
HEADS = ("DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS")
CPU_METHODS = [
    "sm3", "simclr", "byol", "moco", "simsiam", "barlow_twins", "swav", "deepcluster_v2",
    "simclr:derm", "supervised",
]  # fmt: skip
# CPU budget: each method's heads shrunk to the ResNet-18 size of the quick start (a method
# not listed keeps its config's heads)
CPU_HEADS = {
    "sm3": ["proj_hidden=512", "proj_dim=128"],
    "simclr": ["proj_hidden=512", "proj_dim=128"],
    "byol": ["proj_hidden=512", "proj_dim=128"],
    "moco": ["proj_hidden=512", "proj_dim=128", "queue_size=128"],
    "simsiam": ["proj_hidden=512", "proj_dim=512", "pred_hidden=128"],
    "barlow_twins": ["proj_hidden=512", "proj_dim=512"],
    "swav": ["proj_hidden=512", "proj_dim=128", "num_prototypes=10"],
    "deepcluster_v2": ["proj_hidden=512", "proj_dim=128", "num_clusters=10"],
}


@dataclass
class Budget:
    """What the shipped configs are shrunk to (None: keep the config's value)."""

    name: str
    pretrain_epochs: int | None
    epochs: int | None
    image_size: int | None
    backbone: str | None
    batch_size: int | None
    num_workers: int | None

    def trainer_args(self) -> list[str]:
        if self.name == "published":
            return []
        return [
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
            "--trainer.sync_batchnorm=false",
            "--trainer.log_every_n_steps=5",
        ]

    def data_args(self) -> list[str]:
        args = []
        if self.image_size:
            args += [
                f"--data.init_args.image_size={self.image_size}",
                f"--data.init_args.cache_size={self.image_size * 9 // 8}",
            ]
        if self.batch_size:
            args.append(f"--data.init_args.batch_size={self.batch_size}")
        if self.num_workers is not None:
            args.append(f"--data.init_args.num_workers={self.num_workers}")
        return args

    def model_args(self, weights: bool = True) -> list[str]:
        args = [f"--model.init_args.backbone={self.backbone}"] if self.backbone else []
        if weights and self.name != "published":
            args.append("--model.init_args.weights=null")  # no download on the CPU budget
        return args


BUDGETS = {
    "cpu": Budget("cpu", 3, 4, 48, "resnet18", 32, 0),
    "published": Budget("published", None, None, None, None, None, None),
}


def arg(name: str, value: object) -> str:
    return f"--{name}={value}"


def single_modality_views(config: Path, modality: str) -> list[str]:
    """Arguments that make no training views of the modality a single-modality run leaves
    unused; the used one keeps the config's views (``clinic_views`` defaults to
    ``derm_views``)."""
    if modality == "derm":
        return [arg("data.init_args.clinic_views", '{"n": 0}')]
    if modality == "clinic":
        data = yaml.safe_load(config.read_text())["data"]["init_args"]
        views = json.dumps(data.get("clinic_views") or data["derm_views"])
        return [
            arg("data.init_args.clinic_views", views),
            arg("data.init_args.derm_views", '{"n": 0}'),
        ]
    return []


def cli_env() -> dict[str, str]:
    """The CLI runs' environment. Inside a SLURM allocation (this script as its one task),
    Lightning would train with the allocation's tasks (one process, not the config's devices);
    with the job name ``interactive`` it launches the config's processes itself."""
    env = dict(os.environ)
    if "SLURM_NTASKS" in env:
        env["SLURM_JOB_NAME"] = "interactive"
    return env


class Bench:
    """One results folder: runs, ``results.json``, ``table.md``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.budget = BUDGETS[args.budget]
        for key in ("pretrain_epochs", "epochs", "image_size", "backbone", "batch_size"):
            if getattr(args, key) is not None:
                setattr(self.budget, key, getattr(args, key))
        self.results_path = self.out / "results.json"
        self.results = (
            json.loads(self.results_path.read_text())
            if self.results_path.is_file()
            else {"pretrain": {}, "cells": {}}
        )
        before = self.results.get("meta", {})
        now = {"budget": vars(self.budget), "data": self.source()}
        differ = [k for k in now if k in before and before[k] != now[k]]
        if differ:  # its finished cells would be reused as if made with this run's settings
            raise SystemExit(
                f"{self.results_path} holds runs with another {' and '.join(differ)} "
                f"({', '.join(f'{k}: {before[k]}' for k in differ)}): use another --out"
            )

    def source(self) -> dict[str, Any]:
        """What the data are, for the check against the runs already in the folder."""
        a = self.args
        keys = {"synthetic": ("root", "num_cases", "synthetic_size"), "derm7pt": ("root",),
                "csv": ("csv",)}[a.data]  # fmt: skip
        return {"source": a.data, **{k: getattr(a, k) for k in keys}}

    # ------------------------------------------------------------------ running
    def skinssl(self, stage: str, config: str, *extra: str) -> float:
        """Run the CLI in a subprocess; its wall time in seconds."""
        command = [sys.executable, "-m", "skinssl.cli", stage, "-c", str(REPO / config)]
        command += [*extra, "--trainer.enable_progress_bar=false"]
        if stage == "fit":
            command.append("--resume=true")  # an interrupted fit continues from last.ckpt
        start = time.perf_counter()
        log = self.out / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            f.write(" ".join(command) + "\n")
            f.flush()
            done = subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, cwd=self.out, env=cli_env()
            )
        if done.returncode:
            said = [ln for ln in log.read_text().splitlines() if ln.startswith("skinssl: error:")]
            reason = f"\n{said[-1]}" if said else ""
            raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}{reason}\nlog: {log}")
        return time.perf_counter() - start

    def data_args(self, seed: int, fraction: float = 1.0) -> list[str]:
        a = self.args
        if a.data == "synthetic":
            root = str(Path(a.root).resolve()) if a.root else str(self.out / "data" / "synthetic")
            data = [
                "--data.class_path=skinssl.datamodules.SyntheticDerm7ptDataModule",
                arg("data.init_args.root", root),
                arg("data.init_args.num_cases", a.num_cases),
                arg("data.init_args.synthetic_size", a.synthetic_size),
            ]
        elif a.data == "derm7pt":
            data = [
                "--data.class_path=skinssl.datamodules.Derm7ptDataModule",
                arg("data.init_args.root", Path(a.root).resolve()),
            ]
        else:
            data = [
                "--data.class_path=skinssl.datamodules.PairedCSVDataModule",
                arg("data.init_args.csv_path", Path(a.csv).resolve()),
            ]
        data += [arg("data.init_args.label_fraction", fraction)]
        data += [arg("data.init_args.split_seed", seed), arg("seed_everything", seed)]
        return data + self.budget.data_args() + self.budget.trainer_args()

    def run_dir(self, method: str, version: str) -> list[str]:
        return [
            arg("trainer.logger.init_args.save_dir", self.out / "runs"),
            arg("trainer.logger.init_args.name", method.replace(":", "-")),
            arg("trainer.logger.init_args.version", version),
        ]

    def ckpt(self, method: str, version: str, name: str) -> Path:
        return self.out / "runs" / method.replace(":", "-") / version / "checkpoints" / name

    def save(self) -> None:
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        os.replace(tmp, self.results_path)

    # -------------------------------------------------------------- pretraining
    def pretrain(self, method: str, seed: int) -> str | None:
        """Pretrain once per method and seed; the checkpoint downstream starts from."""
        if method in REFERENCES:
            return None
        key = f"{method}|s{seed}"
        done = self.results["pretrain"].get(key)
        if done:
            return done["ckpt"]
        budget, data = self.budget, self.data_args(seed)
        epochs = []
        if budget.pretrain_epochs:
            epochs.append(arg("trainer.max_epochs", budget.pretrain_epochs))
        cpu = budget.name == "cpu"
        name, _, modality = method.partition(":")
        heads = [f"--model.init_args.{h}" for h in CPU_HEADS.get(name, [])] if cpu else []
        if cpu:
            heads += ["--model.init_args.lr=0.001", "--model.init_args.schedule=cosine"]
            heads += ["--model.init_args.warmup_epochs=1"]
        if name == "sm3":
            stage1 = self.ckpt(method, f"stage1-s{seed}", "last.ckpt")
            seconds = self.skinssl(
                "fit", "configs/sm3/stage1.yaml", *data, *epochs, *budget.model_args(), *heads,
                *self.run_dir(method, f"stage1-s{seed}"),
            )  # fmt: skip
            # all 8 heads clustered (as the authors' code), so that every head has a pretrained
            # token for the linear setting
            stage2_extra = ["--model.init_args.heads=[DIAG,PN,BWV,VS,PIG,STR,DaG,RS]"]
            if cpu:  # small data: no one-case last batch for the input BatchNorm
                stage2_extra += [
                    "--model.init_args.input_norm=true",
                    "--data.init_args.drop_last=true",
                ]
            seconds += self.skinssl(
                "fit", "configs/sm3/stage2.yaml", *data, *epochs, *budget.model_args(False),
                arg("model.init_args.pretrained", stage1), *stage2_extra,
                *self.run_dir(method, f"stage2-s{seed}"),
            )  # fmt: skip
            path = self.ckpt(method, f"stage2-s{seed}", "last.ckpt")
        else:
            config = f"configs/baselines/{name}.yaml"
            extra = [arg("model.init_args.modality", modality)] if modality else []
            extra += single_modality_views(REPO / config, modality)
            seconds = self.skinssl(
                "fit", config, *data, *epochs, *budget.model_args(),
                *heads, *extra, *self.run_dir(method, f"pretrain-s{seed}"),
            )  # fmt: skip
            path = self.ckpt(method, f"pretrain-s{seed}", "last.ckpt")
        self.results["pretrain"][key] = {"ckpt": str(path), "seconds": seconds}
        self.save()
        return str(path)

    # --------------------------------------------------------------- downstream
    def cell(self, method: str, setting: str, fraction: float, seed: int) -> None:
        key = f"{method}|{setting}|{fraction:g}|s{seed}"
        if key in self.results["cells"]:
            return
        init_from = self.pretrain(method, seed)
        budget = self.budget
        if method == "sm3":
            config = "configs/sm3/finetune.yaml"
        elif method in REFERENCES:
            config = f"configs/baselines/{REFERENCES[method]}.yaml"
        else:
            config = "configs/baselines/finetune.yaml"
        version = f"{setting}-f{fraction:g}-s{seed}"
        extra = [
            *self.data_args(seed, fraction),
            *self.run_dir(method, version),
            arg("model.init_args.setting", setting),
            *budget.model_args(weights=method == "supervised"),
        ]
        if budget.epochs:
            extra.append(arg("trainer.max_epochs", budget.epochs))
        if budget.name == "cpu":
            extra += ["--model.init_args.trunk_lr=0.0003", "--model.init_args.freeze_stem=false"]
            if method == "sm3":
                extra.append("--model.init_args.input_norm=true")
        if init_from:
            extra.append(arg("model.init_args.init_from", init_from))
        seconds = self.skinssl("fit", config, *extra)
        best = self.ckpt(method, version, "best.ckpt")
        quiet = ["--report.resamples=0", "--report.figures=false", "--report.print_report=false"]
        quiet += ["--explain.attention=false", "--explain.gradcam_cases=0", "--views.cases=0"]
        self.skinssl("test", config, *extra, arg("ckpt_path", best), *quiet)
        metrics = json.loads((best.parents[1] / "metrics.json").read_text())
        pretrain = self.results["pretrain"].get(f"{method}|s{seed}", {}).get("seconds", 0.0)
        self.results["cells"][key] = {
            **summarise(metrics),
            "fit_seconds": seconds,
            "pretrain_seconds": pretrain,
        }
        self.save()

    def run(self) -> None:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["meta"] = {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": " ".join(sys.argv),
            "budget": vars(self.budget),
            "data": self.source(),
        }
        for seed in a.seeds:
            for method in a.methods:
                for setting in a.settings:
                    if setting == "projector" and method != "sm3":
                        continue  # (heads on the trunks: the same run as linear)
                    for fraction in a.fractions:
                        self.cell(method, setting, fraction, seed)
                        print(f"done {method} {setting} {fraction:g} seed {seed}", flush=True)
        table = markdown(self.results["cells"], a.methods, a.settings, a.fractions, a.seeds)
        (self.out / "table.md").write_text(table)
        print("\n" + table + f"\nwrote {self.results_path} and {self.out / 'table.md'}")


def summarise(metrics: dict) -> dict:
    """The table's numbers from a test run's ``metrics.json`` (null: undefined on the data)."""
    heads, summary = metrics["heads"], metrics["summary"]
    diagnosis = heads.get("DIAG", {"classes": []})  # a model without the diagnosis head: None
    mel = next((r for r in diagnosis["classes"] if r["class"] == "MEL"), {})
    return {
        "auc_per_head": {h: r["auc_macro"] for h, r in heads.items()},
        "auc_classes_mean": summary["auc_all_classes"]["value"],
        "auc_mean": summary["mean_auc_macro_heads"]["value"],
        "accuracy_mean": summary["mean_accuracy_heads"]["value"],
        "mel_sensitivity": mel.get("sensitivity"),
        "mel_specificity": mel.get("specificity"),
    }


def mean_std(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    kept = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return "–"
    if len(kept) == 1:
        return f"{kept[0]:.{digits}f}"
    return f"{statistics.mean(kept):.{digits}f} ± {statistics.stdev(kept):.{digits}f}"


def markdown(
    cells: dict, methods: list[str], settings: list[str], fractions: list[float], seeds: list[int]
) -> str:
    """Rows: method x setting x label fraction; metrics in % (mean ± std over seeds)."""
    columns = [
        "method", "setting", "labels", "seeds", *HEADS, "AUC 24 cls", "mean acc",
        "MEL sens", "MEL spec", "pretrain s", "fine-tune s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for method in methods:
        for setting in settings:
            for fraction in fractions:
                runs = [
                    cells[k]
                    for s in seeds
                    if (k := f"{method}|{setting}|{fraction:g}|s{s}") in cells
                ]
                if not runs:
                    continue
                row = [method, setting, f"{100 * fraction:g} %", str(len(runs))]
                row += [mean_std([r["auc_per_head"].get(h) for r in runs]) for h in HEADS]
                row += [
                    mean_std([r[k] for r in runs])
                    for k in ("auc_classes_mean", "accuracy_mean", "mel_sensitivity")
                ]
                row.append(mean_std([r["mel_specificity"] for r in runs]))
                row += [
                    mean_std([r[k] for r in runs], scale=1.0, digits=0)
                    for k in ("pretrain_seconds", "fit_seconds")
                ]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", choices=["synthetic", "derm7pt", "csv"], default="synthetic")
    p.add_argument("--root", help="Derm7pt release folder (derm7pt) or synthetic data folder")
    p.add_argument("--csv", help="CSV of pairs (data csv; see PairedCSVDataModule)")
    p.add_argument("--num-cases", type=int, default=300, help="synthetic cases")
    p.add_argument("--synthetic-size", type=int, default=64, help="synthetic image height")
    p.add_argument("--methods", nargs="+", default=CPU_METHODS)
    p.add_argument(
        "--settings", nargs="+", choices=["linear", "projector", "finetune"],
        default=["linear", "finetune"],
    )  # fmt: skip
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budget", choices=list(BUDGETS), default="cpu")
    p.add_argument("--pretrain-epochs", type=int, help="override the budget's pretraining epochs")
    p.add_argument("--epochs", type=int, help="override the budget's fine-tuning epochs")
    p.add_argument("--image-size", type=int, help="override the budget's image size")
    p.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--batch-size", type=int, help="override the budget's batch size")
    p.add_argument("--out", default="bench/results/compare", help="results folder")
    args = p.parse_args(argv)
    for m in args.methods:
        name, _, modality = m.partition(":")
        known = name in SSL_METHODS or (name in ("sm3", *REFERENCES) and not modality)
        if not known or modality not in ("", "derm", "clinic", "both"):
            p.error(
                f"unknown method {m!r}; valid: sm3, {', '.join(REFERENCES)}, or one of "
                f"{', '.join(SSL_METHODS)} with an optional :derm, :clinic or :both"
            )
    if "projector" in args.settings and any(m != "sm3" for m in args.methods):
        print(
            "note: `projector` is SM3's 'SM3-linear' row (label projectors and relation module "
            "trained); the other methods' heads sit on the trunks, where it would be the same "
            "run as `linear`: their projector cells are not run",
            file=sys.stderr,
        )
    if args.data == "derm7pt" and not args.root:
        p.error("--data derm7pt needs --root (the Derm7pt release folder)")
    if args.data == "csv" and not args.csv:
        p.error("--data csv needs --csv (the CSV of pairs)")
    return args


if __name__ == "__main__":
    Bench(parse()).run()
