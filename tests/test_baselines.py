"""Baseline pretraining methods: 2-epoch fits through the CLI (multi- and single-modal; the
configs keep an epoch's last, smaller batch), the checkpoint's trunks in the downstream
classifier, the EMA update, and the input errors."""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import group_means, tiny_synthetic
from test_cli import ON_CPU, REPO, TINY_SYNTHETIC

from skinssl.cli import build_cli
from skinssl.datamodules import SyntheticDerm7ptDataModule, Views
from skinssl.lightning_modules import MultiLabelClassifier
from skinssl.lightning_modules.baselines import (
    BYOL,
    BarlowTwins,
    DeepClusterV2,
    MoCo,
    SimCLR,
    SimSiam,
    SwAV,
)
from skinssl.lightning_modules.baselines.base import Pretraining
from skinssl.lightning_modules.baselines.losses import info_nce
from skinssl.lightning_modules.baselines.moco import shuffled_batchnorm
from skinssl.lightning_modules.losses import nt_xent
from skinssl.lightning_modules.nets import STAGE1_VIEWS

SHRINK = [
    "--data.class_path=skinssl.datamodules.SyntheticDerm7ptDataModule",
    *TINY_SYNTHETIC,
    *ON_CPU,
    "--trainer.max_epochs=2",
    "--data.init_args.batch_size=7",  # 25 training cases: 3 batches of 7, then one of 4
    "--model.init_args.backbone=resnet18",
    "--model.init_args.weights=null",  # no download in tests
    "--model.init_args.proj_hidden=32",
    "--model.init_args.proj_dim=16",
]
# method config -> (its single modality in this test, its own shrinking overrides)
METHODS = {
    "simclr": ("derm", []),
    "byol": ("clinic", []),
    "moco": ("derm", ["--model.init_args.queue_size=32"]),
    "simsiam": ("clinic", ["--model.init_args.pred_hidden=8"]),
    "barlow_twins": ("derm", []),
    "swav": ("clinic", ["--model.init_args.num_prototypes=8"]),
    "deepcluster_v2": ("derm", ["--model.init_args.num_clusters=4"]),
}
CASES = [(m, mod) for m, (single, _) in METHODS.items() for mod in ("both", single)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the generated synthetic data of every test here (generated once)."""
    return tmp_path_factory.mktemp("baselines_data")


def trunk(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"encoder.{name}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize(("method", "modality"), CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_cli_fit_two_epochs(
    method: str, modality: str, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "baselines" / f"{method}.yaml"
    args = [
        *SHRINK,
        f"--data.init_args.root={data_root / 'cli'}",
        *METHODS[method][1],
        f"--model.init_args.modality={modality}",
    ]
    if modality != "both":  # no views of the unused modality (as bench/compare.py does)
        none = '{"n": 0}'
        if modality == "clinic":
            simclr = json.dumps(asdict(Views.simclr()))
            args.append(f"--data.init_args.clinic_views={simclr}")
            args.append(f"--data.init_args.derm_views={none}")
        else:
            args.append(f"--data.init_args.clinic_views={none}")
    cli = build_cli(["-c", str(config), *args], run=False)  # parse and build as `skinssl fit`
    initial = cli.model.encoder.derm.conv1.weight.detach().clone()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.current_epoch == 2
    assert cli.trainer.num_training_batches == 4  # the last one of 4 cases included
    logged = cli.trainer.callback_metrics
    modalities = ("derm", "clinic") if modality == "both" else (modality,)
    expected = {"train/loss"} | {f"train/loss_intra_{m}" for m in modalities}
    if modality == "both" and method != "deepcluster_v2":
        expected.add("train/loss_cross")
    terms = {k for k in logged if k.startswith("train/loss")}
    assert terms == expected
    assert all(math.isfinite(float(logged[k])) for k in terms)
    path = tmp_path / "runs" / "baselines" / method / "checkpoints" / "last.ckpt"
    state = torch.load(path, weights_only=True)["state_dict"]
    derm, clinic = trunk(state, "derm"), trunk(state, "clinic")
    assert derm and derm.keys() == clinic.keys()
    same = all(torch.equal(derm[k], clinic[k]) for k in derm)
    assert same == (modality != "both")  # one trunk saved under both names, or two trunks
    assert not torch.equal(derm["conv1.weight"], initial)  # the trunk trained


def tiny_data(root: Path, views: Views | None = None) -> SyntheticDerm7ptDataModule:
    return tiny_synthetic(root / "modules", views or Views.simclr())


def trainer(root: Path, **kw: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=root,
        **kw,
    )


@pytest.mark.parametrize("modality", ["both", "clinic"])
def test_downstream_classifier_loads_the_pretrained_trunks(
    modality: str, data_root: Path, tmp_path: Path
) -> None:
    model = SimCLR(modality=modality, backbone="resnet18", proj_hidden=16, proj_dim=8)
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, tiny_data(data_root))
    path = tmp_path / "pretrained.ckpt"
    t.save_checkpoint(path)
    pretrained = model.encoder.state_dict()
    for share_trunk in (False, True):
        clf = MultiLabelClassifier(
            backbone="resnet18", init_from=str(path), setting="linear", share_trunk=share_trunk
        )
        for name in ("derm", "clinic"):
            # a single-modality trunk initialises both trunks
            source = "clinic" if modality == "clinic" else name
            for k, v in getattr(clf.encoder, name).state_dict().items():
                assert torch.equal(v, pretrained[f"{source}.{k}"]), (name, k)
        if modality == "both":
            break  # two different trunks cannot go into one shared trunk
    if modality == "both":
        with pytest.raises(ValueError, match="share_trunk: checkpoint False, this model True"):
            MultiLabelClassifier(backbone="resnet18", init_from=str(path), share_trunk=True)


def pair_batch() -> dict[str, object]:
    """Two views per modality of 4 cases; case 1's clinical image is a stand-in."""
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(4)]
    valid = torch.tensor([True, False, True, True])
    return {"derm": views[:2], "clinic": views[2:], "pair_valid": valid, "index": torch.arange(4)}


