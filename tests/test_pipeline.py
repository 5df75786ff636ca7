"""Paired-CSV reading, batches, views, the decoded-image cache and worker seeding."""

from __future__ import annotations

import csv
import os
import signal
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import write_jpeg
from torch.utils.data import DataLoader, Dataset

from skinssl.cli_errors import own_error
from skinssl.datamodules import DataError, PairedCSVDataModule, SyntheticDerm7ptDataModule, Views
from skinssl.datamodules.csv_pairs import read_pair_csv
from skinssl.datamodules.dataset import batch_tensor, whole_batch
from skinssl.datamodules.views import write_chw
from skinssl.labels import HEAD_NAMES


def make_csv(root: Path, n: int = 12, rows: list[dict] | None = None) -> Path:
    rng = np.random.default_rng(1)
    if rows is None:
        splits = ["train"] * (n - 4) + ["valid"] * 2 + ["test"] * 2
        rows = [
            {
                "derm": f"img/d{i}.jpg",
                "clinic": f"img/c{i}.jpg",
                "diagnosis": ["clark nevus", "MEL", "basal cell carcinoma"][i % 3],
                "PN": ["absent", "ATP", ""][i % 3],
                "split": splits[i],
            }
            for i in range(n)
        ]
    for r in rows:
        for key in ("derm", "clinic"):
            if r[key] and not (root / r[key]).exists():
                write_jpeg(root / r[key], rng, (40, 56))
    path = root / "pairs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def dm_for(path: Path, **kw) -> PairedCSVDataModule:
    args = dict(border_crop=2, image_size=24, cache_size=28, batch_size=4, num_workers=0)
    args.update(kw)
    return PairedCSVDataModule(csv_path=str(path), **args)


def test_csv_labels_and_missing_values(tmp_path: Path) -> None:
    cases = read_pair_csv(make_csv(tmp_path))
    diag, pn = HEAD_NAMES.index("DIAG"), HEAD_NAMES.index("PN")
    assert cases.labels[:3, diag].tolist() == [1, 2, 0]  # raw string, class name, raw string
    assert cases.labels[:3, pn].tolist() == [0, 2, -1]  # empty cell -> unknown
    assert (cases.labels[:, HEAD_NAMES.index("BWV")] == -1).all()  # no column -> unknown
    assert {k: len(v) for k, v in cases.splits.items()} == {"train": 8, "valid": 2, "test": 2}


def test_csv_missing_clinic_marks_invalid_pair(tmp_path: Path) -> None:
    rows = [{"derm": "a.jpg", "clinic": ""}, {"derm": "b.jpg", "clinic": "c.jpg"}]
    cases = read_pair_csv(make_csv(tmp_path, rows=rows), split_column=None)
    assert cases.pair_valid.tolist() == [False, True]
    assert cases.clinic[0] == cases.derm[0]
    assert list(cases.splits) == ["train"]
    rows[0]["clinic"] = "./a.jpg"  # the dermoscopic image, spelled another way
    cases = read_pair_csv(make_csv(tmp_path, rows=rows), split_column=None)
    assert cases.pair_valid.tolist() == [False, True]


def test_csv_without_its_split_column(tmp_path: Path) -> None:
    """No 'split' column: every case in train, with a warning; a named column that is not
    there (a typo) is an error, not every case in train."""
    path = make_csv(tmp_path)
    path.write_text(path.read_text().replace(",split", ",fold", 1))
    with pytest.warns(UserWarning, match="no 'split' column, so every case is in 'train'"):
        assert list(read_pair_csv(path).splits) == ["train"]
    with pytest.raises(DataError, match=r"split column 'fld' is not in \['derm', .*'fold'\]"):
        read_pair_csv(path, split_column="fld")
    assert {k: len(v) for k, v in read_pair_csv(path, split_column="fold").splits.items()} == {
        "train": 8, "valid": 2, "test": 2,
    }  # fmt: skip
    path.write_text(path.read_text().replace(",fold", ",Split", 1))
    with pytest.warns(UserWarning, match="did you mean split_column: 'Split'"):
        read_pair_csv(path)
    with warnings.catch_warnings():  # predicting every case: splits do not matter
        warnings.filterwarnings("error", message=".*no 'split' column")
        dm_for(path, predict_split="all").setup("predict")
    with pytest.warns(UserWarning, match="did you mean split_column: 'Split'"):
        dm_for(path, predict_split="all").setup("fit")  # (the setting is predict's only)
    dm = dm_for(path, split_column=None)
    dm.setup("predict")
    hint = r" \(predict's split: --data.init_args.predict_split\)"
    with pytest.raises(DataError, match=r"no cases in split 'test'; available: \['train', 'all'\]"
                       + hint) as error:  # fmt: skip
        dm.predict_dataloader()
    assert str(own_error(error.value)) == str(error.value)  # the command prints it with its hint


