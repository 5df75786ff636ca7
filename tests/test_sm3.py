"""SM3 end to end on tiny data: stage 1, stage 2 with k-means, every fine-tune setting."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_synthetic

from skinssl.callbacks import KMeansPseudoLabels
from skinssl.datamodules import SyntheticDerm7ptDataModule, Views
from skinssl.labels import CRITERIA, HEAD_NAMES
from skinssl.lightning_modules import MultiLabelClassifier, SM3Contrastive, SM3PseudoLabels
from skinssl.lightning_modules.losses import nt_xent
from skinssl.lightning_modules.nets import PairEncoder
from skinssl.lightning_modules.optim import adamw, schedule_steps

SMALL = dict(backbone="resnet18")


def data(root: Path, views: Views) -> SyntheticDerm7ptDataModule:
    return tiny_synthetic(root / "synthetic", views)


def fit(module: L.LightningModule, dm: L.LightningDataModule, root: Path, name: str, **kw) -> Path:
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=root,
        **kw,
    )
    trainer.fit(module, dm)
    path = root / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # plain tensors and values only
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, stage-1 checkpoint, stage-2 checkpoint) of a tiny run."""
    root = tmp_path_factory.mktemp("sm3")
    torch.manual_seed(0)
    s1 = SM3Contrastive(proj_hidden=64, proj_dim=16, **SMALL)
    before = s1.encoder.derm.conv1.weight.clone()
    # bf16 autocast on the CPU exercises the mixed-precision path of the published recipe
    stage1 = fit(s1, data(root, Views.simclr()), root, "stage1", precision="bf16-mixed")
    assert not torch.equal(before, s1.encoder.derm.conv1.weight)
    s2 = SM3PseudoLabels(
        pretrained=str(stage1), embed_dim=32, relation_ffn=16, input_norm=True, **SMALL
    )
    trunk = {k: v.clone() for k, v in s2.encoder.state_dict().items()}
    callback = KMeansPseudoLabels()
    dm = data(root, Views.cluster())
    stage2 = fit(s2, dm, root, "stage2", callbacks=[callback])
    # trunks frozen: weights and BatchNorm statistics untouched
    for k, v in s2.encoder.state_dict().items():
        assert torch.equal(v, trunk[k]), k
    assert s2.pseudo_labels.shape == (40, len(CRITERIA))
    train = torch.zeros(40, dtype=torch.bool)
    train[torch.from_numpy(dm.cases.splits["train"])] = True
    assert (s2.pseudo_labels[train] >= 0).all() and (s2.pseudo_labels[~train] == -1).all()
    return root, stage1, stage2


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_stage1_loss_is_the_documented_sum() -> None:
    """Intra terms per modality (views 1 vs 2) plus cross terms per view (dermoscopic vs
    clinical, stand-in clinical images left out), each from its own projector (eval mode: the
    module's joint pass and these separate passes see the same BatchNorm statistics)."""
    torch.manual_seed(0)
    m = SM3Contrastive(proj_hidden=16, proj_dim=8, gather_negatives=False, **SMALL).eval()
    g = torch.Generator().manual_seed(1)
    d1, d2, c1, c2 = (torch.randn(4, 3, 32, 32, generator=g) for _ in range(4))
    valid = torch.tensor([True, False, True, True])
    got = m.training_step({"derm": [d1, d2], "clinic": [c1, c2], "pair_valid": valid}, 0)
    with torch.no_grad():
        hd = {1: m.encoder.derm(d1), 2: m.encoder.derm(d2)}
        hc = {1: m.encoder.clinic(c1), 2: m.encoder.clinic(c2)}
        t = m.hparams.temperature
        intra = nt_xent(m.intra_derm(hd[1]), m.intra_derm(hd[2]), t)
        intra = intra + nt_xent(m.intra_clinic(hc[1]), m.intra_clinic(hc[2]), t)
        cross = sum(nt_xent(m.cross_derm(hd[v]), m.cross_clinic(hc[v]), t, valid) for v in (1, 2))
    want = m.hparams.intra_weight * intra + m.hparams.cross_weight * cross
    assert float(got) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("per_view", [True, False])