def test_a_method_without_its_hooks_is_named_when_built() -> None:
    class NoCross(SimCLR):
        cross_loss = Pretraining.cross_loss

    with pytest.raises(TypeError, match="NoCross does not define cross_loss: a method defines"):
        NoCross(backbone="resnet18")

    class NoCrossTerm(NoCross):
        has_cross = False

    NoCrossTerm(backbone="resnet18")  # no cross-modal term: no cross_loss needed


def test_simclr_terms_are_the_documented_nt_xent() -> None:
    """Intra: views 1 vs 2 per modality; cross: dermoscopic vs clinical view, per view, over
    the valid pairs, averaged."""
    torch.manual_seed(0)
    m = SimCLR(backbone="resnet18", proj_hidden=16, proj_dim=8, gather_negatives=False).eval()
    batch = pair_batch()
    terms = m.loss_terms(batch)
    with torch.no_grad():
        z = {k: [m.projectors[k](m.trunk(k)(v)) for v in batch[k]] for k in ("derm", "clinic")}
        t, valid = m.hparams.temperature, batch["pair_valid"]
        want = {f"intra_{k}": nt_xent(*z[k], t) for k in ("derm", "clinic")}
        want["cross"] = sum(nt_xent(z["derm"][i], z["clinic"][i], t, valid) for i in (0, 1)) / 2
    assert set(terms) == set(want)
    for k, v in want.items():
        assert float(terms[k]) == pytest.approx(float(v), rel=1e-5), k


def test_moco_terms_pair_each_query_with_the_other_views_key() -> None:
    """Intra: query of view 1 vs key of view 2 and back, against the queue as it was; cross:
    queries of one modality vs keys of the other, same view, over the valid pairs."""
    torch.manual_seed(0)
    m = MoCo(backbone="resnet18", proj_hidden=16, proj_dim=8, queue_size=8).eval()
    for queue in m.queues.values():  # a queue of earlier keys, as after a few steps
        queue.bank.copy_(torch.nn.functional.normalize(torch.randn_like(queue.bank), dim=1))
    before = copy.deepcopy(m)
    batch = pair_batch()
    terms = m.loss_terms(batch)
    with torch.no_grad():
        q = {k: [before.projectors[k](before.trunk(k)(v)) for v in batch[k]] for k in batch
             if k in ("derm", "clinic")}  # fmt: skip
        key = {k: before.momentum_embed(k, torch.cat(batch[k])).chunk(2) for k in q}
        bank = {k: before.queues[k].bank.clone() for k in q}
        t, valid = m.hparams.temperature, batch["pair_valid"]
        want = {
            f"intra_{k}": (info_nce(q[k][0], key[k][1], bank[k], t)
                           + info_nce(q[k][1], key[k][0], bank[k], t)) / 2
            for k in q
        }  # fmt: skip
        cross = [
            info_nce(q[a][i], key[b][i], bank[b], t, valid)
            for a, b in (("derm", "clinic"), ("clinic", "derm"))
            for i in (0, 1)
        ]
        want["cross"] = sum(cross) / len(cross)
    for k, v in want.items():
        assert float(terms[k]) == pytest.approx(float(v), rel=1e-5), k