def test_csv_errors(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    text = path.read_text()
    lines = text.splitlines()

    def rejected(content: str | bytes, pattern: str, **kwargs: object) -> None:
        """The CSV ``content`` is one error matching ``pattern``."""
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(DataError, match=pattern):
            read_pair_csv(path, **kwargs)

    rejected(text.replace("derm,", "dermoscopic,", 1), r"missing required column\(s\) \['derm'\]")
    rejected(text.replace(",train", ",training", 1), "line 2 .*unknown split 'training'")
    rejected(text.replace("MEL", "melanomaa", 1),
             r"line 3 .*'melanomaa'\nvalid values: head DIAG .*: 'BCC'")  # fmt: skip
    rejected(text, "label column 'STR'", label_columns={"STR": "STR"})
    header = r"\(derm,clinic,diagnosis,PN,split\)"
    rejected("\n".join([*lines[:2], lines[2] + ",extra", *lines[3:]]),
             f"line 3: 6 fields, but the header has 5 {header}")  # fmt: skip
    rejected("\n".join([*lines[:2], lines[2].rsplit(",", 2)[0], *lines[3:]]),
             f"line 3: 3 fields, but the header has 5 {header}")  # fmt: skip
    rejected(text.replace("PN,split", "PN,PN", 1),  # the rows keep 5 fields
             r"column\(s\) \['PN'\] appear more than once")  # fmt: skip
    rejected(text.replace("diagnosis,PN", "pigment_network,PN", 1),
             r"columns \['PN', 'pigment_network'\] both name head PN")  # fmt: skip
    rejected(text.replace("derm,clinic", "derm, clinic", 1),
             r"\['clinic'\].*\[' clinic'\] have spaces around the name")  # fmt: skip
    rejected(text.replace("derm,", "Derm,", 1), r"\['Derm'\] differ in upper/lower case")
    # a blank line is skipped, and the lines after it keep their numbers in the file
    rejected("\n".join([*lines[:2], "", *lines[2:]]).replace("MEL", "melanomaa", 1),
             r"line 4 \(row 1\), column 'diagnosis'")  # fmt: skip
    # every unknown label in one error, in file order, with the valid values of each head
    listed = r"pairs.csv: 8 unknown label\(s\):\n  line 3 \(row 1\), column 'diagnosis': "
    listed += r"'melanomaa'\n  line 3 \(row 1\), column 'PN': 'atypicall'\n  line 6 \(row 4\)"
    rejected(text.replace("MEL", "melanomaa").replace("ATP", "atypicall"),
             listed + r"(.|\n)*head DIAG \(column 'diagnosis'\): 'BCC'")  # fmt: skip
    rejected("nævus".join(text.rsplit("clark nevus", 1)).encode("cp1252"),  # Excel's "CSV"
             r"pairs.csv, line 11: not UTF-8 text \(byte b'\\xe6'\); save the")  # fmt: skip
    rejected(text.replace(",", ";"), "one column: fields must be separated by commas")
    rejected(text.replace("MEL", "melanomaa", 1), r"Derm7pt's \(skinssl/labels.py\)(.|\n)*Leave "
             r"a cell empty for an unknown label; label_columns: \{\} reads no labels")  # fmt: skip
    # one case twice, the second time spelled another way
    twice = r"line 14 \(row 12\): the pair \(./img/d0.jpg, img/c0.jpg\) is also that of line 2 "
    rejected("\n".join([*lines, "./" + lines[1]]), twice + r"\(row 0\); each case must be listed")
    for spelled in ("Diagnosis", "diagnosis "):
        path.write_text(text.replace("diagnosis", spelled, 1))
        with pytest.warns(UserWarning, match=rf"\['{spelled}'\] not read as head DIAG's labels"):
            read_pair_csv(path)


def test_csv_skips_empty_rows_and_reads_validation(tmp_path: Path) -> None:
    """Rows of empty fields (a spreadsheet's leftovers) are skipped as blank lines are."""
    path = make_csv(tmp_path)
    lines = path.read_text().replace(",valid", ",Validation").splitlines()
    path.write_text("\n".join([*lines[:3], ",,,,", "  ", *lines[3:], ",, ,,", ""]))
    cases = read_pair_csv(path)
    assert {k: len(v) for k, v in cases.splits.items()} == {"train": 8, "valid": 2, "test": 2}
    assert cases.derm[2].name == "d2.jpg"


def test_csv_paths_from_home_and_relative_ones_in_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    make_csv(tmp_path)
    cases = read_pair_csv("~/pairs.csv", image_root="~")
    assert len(cases) == 12 and cases.derm[0] == tmp_path / "img" / "d0.jpg"
    monkeypatch.chdir(tmp_path / "img")
    where = rf"file not found: pairs.csv \(relative to the working directory {tmp_path}/img\)"
    with pytest.raises(DataError, match=where):
        read_pair_csv("pairs.csv")


def test_csv_id_column(tmp_path: Path) -> None:
    path = make_csv(tmp_path, n=4, rows=[
        {"derm": f"d{i}.jpg", "clinic": f"c{i}.jpg", "lesion": f"L{i:02d}"} for i in range(4)
    ])  # fmt: skip
    cases = read_pair_csv(path, split_column=None, id_column="lesion")
    assert cases.ids == ["L00", "L01", "L02", "L03"]
    assert read_pair_csv(path, split_column=None).ids is None
    path.write_text(path.read_text().replace("L02", "L01"))
    with pytest.raises(DataError, match=r"line 4 \(row 2\), column 'lesion': case id 'L01' is "
                       "also that of row 1"):  # fmt: skip
        read_pair_csv(path, split_column=None, id_column="lesion")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['case'\]"):
        read_pair_csv(path, split_column=None, id_column="case")


def test_training_batches_carry_each_cases_pair_valid(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("img/c1.jpg", "")  # case 1 (train): no clinical image
    path.write_text("\n".join(lines) + "\n")
    dm = dm_for(path, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    want = torch.as_tensor(dm.cases.pair_valid[batch["index"].numpy()])
    assert not want.all() and torch.equal(batch["pair_valid"], want)


def test_an_image_in_two_splits_is_an_error(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    lines = path.read_text().splitlines()  # row 0 (train) again as row 11 (test)
    path.write_text("\n".join([*lines[:-1], lines[1].replace(",train", ",test")]) + "\n")
    with pytest.raises(DataError, match=r"image .*d0.jpg is in row 0 \('train' split\) and row "
                       r"11 \('test' split\)"):  # fmt: skip
        read_pair_csv(path)
    # however the path is spelled
    text = path.read_text().rsplit("img/d0.jpg", 1)
    path.write_text(f"{(tmp_path / 'img' / '..' / 'img').absolute()}/d0.jpg".join(text))
    with pytest.raises(DataError, match=r"is in row 0 \('train' split\) and row 11"):
        read_pair_csv(path)


def test_heads_without_training_labels_are_an_error(tmp_path: Path) -> None:
    """A CSV labels DIAG and PN only: training the other heads is refused, naming them."""
    from skinssl.lightning_modules import MultiLabelClassifier

    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = MultiLabelClassifier(backbone="resnet18", weights=None)
    named = r"\['BWV', 'VS', 'PIG', 'STR', 'DaG', 'RS'\].*--model.init_args.heads=\[DIAG,PN\]"
    with pytest.raises(ValueError, match=r"pairs.csv: no training case has a label for .*" + named):
        trainer.fit(model, dm_for(make_csv(tmp_path)))


def test_testing_cases_without_labels_is_an_error(tmp_path: Path) -> None:
    """A test split without a label for any of the model's heads has nothing to score."""
    from skinssl.lightning_modules import MultiLabelClassifier

    path = make_csv(tmp_path)
    text = path.read_text().splitlines()
    path.write_text("\n".join([*text[:11], "img/d10.jpg,img/c10.jpg,,,test", text[12]]))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    model = MultiLabelClassifier(backbone="resnet18", weights=None, heads=["PN"])
    nothing = r"no case of the test split has a label for head\(s\) \['PN'\]: nothing to score"
    with pytest.raises(ValueError, match=nothing + ". For the model's outputs use skinssl predict"):
        trainer.test(model, dm_for(path))
    trainer.test(MultiLabelClassifier(backbone="resnet18", weights=None, heads=["DIAG"]),
                 dm_for(path))  # fmt: skip


def test_batch_structure(tmp_path: Path) -> None:
    dm = dm_for(make_csv(tmp_path), derm_views=Views.simclr(), clinic_views=Views(n=1))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"index", "derm", "clinic", "labels", "pair_valid"}
    assert batch["index"].dtype == torch.long and batch["labels"].shape == (4, 8)
    assert isinstance(batch["derm"], list) and len(batch["derm"]) == 2
    assert batch["derm"][0].shape == (4, 3, 24, 24) and batch["derm"][0].dtype == torch.uint8
    assert batch["clinic"].shape == (4, 3, 24, 24)
    assert batch["pair_valid"].dtype == torch.bool
    normed = dm.on_after_batch_transfer(batch, 0)
    assert normed["clinic"].dtype == torch.float32
    assert abs(float(normed["clinic"].mean())) < 3
    val = next(iter(dm.val_dataloader()))
    assert sorted(val["index"].tolist()) == [8, 9]
    # index is the global row, labels follow it
    assert torch.equal(val["labels"], torch.as_tensor(dm.cases.labels[val["index"].numpy()]))


def test_eval_view_same_with_and_without_cache(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    batches = []
    for cache in ("memory", "none"):
        dm = dm_for(path, cache=cache)
        dm.setup("test")
        batches.append(next(iter(dm.test_dataloader())))
    assert torch.equal(batches[0]["derm"], batches[1]["derm"])


def test_disk_cache_reused(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    cache_dir = tmp_path / "cache"
    first = dm_for(path, cache="disk", cache_dir=str(cache_dir))
    first.setup("fit")  # a fit decodes the training and validation images only: 10 cases
    assert len(list(cache_dir.glob("*.npy"))) == 20
    first.setup("test")  # and a later stage its own
    files = sorted(cache_dir.glob("*.npy"))
    assert len(files) == 24
    stamps = [f.stat().st_mtime_ns for f in files]
    dm = dm_for(path, cache="disk", cache_dir=str(cache_dir))
    dm.setup("fit")
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert dm.dataset("train", train=True)[0]["derm"].shape == (3, 24, 24)
    # an image outside the stage's splits is decoded when first read
    assert dm.dataset("test", train=False)[0]["derm"].shape == (3, 24, 24)


class _SharedFlag(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitems__(self, keys: list[int]) -> dict:
        return {"shared": batch_tensor((len(keys), 3)).is_shared()}


def test_a_batch_holds_its_cases_views_written_in_place(tmp_path: Path) -> None:
    views = dict(derm_views=Views.simclr(), clinic_views=Views(n=1))
    dm = dm_for(make_csv(tmp_path, n=20), num_workers=1, **views)
    dm.setup("fit")
    loader = dm.train_dataloader()
    keys = list(loader.sampler)[:4]  # (position, epoch): the first batch's
    batch = next(iter(loader))  # made by a worker
    alone = [loader.dataset[k] for k in keys]  # each case on its own, in this process
    assert batch["index"].tolist() == [a["index"] for a in alone]
    for v in range(2):
        assert torch.equal(batch["derm"][v], torch.stack([a["derm"][v] for a in alone]))
    assert torch.equal(batch["clinic"], torch.stack([a["clinic"] for a in alone]))
    assert torch.equal(batch["labels"], torch.stack([a["labels"] for a in alone]))
    assert not torch.equal(batch["derm"][0], batch["derm"][1])
    # in a worker, batches are made in shared memory (no copy to hand them over)
    flags = DataLoader(_SharedFlag(), batch_size=2, num_workers=1, collate_fn=whole_batch)
    assert next(iter(flags))["shared"] and not batch_tensor((2, 3)).is_shared()
    with pytest.raises(RuntimeError, match=r"does not fit \(3, 24, 24\)"):
        write_chw(np.zeros((24, 20, 3), np.uint8), torch.empty(3, 24, 24, dtype=torch.uint8))


def _epoch(loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(case index, dermoscopic views) of one training epoch, as Lightning runs it."""
    loader.sampler.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([b["index"] for b in batches]), torch.cat([b["derm"] for b in batches])


def test_views_follow_seed_epoch_and_case_not_workers(tmp_path: Path) -> None:
    path = make_csv(tmp_path, n=20)

    def run(seed: int, workers: int, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        views = Views(n=1, p_color_jitter=1.0)
        dm = dm_for(path, num_workers=workers, batch_size=2, derm_views=views, drop_last=False)
        dm.setup("fit")
        return _epoch(dm.train_dataloader(), epoch)

    order, views = run(0, workers=2)
    assert sorted(order.tolist()) == list(range(16))  # the 16 training cases, shuffled
    same_order, same_views = run(0, workers=0)
    assert torch.equal(order, same_order) and torch.equal(views, same_views)
    other_order, other_views = run(1, workers=2)
    assert not torch.equal(order, other_order)
    next_order, next_views = run(0, workers=2, epoch=1)
    assert not torch.equal(order, next_order)
    # the same case gets new views in the next epoch, and other views under another seed
    for o, v in ((next_order, next_views), (other_order, other_views)):
        position = {int(c): i for i, c in enumerate(o)}
        same_case = v[[position[int(c)] for c in order]]
        assert all(not torch.equal(a, b) for a, b in zip(views, same_case, strict=True))


def test_a_fit_leaves_torch_seeded_as_before(tmp_path: Path) -> None:
    """StepSeed reseeds torch every step; a later run in the process finds the run seed."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from skinssl.callbacks import StepSeed

    L.seed_everything(7)
    options = dict(max_steps=2, default_root_dir=tmp_path, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)  # fmt: skip
    trainer = L.Trainer(**options, callbacks=[StepSeed()])
    trainer.fit(BoringModel())
    assert torch.initial_seed() == 7

    class Failing(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            if batch_idx == 1:
                raise RuntimeError("failed")
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="failed"):
        L.Trainer(**{**options, "callbacks": [StepSeed()]}).fit(Failing())
    assert torch.initial_seed() == 7  # also after a fit that raised


def test_loader_resumes_mid_epoch(tmp_path: Path) -> None:
    """After k batches of epoch e, a loader restored from the state gives batches k+1, ..."""
    torch.manual_seed(0)
    dm = dm_for(make_csv(tmp_path, n=20), batch_size=2, drop_last=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    order, views = _epoch(loader, 3)
    resumed = dm.train_dataloader()
    with pytest.raises(ValueError, match=r"stopped mid-epoch with 2 process\(es\) x batch 2; "
                       r"resuming with 1 x 2 .*--trainer.devices=2.*batch_size=2"):  # fmt: skip
        resumed.load_state_dict({"epoch": 3, "batches": 2, "replicas": 2, "batch_size": 2})
    resumed.load_state_dict({"epoch": 3, "batches": 2})
    rest = list(resumed)
    assert torch.equal(torch.cat([b["index"] for b in rest]), order[4:])
    assert torch.equal(torch.cat([b["derm"] for b in rest]), views[4:])
    # the state names the next batch: mid-epoch, or the next epoch's first once one is complete
    resumed.sampler.set_epoch(3)
    layout = {"replicas": 1, "batch_size": 2}
    for done, per_epoch, want in ((2, 8, (3, 2)), (8, 8, (4, 0)), (5, 5, (4, 0))):
        resumed.progress = lambda d=done, p=per_epoch: (d, p)
        assert resumed.state_dict() == {"epoch": want[0], "batches": want[1], **layout}
    # mid-epoch on another layout: a clear error; at an epoch boundary any layout resumes
    with pytest.raises(ValueError, match="2 process\\(es\\) x batch 2"):
        resumed.load_state_dict({"epoch": 3, "batches": 2, "replicas": 2, "batch_size": 2})
    resumed.load_state_dict({"epoch": 4, "batches": 0, "replicas": 2, "batch_size": 8})


def test_views_validation() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        Views(crop_scale=(0.0, 1.0)).check()
    with pytest.raises(ValueError, match="p_blur"):
        Views(p_blur=2.0).check()
    with pytest.raises(ValueError, match=r"color_jitter = \(-1, 0, 0, 0\): brightness"):
        Views(color_jitter=(-1, 0, 0, 0)).check()
    with pytest.raises(ValueError, match="hue in"):
        Views(color_jitter=(0, 0, 0, 0.6)).check()
    with pytest.raises(ValueError, match=r"blur_sigma = \(-1, 0\): need 0 < low <= high"):
        Views(blur_sigma=(-1, 0)).check()
    with pytest.raises(ValueError, match="set --data.init_args.cache_dir"):
        SyntheticDerm7ptDataModule(cache="disk")
    with pytest.raises(ValueError, match="set --data.init_args.cache_size=96 or more"):
        SyntheticDerm7ptDataModule(image_size=96, cache_size=72)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_predict_reports_unreadable_images_per_case(tmp_path: Path, cache: str) -> None:
    """Prediction keeps going past a missing and a truncated image, naming each; fit stops."""
    path = make_csv(tmp_path, n=6)
    for name in ("c1.jpg", "d3.jpg", "c3.jpg"):
        (tmp_path / "img" / name).unlink()
    truncated = tmp_path / "img" / "d4.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    dm = dm_for(path, cache=cache, predict_split="all", eval_batch_size=6)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["index"].tolist() == list(range(6))
    errors = dict(enumerate(batch["error"]))
    assert "image file not found" in errors[1] and "c1.jpg" in errors[1]
    assert "cannot decode" in errors[4] and "d4.jpg" in errors[4]
    assert "d3.jpg" in errors[3] and "; " in errors[3] and "c3.jpg" in errors[3]  # both named
    assert all(errors[i] == "" for i in (0, 2, 5))
    assert "; " not in errors[4]  # (its clinical image loads)
    assert batch["derm"].shape == (6, 3, 24, 24) and not batch["clinic"][1].any()
    with pytest.raises(DataError, match=f"3 image file.* not found:\n  {tmp_path}/img/c1.jpg "
                       r"\(row 1 clinical\)"):  # fmt: skip
        strict = dm_for(path, cache=cache)
        strict.setup("test")
        next(iter(strict.test_dataloader()))


def test_a_stand_in_pairs_unreadable_image_is_named_once(tmp_path: Path) -> None:
    rows = [{"derm": f"img/d{i}.jpg", "clinic": "", "split": "test"} for i in range(2)]
    path = make_csv(tmp_path, rows=rows)
    (tmp_path / "img" / "d1.jpg").write_bytes(b"not an image")
    dm = dm_for(path, predict_split="all", eval_batch_size=2)
    dm.setup("predict")
    errors = next(iter(dm.predict_dataloader()))["error"]
    assert errors[0] == "" and errors[1].count("d1.jpg: ") == 1 and "; " not in errors[1]


def test_each_stage_decides_whether_unreadable_images_stop_it(tmp_path: Path) -> None:
    """One datamodule through fit, then predict (tolerant), then test (stops again)."""
    path = make_csv(tmp_path, n=6)  # rows 4 and 5: test
    truncated = tmp_path / "img" / "d5.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    dm = dm_for(path, eval_batch_size=6)
    dm.setup("fit")
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["index"].tolist() == [4, 5] and batch["error"][0] == ""
    assert "cannot decode" in batch["error"][1] and "d5.jpg" in batch["error"][1]
    with pytest.raises(DataError, match=r"cannot decode image .*d5.jpg"):
        dm.setup("test")  # at set-up, as for a first stage: what prediction found is kept


def test_loaders_pin_batches_for_cuda_runs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU fit on a machine with a GPU does not pin; without a trainer CUDA's presence
    decides (as the data benchmark loads)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = dm_for(make_csv(tmp_path))
    dm.setup("fit")
    assert dm.val_dataloader().pin_memory
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert not dm.val_dataloader().pin_memory


def test_predictions_name_cases_by_the_id_column(tmp_path: Path) -> None:
    from skinssl.callbacks import PredictionWriter
    from skinssl.lightning_modules import MultiLabelClassifier

    rows = [{"derm": f"img/d{i}.jpg", "clinic": f"img/c{i}.jpg", "lesion": f"L{i}", "split": s}
            for i, s in enumerate(["train", "test", "test"])]  # fmt: skip
    dm = PairedCSVDataModule(csv_path=str(make_csv(tmp_path, rows=rows)), id_column="lesion",
                             image_size=24, cache_size=28, num_workers=0)  # fmt: skip
    writer = PredictionWriter(output=str(tmp_path / "predictions.csv"))
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.predict(MultiLabelClassifier(backbone="resnet18", weights=None, heads=["DIAG"]), dm)
    with writer.path.open() as f:
        got = list(csv.DictReader(f))
    assert [(r["case"], r["id"], Path(r["derm"]).name) for r in got] == [
        ("1", "L1", "d1.jpg"), ("2", "L2", "d2.jpg")
    ]  # fmt: skip


def test_prediction_output_checked_before_predicting(tmp_path: Path) -> None:
    from skinssl.callbacks import PredictionWriter
    from skinssl.callbacks.predictions import check_output

    table = make_csv(tmp_path, n=6)
    with pytest.raises(ValueError, match="is the input table .*give another file"):
        check_output(tmp_path / "." / "pairs.csv", str(table))
    with pytest.raises(ValueError, match=r"is a folder; give a file name, e\.g\. .*img/pre"):
        check_output(tmp_path / "img", str(table))
    with pytest.raises(ValueError, match=r"pairs\.csv is a file, not a folder"):
        check_output(tmp_path / "pairs.csv" / "out.csv", str(table))
    check_output(tmp_path / "new" / "folder" / "out.csv", str(table))  # made when written
    with pytest.raises(ValueError, match="the 7-point score runs from 0 to 10"):
        PredictionWriter(melanoma_threshold=11)


def test_predictions_keep_their_columns_and_say_what_a_limit_left_out(tmp_path: Path) -> None:
    """Every case failing still gives every prediction column; a batch limit is named."""
    from skinssl.callbacks import PredictionWriter
    from skinssl.lightning_modules import MultiLabelClassifier

    path = make_csv(tmp_path, n=6)
    for i in range(6):
        (tmp_path / "img" / f"d{i}.jpg").unlink()
    writer = PredictionWriter(output=str(tmp_path / "out" / "predictions.csv"))
    model = MultiLabelClassifier(backbone="resnet18", weights=None, heads=["DIAG", "PN"])
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.predict(model, dm_for(path, predict_split="all", eval_batch_size=2))
    with writer.path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert len(rows) == 6 and all(r["status"].startswith("error: ") for r in rows)
    assert {"p_DIAG_MEL", "pred_DIAG", "melanoma_diagnosis", "p_PN_ATP"} <= set(reader.fieldnames)
    make_csv(tmp_path, n=6)  # the images again
    limited = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer],
                        limit_predict_batches=1, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    with pytest.warns(UserWarning, match=r"has 2 of the 6 cases to predict: trainer\.limit_pre"):
        limited.predict(model, dm_for(path, predict_split="all", eval_batch_size=2))


def test_warns_of_classes_and_pairs_the_data_lacks(tmp_path: Path) -> None:
    from skinssl.lightning_modules.classifier import label_gaps

    diag, pn = HEAD_NAMES.index("DIAG"), HEAD_NAMES.index("PN")
    train = np.full((4, len(HEAD_NAMES)), -1)
    train[:, diag], train[:, pn] = [0, 1, 2, 3], [0, 1, 2, 2]  # no SK; every PN class
    valid = train.copy()
    valid[:, diag] = 1
    gaps = label_gaps(["DIAG", "PN"], train, valid)
    assert gaps[0].startswith("no training case of class(es) DIAG: ['SK']. The model cannot")
    assert "fewer than two classes for head(s) DIAG: ['NEV']: their validation AUC" in gaps[1]
    assert "no head has one" not in gaps[1]
    gaps = label_gaps(["DIAG"], train, valid)
    assert "DIAG: ['NEV']" in gaps[1] and "(no head has one: selection on it keeps the" in gaps[1]
    assert label_gaps(["PN"], train, train) == []
    # a table of dermoscopic images alone
    rows = [{"derm": f"img/d{i}.jpg", "clinic": "", "split": "train"} for i in range(3)]
    with pytest.warns(UserWarning, match="no training case has a clinical image"):
        dm_for(make_csv(tmp_path, rows=rows)).setup("fit")


def test_warns_when_an_epoch_is_one_batch_or_drop_last_leaves_much_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """11 training cases: batch 3 leaves 2 out (18 %), batch 4 leaves 3 out (27 %), batch 16
    is one batch of 11; batch 5 without drop_last ends with a batch of one case."""
    from skinssl.datamodules import base

    warned: list[str] = []
    monkeypatch.setattr(base, "rank_zero_warn", warned.append)
    csv = make_csv(tmp_path, n=15)
    expected = {
        3: None,
        4: "11 cases per rank and batch_size 4 make 2 batch(es) per epoch, and drop_last leaves 3",
        16: "11 cases per rank and batch_size 16 make 1 batch(es) per epoch;",
        (5, False): "batch_size 5 leave a last batch of one case, on which a trained BatchNorm",
        (4, False): None,
    }
    for key, message in expected.items():
        batch_size, drop_last = key if isinstance(key, tuple) else (key, True)
        warned.clear()
        dm = dm_for(csv, batch_size=batch_size, drop_last=drop_last)
        dm.setup("fit")
        dm.train_dataloader()
        if message is None:
            assert warned == [], batch_size
        else:
            assert len(warned) == 1 and message in warned[0], (batch_size, warned)


def test_loader_workers_outlive_slurms_early_warning_signal(tmp_path: Path) -> None:
    """SLURM's ``--signal=USR1@...`` reaches every process of the job: the training loader's
    workers ignore it, so the main process can save its checkpoint (the preemption callback)."""
    dm = dm_for(make_csv(tmp_path, n=20), num_workers=1, batch_size=2)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    workers = batches._workers  # torch's worker processes of this iteration
    assert workers and all(w.is_alive() for w in workers)
    for w in workers:
        os.kill(w.pid, signal.SIGUSR1)
    time.sleep(0.5)  # a worker that did not ignore it would be dead by now
    assert all(w.is_alive() for w in workers)
    assert len(next(batches)["index"]) == 2


def test_a_label_fraction_says_which_cases_training_reads(tmp_path: Path, caplog) -> None:
    dm = SyntheticDerm7ptDataModule(root=str(tmp_path / "s"), num_cases=60, synthetic_size=64,
                                    image_size=32, cache_size=36, num_workers=0,
                                    label_fraction=0.3)  # fmt: skip
    dm.prepare_data()
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert (
        "label_fraction 0.3: the labels of 8 of the 25 training cases are used (stratified by "
        "diagnosis); training reads 8 cases (the labelled ones; keep_unlabelled: true keeps"
        in caplog.text
    )
    rows = [{"derm": f"img/d{i}.jpg", "clinic": f"img/c{i}.jpg", "PN": "absent",
             "split": "valid" if i < 2 else "train"} for i in range(8)]  # fmt: skip
    no_diagnosis = dm_for(make_csv(tmp_path, rows=rows), label_fraction=0.5)
    with caplog.at_level("INFO"):
        no_diagnosis.setup("fit")
    assert (
        "the labels of 3 of the 6 training cases are used (drawn at random: no training "
        "case has a diagnosis to stratify by)" in caplog.text
    )
