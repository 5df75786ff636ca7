"""Step-speed options change how, not what: same outputs, same parameter names."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from test_cli import TINY_SYNTHETIC, run

from skinssl.callbacks.speed import speed_up, trunks
from skinssl.lightning_modules import SM3Contrastive


def test_channels_last_and_compile_keep_outputs_and_names() -> None:
    torch.manual_seed(0)
    plain = SM3Contrastive(backbone="resnet18", proj_hidden=16, proj_dim=8).eval()
    fast = copy.deepcopy(plain)
    changed = speed_up(fast, channels_last=True, compile=True, backend="eager")
    assert len(changed) == 2 and changed == trunks(fast)
    conv = fast.encoder.derm.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.encoder(x, x), plain.encoder(x, x), atol=1e-5, rtol=1e-4)
    assert fast.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged


def test_speed_options_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """The speed group's options reach the trunks; checkpoints keep the plain names."""
    import skinssl.callbacks.speed as speed

    calls = []

    def recording(module, *args, **kwargs) -> list:
        changed = speed_up(module, *args, **kwargs)
        calls.append((args, kwargs, [t.conv1.weight.is_contiguous(
            memory_format=torch.channels_last) for t in changed]))  # fmt: skip
        return changed

    monkeypatch.setattr(speed, "speed_up", recording)
    monkeypatch.chdir(tmp_path)
    run(
        "fit", "configs/quickstart/stage1.yaml", *TINY_SYNTHETIC, "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--speed.channels_last=true", "--speed.compile=true",
        "--speed.compile_backend=eager",
    )  # fmt: skip
    assert calls == [((True, True, "eager"), {}, [True, True])]  # once, both trunks
    ckpt = torch.load("runs/quickstart/stage1/checkpoints/last.ckpt", weights_only=True)
    plain = SM3Contrastive(backbone="resnet18", proj_hidden=512, proj_dim=128)  # the config
    assert ckpt["state_dict"].keys() == plain.state_dict().keys()


def test_gradcam_on_compiled_channels_last_trunks() -> None:
    """Grad-CAM's hooks still see the trunks' last stage after compile (eager backend here)."""
    from skinssl.evaluation.gradcam import gradcam
    from skinssl.lightning_modules import MultiLabelClassifier

    torch.manual_seed(0)
    model = MultiLabelClassifier(backbone="resnet18").eval()
    x = torch.randn(2, 3, 64, 64)

    def cams() -> tuple[torch.Tensor, ...]:
        stages = (model.encoder.derm.layer4, model.encoder.clinic.layer4)
        return gradcam(model, stages, x, x, "DIAG", 2)

    plain = cams()
    speed_up(model, channels_last=True, compile=True, backend="eager")
    with torch.inference_mode():
        model(x, x)  # the compiled forward runs first, as in a test run
    for want, got in zip(plain, cams(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