@pytest.mark.parametrize("fixed", [True, False])
def test_simsiam_predictor_rate_is_fixed_as_the_paper(fixed: bool) -> None:
    m = SimSiam(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8, pred_hidden=8,
                lr=0.1, warmup_epochs=1, schedule="cosine", fix_predictor_lr=fixed)  # fmt: skip
    loader = SimpleNamespace(train_dataloader=lambda: range(4))  # 4 batches an epoch
    m.trainer = SimpleNamespace(max_epochs=2, max_steps=-1, limit_train_batches=1.0,
                                accumulate_grad_batches=1, datamodule=loader)  # fmt: skip
    scheduler = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    groups = scheduler.optimizer.param_groups
    predictor = {id(p) for p in m.predictors.parameters()}
    assert [len(g["params"]) for g in groups] == (
        [sum(1 for _ in m.parameters()) - len(predictor), len(predictor)] if fixed else
        [sum(1 for _ in m.parameters())]
    )  # fmt: skip
    if fixed:
        assert {id(p) for p in groups[1]["params"]} == predictor
        assert scheduler.get_last_lr() == pytest.approx([0.025, 0.1])  # warm-up 1/4, fixed
    # a resume of the other layout: our error, not torch's optimizer-state error
    other = {"optimizer_states": [{"param_groups": [{}] * (1 if fixed else 2)}]}
    with pytest.raises(ValueError, match=f"fix_predictor_lr={str(not fixed).lower()}$"):
        m.on_load_checkpoint(other)
    m.on_load_checkpoint({"optimizer_states": [scheduler.optimizer.state_dict()]})


def test_shuffled_batchnorm_normalises_random_groups_and_restores_the_order() -> None:
    x = torch.arange(12.0)[:, None]
    torch.manual_seed(0)
    out = shuffled_batchnorm(group_means, x, 3)
    torch.testing.assert_close(out[:, :1], x)  # each output row is its input row's
    groups = [x[out[:, 1] == mean, 0] for mean in out[:, 1].unique()]
    assert sorted(map(len, groups)) == [4, 4, 4]
    for rows in groups:
        assert float(rows.mean()) in out[:, 1].tolist()
    assert any(rows.tolist() != list(range(int(rows[0]), int(rows[0]) + 4)) for rows in groups)
    # a batch too small for 3 groups of two or more (an epoch's last): fewer, none of one row
    out = shuffled_batchnorm(group_means, x[:5], 3)
    torch.testing.assert_close(out[:, :1], x[:5])
    assert sorted(int((out[:, 1] == m).sum()) for m in out[:, 1].unique()) == [2, 3]


def test_moco_shuffle_groups_are_the_key_encoders_batchnorm_batches() -> None:
    m = MoCo(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8, queue_size=8,
             shuffle_groups=2).train()  # fmt: skip
    sizes = {"online": [], "momentum": []}
    for name, net in (("online", m.encoder), ("momentum", m.momentum_encoder)):
        for layer in net.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.register_forward_hook(lambda *a, k=name: sizes[k].append(len(a[1][0])))
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    m.loss_terms({"derm": views, "index": torch.arange(8), "pair_valid": torch.ones(8).bool()})
    assert set(sizes["online"]) == {8} and set(sizes["momentum"]) == {4}  # per view, 2 groups
    m.trainer = SimpleNamespace(world_size=2, datamodule=None)
    m.momentum_encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m.momentum_encoder)
    with pytest.raises(ValueError, match="needs trainer.sync_batchnorm: false"):
        m.on_fit_start()
    m.hparams.shuffle_groups = 3
    with pytest.raises(ValueError, match="shuffle_groups 3 must be a multiple of the number of "):
        m.on_fit_start()


