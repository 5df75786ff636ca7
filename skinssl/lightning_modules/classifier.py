"""The downstream multi-label classifier: supervised baseline and fine-tuning from pretraining.

Two trunks give the fused feature of both modalities. With ``head_input: fused`` each head is a
linear layer on the fused feature (the supervised baseline, and a linear probe of stage 1).
With ``head_input: tokens`` each head reads its own token of SM3's label-relation module.
``init_from`` loads a checkpoint of this framework (stage 1, stage 2 or a classifier: its trunks
and label-relation module). Heads that stage 2 clustered start from its prototypes (the last
epoch's centroids after that epoch's training) with zero bias, the others from N(0, 0.01) with
zero bias, as the authors' code (``_init_fc`` in their mlc_eval.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from skinssl.evaluation import CaseOutputs
from skinssl.labels import HEAD_NAMES, NUM_CLASSES, check_heads, head
from skinssl.lightning_modules.checkpoints import (
    check_hparams,
    checkpoint_kind,
    load_part,
    load_trunks,
    starting_weights,
)
from skinssl.lightning_modules.losses import mean_known_ce
from skinssl.lightning_modules.metrics import HeadOutputs, scalar_logs
from skinssl.lightning_modules.nets import Arch, PairEncoder
from skinssl.lightning_modules.optim import Schedule, configure_adamw
from skinssl.lightning_modules.relation import HPARAMS as RELATION_HPARAMS
from skinssl.lightning_modules.relation import LabelTokens, Relation

Batch = dict[str, Any]
Setting = Literal["linear", "projector", "finetune"]
HeadInput = Literal["fused", "tokens"]


def label_gaps(heads: Sequence[str], train: np.ndarray, valid: np.ndarray) -> list[str]:
    """What the training and validation labels [N, 8] leave out: classes without a training
    case (the model cannot learn them), and heads whose validation AUC is undefined (fewer
    than two classes among the validation labels), which leave checkpoint selection."""

    def present(labels: np.ndarray, h: str) -> list[str]:
        classes = head(h).classes
        return [classes[k] for k in np.unique(labels[:, HEAD_NAMES.index(h)]) if k >= 0]

    gaps = []
    trained = {h: present(train, h) for h in heads}
    absent = {h: [c for c in head(h).classes if c not in trained[h]] for h in heads}
    if any(absent.values()):
        listed = "; ".join(f"{h}: {c}" for h, c in absent.items() if c)
        gaps.append(f"no training case of class(es) {listed}. The model cannot learn them; "
                    "their test numbers are those of an untrained class")  # fmt: skip
    few = {h: present(valid, h) for h in heads} if len(valid) else {}
    few = {h: c for h, c in few.items() if len(c) < 2}
    if few:
        listed = "; ".join(f"{h}: {c or 'no labels'}" for h, c in few.items())
        every = len(few) == len(heads)
        end = " (no head has one: selection on it keeps the first epoch)" if every else ""
        gaps.append(f"the validation split has fewer than two classes for head(s) {listed}: "
                    "their validation AUC is undefined and left out of the validation means "
                    f"that select checkpoints{end}")  # fmt: skip
    return gaps


class MultiLabelClassifier(L.LightningModule):
    """One classification head per label on two modality trunks; loss = mean per-head CE.

    Validation logs ``val/auc_mean`` (mean of per-head macro AUCs) and ``val/auc_key_classes``
    (the authors' selection number), to select checkpoints on. ``setting`` decides what
    trains: ``linear`` the heads only; ``projector`` the label projectors, relation module and
    heads (trunks frozen, the authors' "linear"); ``finetune`` everything, the trunks at
    ``trunk_lr``. Frozen parts stay in eval mode, except a frozen stem in ``finetune``.

    Args:
        backbone: torchvision ResNet of each trunk.
        weights: trunk initialisation without ``init_from``: None, ``"imagenet"`` or a file.
        share_trunk: one trunk for both modalities instead of two.
        heads: heads to predict (default: all 8).
        head_input: ``fused`` (heads on the fused feature) or ``tokens`` (SM3's graph: label
            projectors and relation module before the heads).
        relation: relation module of the tokens: ``transformer`` or ``none`` (the ablation).
        embed_dim: token size of the label projectors.
        relation_layers: relation layers.
        relation_heads: attention heads per relation layer.
        relation_ffn: feed-forward width of the relation layers.
        relation_dropout: dropout of the relation layers.
        label_embedding: add a learned per-label embedding to each token.
        input_norm: standardise the fused feature (BatchNorm) before the label projectors.
        init_from: checkpoint of this framework to start from (None: ``weights``).
        setting: ``linear``, ``projector`` or ``finetune``.
        lr: learning rate of everything but the trunks.
        trunk_lr: learning rate of the trunks in ``finetune`` (default: ``lr``).
        freeze_stem: keep the weights of the trunks' first conv + BN in ``finetune`` (as the
            authors, whose trunks train in training mode: that BN still normalises with batch
            statistics and updates its running ones).
        weight_decay: AdamW weight decay.
        adam_eps: AdamW's eps (the authors' downstream runs: PyTorch's default, 1e-8).
        schedule: ``constant`` or ``cosine`` (per step, after warm-up).
        warmup_epochs: epochs of linear warm-up.
        lr_reference_batch: if set, learning rates are multiplied by global batch size / this
            (linear scaling); None keeps them as given.
        dropout: dropout on the fused feature.
    """

    def __init__(
        self,
        backbone: Arch = "resnet50",
        weights: str | None = None,
        share_trunk: bool = False,
        heads: tuple[str, ...] = HEAD_NAMES,
        head_input: HeadInput = "fused",
        relation: Relation = "transformer",
        embed_dim: int = 512,
        relation_layers: int = 1,
        relation_heads: int = 1,
        relation_ffn: int = 128,
        relation_dropout: float = 0.1,
        label_embedding: bool = False,
        input_norm: bool = False,
        init_from: str | None = None,
        setting: Setting = "finetune",
        lr: float = 1e-3,
        trunk_lr: float | None = None,
        freeze_stem: bool = False,
        weight_decay: float = 0.05,
        adam_eps: float = 1e-8,
        schedule: Schedule = "constant",
        warmup_epochs: float = 0,
        lr_reference_batch: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.heads = check_heads(heads)
        self.encoder = PairEncoder(backbone, None if init_from else weights, share_trunk)
        self.relation = (
            LabelTokens.from_hparams(self.encoder.out_dim, self.heads, self.hparams)
            if head_input == "tokens"
            else None
        )
        in_dim = embed_dim if self.relation is not None else self.encoder.out_dim
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.ModuleDict({h: nn.Linear(in_dim, NUM_CLASSES[h]) for h in self.heads})
        for clf in self.classifiers.values():
            nn.init.normal_(clf.weight, std=0.01)
            nn.init.zeros_(clf.bias)
        if starting_weights(init_from):
            self._init_from(init_from)
        has_attention = self.relation is not None and len(self.relation.layers) > 0
        self.val_store = HeadOutputs(self.heads)
        self.test_store = HeadOutputs(self.heads, attention=has_attention)
        self.test_outputs: CaseOutputs | None = None
        self._apply_setting()
        self.train(self.training)  # frozen parts in eval mode from the start

    # ---------------------------------------------------------------- set-up
    def _init_from(self, path: str) -> None:
        hp = self.hparams
        state, hparams = load_trunks(
            self.encoder, path, hp.backbone, hp.share_trunk, "init_from checkpoint"
        )
        loaded = ["trunks"]
        has_relation = any(k.startswith("relation.") for k in state)
        if self.relation is not None and not has_relation:
            kind = f" ({checkpoint_kind(hparams)})" if checkpoint_kind(hparams) else ""
            ways = (
                "pass a stage-2 checkpoint (SM3PseudoLabels), or head_input 'fused' (heads on the "
                "trunks, the baselines' downstream model)"
            )
            if hp.setting == "linear":
                raise ValueError(
                    f"init_from {path}{kind} has no label-relation module to freeze for "
                    f"setting 'linear' with head_input 'tokens': {ways}, or setting 'projector' "
                    "(the relation module trained from random)"
                )
            rank_zero_warn(
                f"init_from {path}{kind} has no label-relation module: the label "
                "projectors, relation module and heads start at random, only the trunks are "
                f"pretrained (SM3 fine-tunes from stage 2's checkpoint). To change it, {ways}"
            )
        if self.relation is not None and has_relation:
            structure = [k for k in RELATION_HPARAMS if k != "relation_dropout"]
            check_hparams(hparams, {k: hp[k] for k in structure}, path)
            fresh = load_part(
                self.relation, state, "relation.", path, optional=("projectors.", "embeddings.")
            )
            new_heads = sorted({k.split(".")[1] for k in fresh})
            if new_heads and hp.setting == "linear":
                raise ValueError(
                    f"{path} has no label projector for {new_heads}; setting 'linear' would keep "
                    "them random and frozen: use setting 'projector', or only the pretrained heads"
                )
            loaded.append(f"relation module (new: {new_heads})")
        from_centroids = False
        with torch.no_grad():
            for h in self.heads if self.relation is not None else ():  # heads on tokens only
                proto = state.get(f"prototypes.{h}.weight")
                clf = self.classifiers[h]
                if proto is not None and proto.shape == clf.weight.shape:
                    clf.weight.copy_(proto)
                    clf.bias.zero_()
                    loaded.append(f"{h} head from prototypes")
                    from_centroids = True
                elif proto is not None:  # e.g. over-clustered: more prototypes than classes
                    rank_zero_warn(
                        f"init_from {path}: the {h} head starts at random, not from stage 2's "
                        f"prototypes: they are {tuple(proto.shape)}, the head "
                        f"{tuple(clf.weight.shape)}"
                    )
        scaled = {
            "l2_norm": hparams.get("l2_norm", False),
            "temperature": hparams.get("temperature", 1.0),
        }
        if from_centroids and (scaled["l2_norm"] or scaled["temperature"] != 1):
            rank_zero_warn(
                f"init_from {path}: its prototypes were trained with {scaled}; the heads start "
                "from them but see unnormalised tokens at temperature 1, so their first logits "
                "are scaled differently"
            )
        rank_zero_info(f"init_from {path}: loaded {', '.join(loaded)}")

    def _frozen(self) -> list[nn.Module]:
        """Parts that do not train in this setting."""
        setting = self.hparams.setting
        if setting == "finetune":
            stems = [m for t in (self.encoder.derm, self.encoder.clinic) for m in (t.conv1, t.bn1)]
            return stems if self.hparams.freeze_stem else []
        frozen: list[nn.Module] = [self.encoder]
        if setting == "linear" and self.relation is not None:
            frozen.append(self.relation)
        return frozen

    def _apply_setting(self) -> None:
        for part in self._frozen():
            part.requires_grad_(False)

    def train(self, mode: bool = True) -> MultiLabelClassifier:
        """Frozen parts stay in eval mode (no BatchNorm statistics or dropout change); in
        ``finetune`` the whole trunks train in training mode, frozen stem included."""
        super().train(mode)
        if self.hparams.setting != "finetune":
            for part in self._frozen():
                part.eval()
        return self

    def setup(self, stage: str) -> None:
        if stage == "test":
            self._check_test_labels()
        if stage == "fit":
            self._check_labels()
            if self.hparams.setting != "finetune":
                frozen = self._frozen()
                parts = ", ".join(n for n, m in self.named_children() if m in frozen)
                rank_zero_info(f"setting {self.hparams.setting}: frozen, in eval mode: {parts}")

    def _check_test_labels(self) -> None:
        """A clear error when no test case has a label for any head: nothing to score (the
        run would write a report of blanks over the last one)."""
        dm = self.trainer.datamodule
        if not hasattr(dm, "split_rows"):
            return
        labels = dm.cases.labels[dm.split_rows("test")]
        if not (labels[:, [HEAD_NAMES.index(h) for h in self.heads]] >= 0).any():
            raise ValueError(
                f"{dm.cases.source}: no case of the test split has a label for head(s) "
                f"{list(self.heads)}: nothing to score. For the model's outputs use skinssl "
                "predict (--data.init_args.predict_split test)"
            )

    def _check_labels(self) -> None:
        """A clear error when the training split has no label for some head: it would stay
        untrained (and with no label at all, the loss is 0 and the run "succeeds"). Warnings
        for classes without a training case, and for heads whose validation AUC is undefined
        (fewer than two classes among the validation labels)."""
        dm = self.trainer.datamodule
        if not hasattr(dm, "train_labels"):
            return
        rows, labels = dm.train_labels()
        train = {h: labels[rows, HEAD_NAMES.index(h)] for h in self.heads}
        unlabelled = [h for h in self.heads if not (train[h] >= 0).any()]
        if unlabelled:
            labelled = [h for h in self.heads if h not in unlabelled]
            only = f"--model.init_args.heads=[{','.join(labelled)}]"
            fix = f", or train only the labelled heads: {only}" if labelled else ""
            raise ValueError(
                f"{dm.cases.source}: no training case has a label for head(s) {unlabelled}, "
                "which would stay untrained. Give their label columns (named after a head, e.g. "
                "PN, or as in Derm7pt's meta.csv, e.g. pigment_network; a CSV's label_columns "
                f"replaces that choice, so list every head in it){fix}"
            )
        valid = dm.cases.labels[dm.cases.splits.get("valid", rows[:0])]
        for message in label_gaps(self.heads, labels[rows], valid):
            rank_zero_warn(f"{dm.cases.source}: {message}")
        bare = int((np.stack(list(train.values()), axis=1) < 0).all(axis=1).sum())
        if bare:
            rank_zero_warn(
                f"{bare} of the {len(rows)} training cases have no label for any head "
                "(keep_unlabelled, or unknown labels): they train nothing here, and a batch of "
                "them only logs a loss of 0. keep_unlabelled is meant for pretraining"
            )

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning restores per-module modes; frozen parts must stay in eval

    # ---------------------------------------------------------------- forward
    def forward(self, derm: torch.Tensor, clinic: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head."""
        return self.forward_with_attention(derm, clinic)[0]

    def forward_with_attention(
        self, derm: torch.Tensor, clinic: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(logits per head, label-relation attention [B, L, L] averaged over layers, or None)."""
        fused = self.dropout(self.encoder(derm, clinic))
        if self.relation is None:
            return {h: layer(fused) for h, layer in self.classifiers.items()}, None
        tokens, maps = self.relation.forward_with_attention(fused)
        logits = {h: self.classifiers[h](tokens[:, i]) for i, h in enumerate(self.heads)}
        return logits, torch.stack(maps).mean(dim=0) if maps else None

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch["derm"], batch["clinic"])
        labels = batch["labels"]
        pairs = [(logits[h], labels[:, HEAD_NAMES.index(h)]) for h in self.heads]
        loss, each = mean_known_ce(pairs, temperature=1.0)
        n = len(batch["index"])
        self.log_dict(
            {f"train/loss_{h}": v for h, v in zip(self.heads, each, strict=True)}, batch_size=n
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _update(self, store: HeadOutputs, batch: Batch) -> None:
        logits, attention = self.forward_with_attention(batch["derm"], batch["clinic"])
        probs = {h: v.float().softmax(dim=1) for h, v in logits.items()}
        store.update(batch["index"], probs, batch["labels"], attention)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.val_store, batch)

    def on_validation_epoch_end(self) -> None:
        logs = scalar_logs(self.val_store.compute(), "val")
        self.val_store.reset()
        self.log_dict(logs)
        self.log("hp_metric", logs["val/auc_mean"])  # TensorBoard's HParams tab

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.test_store, batch)

    def on_test_epoch_end(self) -> None:
        """Keeps the test outputs of all ranks as ``test_outputs`` for the report callbacks."""
        self.test_outputs = self.test_store.compute()
        self.test_store.reset()
        self.log_dict(scalar_logs(self.test_outputs, "test"))

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["derm"], batch["clinic"])
        return {"index": batch["index"], **{h: v.float().softmax(dim=1) for h, v in logits.items()}}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trunk_lr = hp.lr if hp.trunk_lr is None else hp.trunk_lr
        head_params = list(self.classifiers.parameters())
        if self.relation is not None:
            head_params += list(self.relation.parameters())
        groups = [
            {"params": head_params, "lr": hp.lr},
            {"params": list(self.encoder.parameters()), "lr": trunk_lr},
        ]
        return configure_adamw(self, groups)
