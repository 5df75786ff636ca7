"""The SLURM templates' command line under the environment a 2-task SLURM job sets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from skinssl.callbacks import GlooExit, Preemption, StepSeed
from skinssl.cli import build_cli

REPO = Path(__file__).resolve().parents[1]


def srun_arguments(template: Path, env: dict[str, str], tmp_path: Path, *extra: str) -> list[str]:
    """The arguments the template gives ``srun`` (run by bash with a stand-in ``srun``)."""
    bin_dir, out = tmp_path / "bin", tmp_path / "srun_args"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {out}\n')
    (bin_dir / "srun").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(["bash", str(template), *extra], env={**env, "PATH": path},
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out.read_text().split("\0")[:-1]


# the second task of a 2-task job: on one node with 2 GPUs, or on 2 nodes with 1 GPU each
LAYOUTS = {
    "single_node.sbatch": dict(nodes=1, per_node=2, local_rank=1, node_id=0),
    "multi_node.sbatch": dict(nodes=2, per_node=1, local_rank=0, node_id=1),
}


@pytest.mark.parametrize("template", sorted(LAYOUTS))
def test_lightning_picks_up_a_two_task_job(
    template: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    layout = LAYOUTS[template]
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "skinssl",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": str(layout["per_node"]),
        "SLURM_NNODES": str(layout["nodes"]),
        "SLURM_NODELIST": "node[001-002]" if layout["nodes"] == 2 else "node001",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": str(layout["local_rank"]),
        "SLURM_NODEID": str(layout["node_id"]),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs/quickstart/stage1.yaml")
    args = srun_arguments(REPO / "scripts/slurm" / template, env, tmp_path, config, "--x=a b")
    assert args[:5] == ["--kill-on-bad-exit=1", "skinssl", "fit", "-c", config]
    assert args[-1] == "--x=a b"  # the job's own arguments, as given
    # without --ntasks-per-node: the job's tasks spread over its nodes
    spread = {k: v for k, v in env.items() if k != "SLURM_NTASKS_PER_NODE"}
    devices = f"--trainer.devices={layout['per_node']}"
    assert devices in srun_arguments(REPO / "scripts/slurm" / template, spread, tmp_path, config)
    # the test machine has no GPU: same layout with gloo on the CPU
    args = [a.replace("accelerator=gpu", "accelerator=cpu") for a in args[3:-1]]
    cli = build_cli([*args, "--data.init_args.num_workers=0"], run=False)
    trainer = cli.trainer
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank) == (2, 1)
    assert (trainer.local_rank, trainer.node_rank) == (layout["local_rank"], layout["node_id"])
    assert trainer.num_nodes == layout["nodes"] and trainer.num_devices == layout["per_node"]
    assert cluster.main_address == "node001"
    # a requeued job runs the same line: it resumes from the run's last.ckpt
    assert cli.config.resume is True
    preemption = [c for c in trainer.callbacks if isinstance(c, Preemption)]
    assert [c.signal_name for c in preemption] == ["SIGUSR1"]
    assert sum(isinstance(c, (GlooExit, StepSeed)) for c in trainer.callbacks) == 2