@pytest.mark.parametrize("cls", [BYOL, MoCo])
def test_momentum_copy_is_updated_after_the_optimizer_step(
    cls: type, data_root: Path, tmp_path: Path
) -> None:
    """With a constant rate m: momentum weights = m * initial + (1 - m) * online after step."""
    torch.manual_seed(0)
    model = cls(
        modality="derm",
        backbone="resnet18",
        proj_hidden=16,
        proj_dim=8,
        momentum=0.5,
        momentum_end=0.5,
    )
    initial = model.encoder.derm.conv1.weight.detach().clone()
    trainer(tmp_path, max_steps=1).fit(model, tiny_data(data_root))
    online = model.encoder.derm.conv1.weight.detach()
    target = model.momentum_encoder.derm.conv1.weight
    assert not torch.equal(online, initial)
    torch.testing.assert_close(target, 0.5 * initial + 0.5 * online)
    assert not target.requires_grad
    assert not any(k.startswith("encoder.") for k in model.state_dict() if "momentum" in k)


def test_resuming_on_another_momentum_course_warns(data_root: Path, tmp_path: Path) -> None:
    """BYOL's momentum rises over the fit's steps: a resume with more epochs lowers it."""
    make = lambda: BYOL(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8)  # noqa: E731
    first, ckpt = trainer(tmp_path, max_epochs=1, limit_train_batches=2), tmp_path / "1.ckpt"
    first.fit(make(), tiny_data(data_root))
    first.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["momentum_total_steps"] == 2
    want = r"resumed at step 2: the momentum schedule now ends at step 4, the checkpoint's at 2"
    with pytest.warns(UserWarning, match=want + r", so the momentum goes on from 0\.99"):
        resumed = trainer(tmp_path, max_epochs=2, limit_train_batches=2)
        resumed.fit(make(), tiny_data(data_root), ckpt_path=ckpt)


def test_momentum_schedule_needs_a_run_of_known_length(data_root: Path, tmp_path: Path) -> None:
    model = BYOL(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8)
    # (max_time: no length for the schedule, and a broken check cannot hang the test)
    endless = trainer(tmp_path, max_epochs=-1, max_steps=-1, max_time={"seconds": 20})
    with pytest.raises(ValueError, match="from momentum 0.99 to momentum_end 1.0 needs a run"):
        endless.fit(model, tiny_data(data_root))


def test_two_views_needed(data_root: Path, tmp_path: Path) -> None:
    model = BYOL(modality="both", backbone="resnet18", proj_hidden=16, proj_dim=8)
    with pytest.raises(ValueError, match="BYOL needs 2 views of the derm image per case, got 1"):
        trainer(tmp_path, max_steps=1).fit(model, tiny_data(data_root, Views()))
    # the message's views (written out: models do not import the data package) are stage 1's
    hint = json.loads(STAGE1_VIEWS)
    assert Views(**{**hint, "crop_scale": tuple(hint["crop_scale"])}) == Views.simclr()


def test_single_modality_checks_only_its_own_views(data_root: Path, tmp_path: Path) -> None:
    data = tiny_data(data_root, Views(n=0))  # no dermoscopic views at all
    data.clinic_views = Views.simclr()
    model = SimCLR(modality="clinic", backbone="resnet18", proj_hidden=16, proj_dim=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_steps=1).fit(model, data)
    assert not [w for w in caught if "does not use" in str(w.message)]


def test_unused_modality_views_are_named(data_root: Path, tmp_path: Path) -> None:
    model = SimCLR(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8)
    named = r"does not use the 2 clinic views.*clinic_views: \{n: 0\}"
    with pytest.warns(UserWarning, match=named):
        trainer(tmp_path, max_steps=1).fit(model, tiny_data(data_root))


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="modality 'dermoscopic' is not one of derm, clinic"):
        SimCLR(modality="dermoscopic", backbone="resnet18")
    with pytest.raises(ValueError, match="num_clusters must be >= 2"):
        DeepClusterV2(backbone="resnet18", num_clusters=1)
    with pytest.raises(ValueError, match="momentum_end"):
        BYOL(backbone="resnet18", momentum=0.99, momentum_end=0.9)


def test_deepcluster_needs_the_kmeans_callback(data_root: Path, tmp_path: Path) -> None:
    model = DeepClusterV2(backbone="resnet18", proj_hidden=16, proj_dim=8, num_clusters=3)
    with pytest.raises(RuntimeError, match="add the KMeansPseudoLabels callback"):
        trainer(tmp_path, max_steps=1).fit(model, tiny_data(data_root))