def test_stage1_batchnorm_batches_in_training(per_view: bool) -> None:
    """In training mode (BatchNorm on batch statistics) each view is its own batch in the
    trunks and cross-modal projectors, as the authors' passes, and the intra-modal projectors
    see both views at once; ``per_view_batchnorm: false`` passes both views together."""
    torch.manual_seed(0)
    m = SM3Contrastive(
        proj_hidden=16, proj_dim=8, gather_negatives=False, per_view_batchnorm=per_view, **SMALL
    ).train()
    g = torch.Generator().manual_seed(1)
    derm, clinic = [[torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)] for _ in range(2)]
    valid = torch.ones(4, dtype=torch.bool)
    got = m.training_step({"derm": derm, "clinic": clinic, "pair_valid": valid}, 0)

    def passes(net: torch.nn.Module, views: list[torch.Tensor], split: bool) -> torch.Tensor:
        return torch.cat([net(v) for v in views]) if split else net(torch.cat(views))

    def loss(split: bool) -> torch.Tensor:
        t = m.hparams.temperature
        hd, hc = passes(m.encoder.derm, derm, split), passes(m.encoder.clinic, clinic, split)
        zd, zc = m.intra_derm(hd), m.intra_clinic(hc)  # both views at once either way
        pd = passes(m.cross_derm, [hd[:4], hd[4:]], split)
        pc = passes(m.cross_clinic, [hc[:4], hc[4:]], split)
        intra = nt_xent(zd[:4], zd[4:], t) + nt_xent(zc[:4], zc[4:], t)
        cross = nt_xent(pd[:4], pc[:4], t, valid) + nt_xent(pd[4:], pc[4:], t, valid)
        return m.hparams.intra_weight * intra + m.hparams.cross_weight * cross

    with torch.no_grad():
        want, other = loss(split=per_view), loss(split=not per_view)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    assert float(got) != pytest.approx(float(other), rel=1e-3)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_stage2_loss_uses_each_cases_pseudo_labels() -> None:
    """Cross-entropy of each head's prototype logits / T against the labels of the batch's
    cases (looked up by case index, not by position), averaged over heads."""
    torch.manual_seed(0)
    m = SM3PseudoLabels(embed_dim=16, relation_ffn=8, temperature=0.5, **SMALL).eval()
    labels = torch.randint(0, 2, (10, len(CRITERIA)), generator=torch.Generator().manual_seed(1))
    m.set_clusters({}, labels, fresh=False)
    g, index = torch.Generator().manual_seed(2), torch.tensor([7, 2, 9, 0])
    batch = {
        "derm": torch.randn(4, 3, 32, 32, generator=g),
        "clinic": torch.randn(4, 3, 32, 32, generator=g),
        "index": index,
    }
    got = m.training_step(batch, 0)["loss"]
    with torch.no_grad():
        tokens = m.tokens(batch)
        terms = [
            F.cross_entropy(m.prototypes[h](tokens[:, i]) / 0.5, labels[index, i])
            for i, h in enumerate(m.heads)
        ]
    assert float(got) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-5)


def test_warmup_then_cosine_multipliers() -> None:
    """A group's rate over warm-up and cosine; a ``fixed_lr`` group's stays (SimSiam's)."""
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.5, "fixed_lr": True}]
    sched = adamw(groups, 0.0, "cosine", 2, 10)["lr_scheduler"]["scheduler"]
    got = []
    for _ in range(10):
        got.append(sched.get_last_lr())
        sched.optimizer.step()
        sched.step()
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [g[0] for g in got] == pytest.approx(want)
    assert [g[1] for g in got] == [0.5] * 10
    assert "fixed_lr" not in sched.optimizer.param_groups[1]


