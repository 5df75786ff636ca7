"""Fidelity to the authors' method (the paper, arXiv 2310.18583, and their released code; the §
numbers are those of the project's method notes, kept beside the repository in
../shared/METHOD.md, not needed to run these tests): the stage-2 prototypes start from the k-means
centroids, the relation layer is PyTorch's post-norm encoder layer, images are decoded as theirs,
the labels are grouped as theirs, the published recipes carry their numbers, and the stage-2 and
classifier options do what they say."""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from skinssl.datamodules import Derm7ptDataModule, Views
from skinssl.datamodules.derm7pt import read_derm7pt
from skinssl.datamodules.images import decode
from skinssl.labels import CRITERIA, HEAD_NAMES, NUM_CLASSES
from skinssl.lightning_modules import MultiLabelClassifier, SM3Contrastive, SM3PseudoLabels
from skinssl.lightning_modules.relation import RelationLayer

SMALL = dict(backbone="resnet18", embed_dim=16, relation_ffn=8)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sm3"


def tiny_batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "derm": torch.randn(n, 3, 32, 32, generator=g),
        "clinic": torch.randn(n, 3, 32, 32, generator=g),
        "index": torch.arange(n),
    }


def with_labels(m: SM3PseudoLabels, n: int = 4) -> SM3PseudoLabels:
    """``m`` with pseudo-labels (class 0 for every case and head) and its own prototypes."""
    m.set_clusters({}, torch.zeros(n, len(m.heads), dtype=torch.long), fresh=False)
    return m


# ------------------------------------------------------------- stage 2: prototypes


def test_fresh_clusters_become_the_prototypes_and_resumed_ones_do_not() -> None:
    """A fresh clustering copies each head's centroids into its bias-free prototype head and
    keeps the assignments (METHOD.md §4.2 step 3); a resumed one (``fresh=False``) only replaces
    the assignments."""
    torch.manual_seed(0)
    m = SM3PseudoLabels(**SMALL)
    g = torch.Generator().manual_seed(1)

    def centroids() -> dict[str, torch.Tensor]:
        return {
            h: F.normalize(torch.randn(NUM_CLASSES[h], 16, generator=g), dim=1) for h in m.heads
        }

    first = centroids()
    labels = torch.randint(0, 2, (10, len(m.heads)), generator=g)
    m.set_clusters(first, labels)
    for h, c in first.items():
        assert m.prototypes[h].bias is None
        torch.testing.assert_close(m.prototypes[h].weight.detach(), c, rtol=0, atol=0)
    assert torch.equal(m.pseudo_labels, labels) and m.pseudo_labels.dtype == torch.long

    other = torch.randint(0, 2, (10, len(m.heads)), generator=g)
    m.set_clusters(centroids(), other, fresh=False)
    for h, c in first.items():
        torch.testing.assert_close(m.prototypes[h].weight.detach(), c, rtol=0, atol=0)
    assert torch.equal(m.pseudo_labels, other)


# ------------------------------------------------------------- relation layer


def test_relation_layer_is_pytorchs_post_norm_encoder_layer() -> None:
    """With the weights of ``nn.TransformerEncoderLayer(d, nhead, ffn, dropout)`` (PyTorch's
    defaults: post-LayerNorm, ReLU; METHOD.md §4.1), ``RelationLayer`` gives the same tokens, and
    its map is that layer's self-attention averaged over heads."""
    torch.manual_seed(0)
    d, nhead, ffn, dropout = 16, 2, 8, 0.1
    ref = nn.TransformerEncoderLayer(d, nhead, ffn, dropout, batch_first=True)
    assert not ref.norm_first and ref.activation is F.relu
    for p in ref.parameters():  # LayerNorms away from (1, 0), so that they matter
        nn.init.normal_(p, std=0.5)
    layer = RelationLayer(d, nhead, ffn, dropout)
    layer.attn.load_state_dict(ref.self_attn.state_dict())
    layer.ffn[0].load_state_dict(ref.linear1.state_dict())
    layer.ffn[3].load_state_dict(ref.linear2.state_dict())
    layer.norm1.load_state_dict(ref.norm1.state_dict())
    layer.norm2.load_state_dict(ref.norm2.state_dict())
    ref.eval(), layer.eval()
    x = torch.randn(3, 8, d)  # 3 cases, 8 label tokens
    with torch.no_grad():
        out, maps = layer(x)
        want = ref(x)
        want_maps = ref.self_attn(x, x, x, need_weights=True)[1]
    assert maps.shape == (3, 8, 8)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps, want_maps, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------- image decoding