def test_moco_queue_is_first_in_first_out_across_its_end() -> None:
    """Keys past the end of the queue go on at its start (lightly's bank drops them)."""
    queue = MoCo(backbone="resnet18", proj_hidden=16, proj_dim=4, queue_size=40).queues["derm"]
    keys = torch.randn(3, 32, 4)
    for k in keys:
        queue(k, update=True)
    # 96 keys into 40 rows: the last 40 of them, in ring order from row 96 % 40 = 16
    torch.testing.assert_close(queue.bank.roll(-16, dims=0), keys.reshape(96, 4)[-40:])
    assert int(queue.bank_ptr) == 16
    more = torch.randn(100, 4)  # more keys in one step than the queue holds: its last 40
    queue(more, update=True)
    assert int(queue.bank_ptr) == (16 + 100) % 40
    torch.testing.assert_close(queue.bank.roll(-36, dims=0), more[-40:])


SMALL_METHODS = {
    SimCLR: {}, BYOL: {}, MoCo: {"queue_size": 8}, SimSiam: {"pred_hidden": 8}, BarlowTwins: {},
    SwAV: {"num_prototypes": 8}, DeepClusterV2: {"num_clusters": 3},
}  # fmt: skip


@pytest.mark.parametrize("per_view", [True, False, None])
@pytest.mark.parametrize("cls", SMALL_METHODS, ids=lambda c: c.__name__)
def test_each_network_sees_the_views_as_configured(cls: type, per_view: bool | None) -> None:
    """Every BatchNorm layer a training step runs (trunks, projectors, predictors, momentum
    copies) gets one view at a time or both together: as set, or as the method's reference."""
    m = cls(modality="derm", backbone="resnet18", proj_hidden=16, proj_dim=8,
            per_view_batchnorm=per_view, **SMALL_METHODS[cls]).train()  # fmt: skip
    if cls is DeepClusterV2:
        m.set_clusters({"derm": torch.randn(3, 8)}, torch.zeros(4, 1, dtype=torch.long))
    sizes = []  # the batch of every BatchNorm layer run
    for layer in m.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.register_forward_hook(lambda _, inputs, out: sizes.append(len(inputs[0])))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    m.loss_terms({"derm": views, "index": torch.arange(4), "pair_valid": torch.ones(4).bool()})
    one = cls.per_view_reference if per_view is None else per_view
    assert set(sizes) == {4 if one else 8}
    assert cls.per_view_reference == (cls not in (SimCLR, SwAV, DeepClusterV2))


@pytest.mark.parametrize("per_view", [True, False])
def test_baselines_batchnorm_batches(per_view: bool) -> None:
    """In training mode each view is its own BatchNorm batch in every network (online and
    momentum branches, predictor), as SM3's stage 1; ``per_view_batchnorm: false``: one pass."""
    torch.manual_seed(0)
    m = BYOL(backbone="resnet18", proj_hidden=16, proj_dim=8, per_view_batchnorm=per_view)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    out = m.train().encode("derm", torch.cat(views))

    def passes(net, split: bool) -> torch.Tensor:  # noqa: ANN001
        return torch.cat([net(v) for v in views]) if split else net(torch.cat(views))

    online = lambda v: m.predictors["derm"](m.projectors["derm"](m.encoder.derm(v)))  # noqa: E731
    target = lambda v: m.momentum_projectors["derm"](m.momentum_encoder.derm(v))  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(out["p"], passes(online, per_view))
        torch.testing.assert_close(out["target"], passes(target, per_view))
        assert not torch.allclose(out["p"], passes(online, not per_view), atol=1e-4)


def test_moco_queues_travel_with_the_checkpoint(tmp_path: Path) -> None:
    """lightly keeps the queues out of the state dict: they are saved and restored beside it."""
    first = MoCo(backbone="resnet18", proj_hidden=16, proj_dim=8, queue_size=12)
    for q in first.queues.values():
        q.bank.normal_()
        q.bank_ptr.fill_(5)
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "queues.ckpt")
    second = MoCo(backbone="resnet18", proj_hidden=16, proj_dim=8, queue_size=12)
    second.on_load_checkpoint(torch.load(tmp_path / "queues.ckpt", weights_only=True))
    for m in ("derm", "clinic"):
        assert torch.equal(second.queues[m].bank, first.queues[m].bank)
        assert int(second.queues[m].bank_ptr) == 5