def test_stage1_needs_two_views(pretrained, tmp_path: Path) -> None:
    root, _, _ = pretrained
    with pytest.raises(ValueError, match="needs 2 views of the derm image"):
        fit(SM3Contrastive(proj_hidden=16, proj_dim=8, **SMALL), data(root, Views()), tmp_path, "x")


def test_stage2_without_callback_is_a_clear_error(pretrained, tmp_path: Path) -> None:
    root, stage1, _ = pretrained
    module = SM3PseudoLabels(pretrained=str(stage1), embed_dim=32, **SMALL)
    with pytest.raises(RuntimeError, match="add the KMeansPseudoLabels callback"):
        fit(module, data(root, Views.cluster()), tmp_path, "x")


@pytest.mark.parametrize("setting", ["linear", "projector", "finetune"])
def test_finetune_settings_from_stage2(pretrained, tmp_path: Path, setting: str, caplog) -> None:
    root, _, stage2 = pretrained
    model = MultiLabelClassifier(
        head_input="tokens",
        embed_dim=32,
        relation_ffn=16,
        input_norm=True,
        init_from=str(stage2),
        setting=setting,
        trunk_lr=1e-4,
        freeze_stem=setting == "finetune",
        # linear keeps the projectors frozen: only the heads stage 2 pretrained
        heads=CRITERIA if setting == "linear" else HEAD_NAMES,
        **SMALL,
    )
    state = torch.load(stage2, weights_only=True)["state_dict"]
    assert not model.encoder.training or setting == "finetune"  # frozen parts in eval mode
    for h in CRITERIA:  # clustered heads start from the stage-2 prototypes, zero bias
        torch.testing.assert_close(model.classifiers[h].weight, state[f"prototypes.{h}.weight"])
        assert not model.classifiers[h].bias.any()
    if setting != "linear":  # DIAG was not clustered: N(0, 0.01), zero bias (the authors' _init_fc)
        diag = model.classifiers["DIAG"]
        assert 0.008 < diag.weight.std() < 0.012 and abs(diag.weight.mean()) < 0.004
        assert not diag.bias.any()
    trunk = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    relation = {k: v.clone() for k, v in model.relation.state_dict().items()}
    heads = model.classifiers["PN"].weight.clone()
    with caplog.at_level("INFO"):
        fit(model, data(root, Views()), tmp_path, setting)
    frozen = {"linear": "encoder, relation", "projector": "encoder"}.get(setting)
    assert (f"setting {setting}: frozen, in eval mode: {frozen}" in caplog.text) == bool(frozen)
    trunk_moved = any(not torch.equal(v, trunk[k]) for k, v in model.encoder.state_dict().items())
    rel_moved = any(not torch.equal(v, relation[k]) for k, v in model.relation.state_dict().items())
    assert trunk_moved == (setting == "finetune")
    assert rel_moved == (setting != "linear")
    if setting == "finetune":  # the frozen stem keeps its weights, its BN learns statistics
        statistics = ("running_mean", "running_var", "num_batches_tracked")
        for k, v in model.encoder.state_dict().items():
            if k.split(".")[1] in ("conv1", "bn1"):  # the stem's, not the blocks' (layerN.)
                assert torch.equal(v, trunk[k]) != k.endswith(statistics), k
    assert not torch.equal(heads, model.classifiers["PN"].weight)