def test_decode_crops_the_border_on_every_side_and_gives_rgb(tmp_path: Path) -> None:
    """A lossless PNG with a 3-px grey frame around red, green and blue stripes decodes to the
    stripes alone, in RGB order (OpenCV reads BGR; METHOD.md §2)."""
    b, h, w = 3, 14, 21
    rgb = np.full((h, w, 3), 90, dtype=np.uint8)
    inner = rgb[b : h - b, b : w - b]
    third = inner.shape[1] // 3
    for c in range(3):
        inner[:, c * third : (c + 1) * third] = 0
        inner[:, c * third : (c + 1) * third, c] = 255
    inner[0, 0] = (1, 2, 3)  # the inner corners, told apart from the frame and each other
    inner[-1, -1] = (4, 5, 6)
    path = tmp_path / "image.png"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])  # OpenCV writes BGR
    got = decode(path, b, None)
    assert got.shape == (h - 2 * b, w - 2 * b, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, inner)
    np.testing.assert_array_equal(got[0, 0], (1, 2, 3))  # R first: red stays red
    np.testing.assert_array_equal(decode(path, 0, None), rgb)


def test_derm7pt_crops_25_px_by_default() -> None:
    """Derm7pt's default border crop is the authors' 25 px (METHOD.md §2); a config may set
    another (nothing is read when the module is built)."""
    dm = Derm7ptDataModule(root="no/such/folder", num_workers=0)
    assert dm.border_crop == 25 and dm.hparams["border_crop"] == 25
    assert Derm7ptDataModule(root="no/such/folder", num_workers=0, border_crop=0).border_crop == 0


# ------------------------------------------------------------- label grouping


@pytest.mark.parametrize(
    ("name", "counts"),
    [("VS", [313, 52, 30]), ("PIG", [223, 48, 124]), ("STR", [257, 44, 94]), ("RS", [289, 106])],
)
def test_test_split_class_counts_match_the_authors(
    derm7pt_release: Path, name: str, counts: list[int]
) -> None:
    """The test-split class counts that the authors' released metrics imply (METHOD.md §6.3),
    every test case labelled."""
    cases = read_derm7pt(derm7pt_release)
    col = cases.labels[cases.splits["test"], HEAD_NAMES.index(name)]
    assert len(col) == 395 and (col >= 0).all()
    assert np.bincount(col, minlength=NUM_CLASSES[name]).tolist() == counts


# ------------------------------------------------------------- published recipes


@functools.cache
def recipe(stage: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())


def class_default(class_path: str, key: str) -> Any:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return inspect.signature(cls).parameters[key].default


def setting(stage: str, key: str) -> Any:
    """A recipe's value: ``seed_everything``, ``trainer.X``, ``model.X``, ``data.X`` (init
    arguments, else the default of the class named by ``class_path``), ``data.derm_views.X`` and
    ``data.clinic_views.X`` (as the data module builds them), or ``callback.Class.X``."""
    cfg = recipe(stage)
    section, _, rest = key.partition(".")
    if section == "seed_everything":
        return cfg[section]
    if section == "trainer":
        trainer = cfg["trainer"]
        return trainer[rest] if rest in trainer else class_default("lightning.Trainer", rest)
    if section == "callback":
        cls, _, arg = rest.partition(".")
        (cb,) = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith(f".{cls}")]
        args = cb.get("init_args", {})
        return args[arg] if arg in args else class_default(cb["class_path"], arg)
    part = cfg[section]
    args = part.get("init_args", {})
    name, _, field = rest.partition(".")
    if field:  # views, completed from Views' defaults; clinic views default to the derm ones
        views = args.get(name) or args.get("derm_views")
        if views is None:
            views = class_default(part["class_path"], "derm_views")
        built = views if isinstance(views, Views) else Views(**views)
        value = getattr(built, field)
        return tuple(value) if isinstance(value, list) else value
    return args[name] if name in args else class_default(part["class_path"], name)


# (stage, setting, the value METHOD.md gives, its section)
RECIPE = [
    # stage 1: §3.1 architecture, §3.2 views, §3.3 loss, §3.4 optimisation
    ("stage1", "seed_everything", 3407, "§3.4"),
    ("stage1", "trainer.devices", 2, "§3.4 2 GPUs, DDP"),
    ("stage1", "trainer.strategy", "ddp", "§3.4"),
    ("stage1", "trainer.sync_batchnorm", True, "§3.1 SyncBatchNorm"),
    ("stage1", "trainer.precision", "16-mixed", "§3.4 AMP fp16 + GradScaler"),
    ("stage1", "trainer.max_epochs", 400, "§3.4"),
    ("stage1", "model.backbone", "resnet50", "§3.1"),
    ("stage1", "model.weights", "imagenet", "§3.1 IMAGENET1K_V1"),
    ("stage1", "model.share_trunk", False, "§3.1 weights NOT shared"),
    ("stage1", "model.proj_hidden", 2048, "§3.1"),
    ("stage1", "model.proj_dim", 128, "§3.1"),
    ("stage1", "model.proj_layers", 3, "§3.1"),
    ("stage1", "model.temperature", 0.1, "§3.3 tau = 0.1"),
    ("stage1", "model.intra_weight", 1.0, "§3.3 L_D + L_C"),
    ("stage1", "model.cross_weight", 0.5, "§3.3 0.5 (L_X^1 + L_X^2)"),
    ("stage1", "model.gather_negatives", False, "§3.3 NT-Xent per GPU"),
    ("stage1", "model.lr", 1e-6, "§3.4"),
    ("stage1", "model.weight_decay", 0.05, "§3.4"),
    ("stage1", "model.adam_eps", 1e-5, "§3.4"),
    ("stage1", "model.schedule", "constant", "§3.4 no schedule, no warm-up"),
    ("stage1", "model.warmup_epochs", 0, "§3.4"),
    ("stage1", "data.batch_size", 48, "§3.4 96 = 2 x 48"),
    ("stage1", "data.image_size", 224, "§2"),
    ("stage1", "data.derm_views.n", 2, "§3.2"),
    ("stage1", "data.derm_views.crop_scale", (0.5, 1.0), "§3.2"),
    ("stage1", "data.derm_views.color_jitter", (0.8, 0.8, 0.8, 0.2), "§3.2"),
    ("stage1", "data.derm_views.p_color_jitter", 0.8, "§3.2"),
    ("stage1", "data.derm_views.p_grayscale", 0.2, "§3.2"),
    ("stage1", "data.derm_views.hflip", True, "§3.2"),
    ("stage1", "data.derm_views.p_blur", 0.5, "§3.2"),
    ("stage1", "data.derm_views.blur_sigma", (0.1, 2.0), "§3.2"),
    ("stage1", "data.clinic_views.n", 2, "§3.2 all 4 views alike"),
    ("stage1", "data.clinic_views.p_grayscale", 0.2, "§3.2"),
    ("stage1", "data.clinic_views.p_blur", 0.5, "§3.2"),
    # stage 2: §4.1 architecture, §4.2 pseudo-labels, §4.3 optimisation
    ("stage2", "seed_everything", 3407, "§4.3"),
    ("stage2", "trainer.devices", 1, "§4.3"),
    ("stage2", "trainer.max_epochs", 150, "§4.3"),
    ("stage2", "model.backbone", "resnet50", "§4.1"),
    ("stage2", "model.train_trunks", False, "§4.1 frozen"),
    ("stage2", "model.input_norm", False, "§4.1 e_l = W_l u + b_l"),
    ("stage2", "model.embed_dim", 512, "§4.1"),
    ("stage2", "model.relation", "transformer", "§4.1"),
    ("stage2", "model.relation_layers", 1, "§4.1"),
    ("stage2", "model.relation_heads", 1, "§4.1"),
    ("stage2", "model.relation_ffn", 128, "§4.1"),
    ("stage2", "model.relation_dropout", 0.1, "§4.1"),
    ("stage2", "model.label_embedding", False, "§4.1 no label-ID embedding"),
    ("stage2", "model.l2_norm", False, "§4.1 --l2-norm off"),
    ("stage2", "model.temperature", 1.0, "§4.2 T = 1.0"),
    ("stage2", "model.lr", 1e-4, "§4.3"),
    ("stage2", "model.weight_decay", 0.05, "§4.3"),
    ("stage2", "model.schedule", "constant", "§4.3"),
    ("stage2", "callback.KMeansPseudoLabels.niter", 10, "§4.2"),
    ("stage2", "callback.KMeansPseudoLabels.algorithm", "authors", "§4.2 dot product, no FAISS"),
    ("stage2", "callback.KMeansPseudoLabels.features", "memory_bank", "§4.2 memory bank"),
    ("stage2", "callback.KMeansPseudoLabels.fill", "train", "§4.2 step 1, train mode"),
    ("stage2", "callback.KMeansPseudoLabels.every_n_epochs", 1, "§4.2 every epoch"),
    ("stage2", "data.batch_size", 256, "§4.3"),
    ("stage2", "data.image_size", 224, "§2"),
    ("stage2", "data.derm_views.n", 1, "§4.3 single view"),
    ("stage2", "data.derm_views.crop_scale", (0.5, 1.0), "§4.3"),
    ("stage2", "data.derm_views.p_color_jitter", 0.5, "§4.3"),
    ("stage2", "data.derm_views.hflip", True, "§4.3"),
    ("stage2", "data.derm_views.p_grayscale", 0.0, "§4.3 no grayscale"),
    ("stage2", "data.derm_views.p_blur", 0.0, "§4.3 no blur"),
    ("stage2", "data.clinic_views.n", 1, "§4.3"),
    ("stage2", "data.clinic_views.p_color_jitter", 0.5, "§4.3"),
    # downstream: §5.1 model, §5.2 settings
    ("finetune", "seed_everything", 3407, "§5.4"),
    ("finetune", "trainer.devices", 1, "§5.2"),
    ("finetune", "trainer.precision", "32-true", "§5.2 no AMP"),
    ("finetune", "trainer.max_epochs", 100, "§5.2"),
    ("finetune", "model.backbone", "resnet50", "§5.1"),
    ("finetune", "model.head_input", "tokens", "§5.1 same graph as stage 2"),
    ("finetune", "model.setting", "projector", "§5.2 SM3-linear"),
    ("finetune", "model.freeze_stem", True, "§5.2 finetune: stem frozen"),
    ("finetune", "model.embed_dim", 512, "§5.1"),
    ("finetune", "model.relation_layers", 1, "§5.1"),
    ("finetune", "model.relation_heads", 1, "§5.1"),
    ("finetune", "model.relation_ffn", 128, "§5.1"),
    ("finetune", "model.lr", 1e-3, "§5.2"),
    ("finetune", "model.weight_decay", 0.05, "§5.2"),
    ("finetune", "model.schedule", "constant", "§5.2"),
    ("finetune", "data.batch_size", 128, "§5.2"),
    ("finetune", "data.image_size", 224, "§2"),
    ("finetune", "data.derm_views.crop_scale", (0.3, 1.0), "§5.2"),
    ("finetune", "data.derm_views.hflip", True, "§5.2"),
    ("finetune", "data.derm_views.p_color_jitter", 0.0, "§5.2 RRC + HFlip only"),
    ("finetune", "data.derm_views.p_grayscale", 0.0, "§5.2"),
    ("finetune", "data.derm_views.p_blur", 0.0, "§5.2"),
]