def test_heads_from_centroids_warn_when_stage2_scaled_its_logits(pretrained, tmp_path) -> None:
    root, _, stage2 = pretrained
    kwargs = dict(head_input="tokens", embed_dim=32, relation_ffn=16, input_norm=True, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MultiLabelClassifier(init_from=str(stage2), **kwargs)  # l2_norm off, T = 1: no warning
    ckpt = torch.load(stage2, weights_only=True)
    ckpt["hyper_parameters"]["temperature"] = 0.1
    torch.save(ckpt, tmp_path / "scaled.ckpt")
    with pytest.warns(UserWarning, match="'temperature': 0.1"):
        MultiLabelClassifier(init_from=str(tmp_path / "scaled.ckpt"), **kwargs)


def test_linear_probe_of_stage1_and_mismatch_errors(pretrained, tmp_path: Path) -> None:
    root, stage1, stage2 = pretrained
    probe = MultiLabelClassifier(init_from=str(stage1), setting="linear", **SMALL)
    fit(probe, data(root, Views()), tmp_path, "probe")
    want = r"backbone: checkpoint 'resnet18', this model 'resnet34'\. To use it, add "
    with pytest.raises(ValueError, match=want + "--model.init_args.backbone=resnet18$"):
        MultiLabelClassifier(backbone="resnet34", init_from=str(stage1))
    with pytest.raises(ValueError, match="embed_dim: checkpoint 32, this model 64"):
        MultiLabelClassifier(head_input="tokens", embed_dim=64, init_from=str(stage2), **SMALL)
    with pytest.raises(ValueError, match="input_norm: checkpoint True, this model False.*"
                       "add --model.init_args.input_norm=true$"):  # fmt: skip
        MultiLabelClassifier(
            head_input="tokens", embed_dim=32, relation_ffn=16, init_from=str(stage2), **SMALL
        )
    with pytest.raises(ValueError, match=r"stage1.ckpt has no label-relation module to "
                       "freeze .*pass a stage-2 checkpoint"):  # fmt: skip
        MultiLabelClassifier(head_input="tokens", init_from=str(stage1), setting="linear", **SMALL)
    with pytest.warns(UserWarning, match=r"stage1.ckpt has no label-relation module: the "
                      "label projectors, relation module and heads start at random"):  # fmt: skip
        MultiLabelClassifier(head_input="tokens", init_from=str(stage1), **SMALL)
    with pytest.raises(ValueError, match=r"no label projector for \['DIAG'\]; setting 'linear'"):
        MultiLabelClassifier(
            head_input="tokens",
            embed_dim=32,
            relation_ffn=16,
            input_norm=True,
            init_from=str(stage2),
            setting="linear",
            **SMALL,
        )
    with pytest.raises(ValueError, match="init_from checkpoint not found: .*missing.ckpt$"):
        MultiLabelClassifier(init_from=str(tmp_path / "missing.ckpt"), **SMALL)
    with pytest.raises(ValueError, match=r"not found: missing.ckpt \(relative to the working "):
        MultiLabelClassifier(init_from="missing.ckpt", **SMALL)


def test_fused_heads_never_start_from_token_prototypes(pretrained, tmp_path: Path) -> None:
    """Prototypes live in the label-token space: a fused head of the same shape is no match."""
    _, _, stage2 = pretrained
    ckpt = torch.load(stage2, weights_only=True)
    fused = torch.ones(3, 1024)  # resnet18 x2: the fused feature has 1024 dimensions
    ckpt["state_dict"]["prototypes.PN.weight"] = fused
    torch.save(ckpt, tmp_path / "same_shape.ckpt")
    model = MultiLabelClassifier(init_from=str(tmp_path / "same_shape.ckpt"), **SMALL)
    assert model.classifiers["PN"].weight.shape == fused.shape
    assert not torch.equal(model.classifiers["PN"].weight, fused)


def test_diagnosis_as_eighth_clustered_head(pretrained, tmp_path: Path) -> None:
    root, stage1, _ = pretrained
    module = SM3PseudoLabels(
        pretrained=str(stage1), heads=HEAD_NAMES, num_clusters={"PN": 4}, embed_dim=32, **SMALL
    )
    assert module.cluster_sizes() == {
        "DIAG": 5,
        "PN": 4,
        "BWV": 2,
        "VS": 3,
        "PIG": 3,
        "STR": 3,
        "DaG": 3,
        "RS": 2,
    }
    path = fit(module, data(root, Views.cluster()), tmp_path, "eight",
               callbacks=[KMeansPseudoLabels()])  # fmt: skip
    assert module.pseudo_labels.shape == (40, 8)
    # the over-clustered head cannot start from its prototypes
    with pytest.warns(UserWarning, match=r"the PN head starts at random, not from stage 2's "
                      r"prototypes: they are \(4, 32\), the head \(3, 32\)"):  # fmt: skip
        MultiLabelClassifier(head_input="tokens", embed_dim=32, init_from=str(path), **SMALL)
    with pytest.raises(ValueError, match=r"heads \['BWV', 'PN'\] need K >= 2"):
        SM3PseudoLabels(num_clusters={"PN": 1, "BWV": 0}, **SMALL)


def test_adam_eps_per_stage_as_the_authors() -> None:
    """AdamW's eps: 1e-5 in stage 1 (the authors' backbone_train.py), PyTorch's 1e-8 in
    stage 2 and downstream (their mlc_train.py and mlc_eval.py pass none)."""
    for module, eps in [
        (SM3Contrastive, 1e-5),
        (SM3PseudoLabels, 1e-8),
        (MultiLabelClassifier, 1e-8),
    ]:
        assert inspect.signature(module).parameters["adam_eps"].default == eps, module
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = adamw([{"params": [p], "lr": 1.0}], 0.0, "constant", 0, 1, eps=1e-5)["optimizer"]
    assert optimizer.defaults["eps"] == 1e-5


def test_lr_scaled_with_global_batch(pretrained) -> None:
    """Rates scaled by global batch / lr_reference_batch; the module's adam_eps reaches AdamW."""
    root, _, _ = pretrained
    model = MultiLabelClassifier(
        lr=1e-3, trunk_lr=1e-4, lr_reference_batch=4, adam_eps=1e-6, **SMALL
    )
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        accumulate_grad_batches=2,
    )
    trainer.fit(model, data(root, Views()))
    scale = 8 * 1 * 2 / 4  # batch 8 x 1 device x 2 accumulated / reference 4
    rates = [g["initial_lr"] for g in trainer.optimizers[0].param_groups]
    assert rates == pytest.approx([1e-3 * scale, 1e-4 * scale])
    assert [g["eps"] for g in trainer.optimizers[0].param_groups] == [1e-6, 1e-6]