@pytest.mark.parametrize(
    ("stage", "key", "value", "source"), RECIPE, ids=[f"{s}-{k}" for s, k, _, _ in RECIPE]
)
def test_published_recipe_is_the_authors(stage: str, key: str, value: Any, source: str) -> None:
    """Each configs/sm3 recipe value, set or a class default, is METHOD.md's (``source``)."""
    got = setting(stage, key)
    assert got == value and type(got) is type(value), f"{stage}: {key} = {got!r}, {source}"


def test_recipes_hold_the_pinned_model_and_data() -> None:
    """The recipes build the classes whose defaults the table above reads."""
    want = {
        "stage1": "skinssl.lightning_modules.SM3Contrastive",
        "stage2": "skinssl.lightning_modules.SM3PseudoLabels",
        "finetune": "skinssl.lightning_modules.MultiLabelClassifier",
    }
    for stage, model in want.items():
        assert recipe(stage)["model"]["class_path"] == model
        assert recipe(stage)["data"]["class_path"] == "skinssl.datamodules.Derm7ptDataModule"
        assert "border_crop" not in recipe(stage)["data"]["init_args"]  # Derm7pt's 25 px


# ------------------------------------------------------------- stage-2 and classifier options


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_l2_norm_gives_the_prototypes_unit_tokens() -> None:
    """``l2_norm``: every token reaching a prototype head has unit norm (not so without it)."""
    torch.manual_seed(0)
    m = with_labels(SM3PseudoLabels(l2_norm=True, **SMALL))
    seen: dict[str, torch.Tensor] = {}
    for h in m.heads:
        m.prototypes[h].register_forward_hook(
            lambda mod, args, out, h=h: seen.__setitem__(h, args[0].detach())
        )
    m.training_step(tiny_batch(), 0)
    assert set(seen) == set(CRITERIA)
    for h, tokens in seen.items():
        assert tokens.shape == (4, 16)
        torch.testing.assert_close(tokens.norm(dim=1), torch.ones(4), msg=h)
    m.hparams.l2_norm = False
    m.training_step(tiny_batch(), 0)
    norms = torch.stack([t.norm(dim=1) for t in seen.values()])
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_label_embedding_is_trained() -> None:
    """``label_embedding``: one learned vector per head, added to its token, gets a gradient
    from the stage-2 loss."""
    torch.manual_seed(0)
    m = with_labels(SM3PseudoLabels(label_embedding=True, **SMALL))
    embeddings = m.relation.embeddings
    assert embeddings is not None and set(embeddings) == set(CRITERIA)
    m.training_step(tiny_batch(), 0)["loss"].backward()
    for h in CRITERIA:
        grad = embeddings[h].grad
        assert grad is not None and grad.shape == (16,) and grad.abs().sum() > 0, h
    names = {n for n, _ in m.named_parameters()}
    assert {f"relation.embeddings.{h}" for h in CRITERIA} <= names
    assert SM3PseudoLabels(**SMALL).relation.embeddings is None  # off by default


@pytest.mark.parametrize(
    "build",
    [
        lambda share: SM3Contrastive(
            backbone="resnet18", share_trunk=share, proj_hidden=8, proj_dim=4
        ),
        lambda share: SM3PseudoLabels(share_trunk=share, **SMALL),
        lambda share: MultiLabelClassifier(backbone="resnet18", share_trunk=share),
    ],
    ids=["SM3Contrastive", "SM3PseudoLabels", "MultiLabelClassifier"],
)
def test_share_trunk_uses_one_trunk_for_both_modalities(build) -> None:
    """``share_trunk``: the dermoscopic and clinical trunks are one module (one set of weights);
    by default (as SM3) they are two."""
    shared, separate = build(True), build(False)
    assert shared.encoder.derm is shared.encoder.clinic
    assert separate.encoder.derm is not separate.encoder.clinic
    one = sum(p.numel() for p in shared.encoder.derm.parameters())
    assert sum(p.numel() for p in shared.encoder.parameters()) == one
    assert sum(p.numel() for p in separate.encoder.parameters()) == 2 * one


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_train_trunks_trains_them_jointly() -> None:
    """``train_trunks``: the trunks are in training mode and learn from the stage-2 loss; by
    default (as SM3) they are frozen, in eval mode, and get no gradient."""
    torch.manual_seed(0)
    joint = with_labels(SM3PseudoLabels(train_trunks=True, **SMALL)).train()
    assert joint.encoder.training and all(p.requires_grad for p in joint.encoder.parameters())
    joint.training_step(tiny_batch(), 0)["loss"].backward()
    grad = joint.encoder.derm.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    frozen = with_labels(SM3PseudoLabels(**SMALL)).train()
    assert not frozen.encoder.training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    frozen.training_step(tiny_batch(), 0)["loss"].backward()
    assert frozen.encoder.derm.conv1.weight.grad is None


@pytest.mark.parametrize("head_input", ["fused", "tokens"])
def test_classifier_dropout_acts_in_training_only(head_input: str) -> None:
    """``dropout`` on the fused feature: two training-mode passes differ, eval-mode ones do not
    (nor training-mode ones without dropout; the relation module's own dropout off here)."""
    torch.manual_seed(0)
    x = tiny_batch()["derm"]
    for p, differ in ((0.5, True), (0.0, False)):
        m = MultiLabelClassifier(
            backbone="resnet18", head_input=head_input, dropout=p, relation_dropout=0.0
        )
        m.train()
        with torch.no_grad():
            first, second = m(x, x)["DIAG"], m(x, x)["DIAG"]
        assert (not torch.allclose(first, second)) is differ
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(m(x, x)["DIAG"], m(x, x)["DIAG"])