class CompareSteps(L.Callback):
    """Records (our schedule's total steps, Lightning's estimate) once training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = (schedule_steps(trainer, 1)[1], trainer.estimated_stepping_batches)


@pytest.mark.parametrize(
    "limits", [dict(), dict(limit_train_batches=0.5, accumulate_grad_batches=2), dict(max_steps=3)]
)
def test_schedule_steps_equal_lightnings_estimate(pretrained, limits: dict) -> None:
    root, _, _ = pretrained
    compare = CompareSteps()
    trainer = L.Trainer(
        max_epochs=2, limit_val_batches=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[compare], **limits,
    )  # fmt: skip
    trainer.fit(MultiLabelClassifier(schedule="cosine", **SMALL), data(root, Views()))
    assert compare.steps[0] == compare.steps[1]


def test_schedule_steps_with_step_limits() -> None:
    from types import SimpleNamespace

    def trainer(max_epochs: int, max_steps: int) -> SimpleNamespace:
        data = SimpleNamespace(train_dataloader=lambda: range(10))  # 10 batches per epoch
        return SimpleNamespace(
            max_epochs=max_epochs, max_steps=max_steps, datamodule=data,
            limit_train_batches=1.0, accumulate_grad_batches=1,
        )  # fmt: skip

    assert schedule_steps(trainer(400, 1000), 2) == (20, 1000)  # warm-up: 2 whole epochs
    assert schedule_steps(trainer(-1, 50), 1) == (10, 50)  # no epoch limit: the step limit
    assert schedule_steps(trainer(-1, -1), 1) == (10, 0)  # neither: no total


def test_pair_encoder_names_a_list_of_views() -> None:
    encoder = PairEncoder("resnet18")
    x = torch.zeros(2, 3, 32, 32)
    named = "one clinic view per case expected, got a list of 2; set data.init_args.clinic_views.n"
    with pytest.raises(ValueError, match=named):
        encoder(x, [x, x])
