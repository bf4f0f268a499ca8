"""The folder format of a user's own task (issue 15): classes.yaml, index / palette / RGB masks, a class count
other than 19, and `squeezenas dataset check` counting exactly what was written and listing every bad file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nas_core.data import DatasetError, FolderSegmentation, generate_cityscapes, generate_folder
from nas_core.data.folder import read_classes
from nas_core.data.generate import FOLDER_ENCODINGS
from nas_core.data.labels import IGNORE_INDEX
from tests.repo_copy import ROOT, stage_env

CLASSES = (("sky", (70, 130, 180)), ("grass", (0, 200, 0)), ("cat", (200, 100, 0)))  # 3 classes, not 19
SIZES = ((20, 32), (16, 24), (24, 16))


def write_dataset(root: Path, encoding: str, seed: int = 0) -> dict:
    """A 3-class dataset with random masks in `encoding`; returns the pixel counts it wrote per split."""
    rng = np.random.default_rng(seed)
    entries = [{"name": n, "color": list(c)} for n, c in CLASSES]
    spec = {"index": {"classes": [{**e, "id": 5 + k} for k, e in enumerate(entries)], "ignore_index": 0},
            "palette": {"classes": entries}, "rgb": {"classes": entries, "ignore_color": [0, 0, 0]}}[encoding]
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(spec))
    counts = {}
    for split, n in (("train", 3), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        histogram = np.zeros(4, dtype=np.int64)
        for i in range(n):
            label = rng.integers(0, 4, SIZES[i])  # 3: ignored
            histogram += np.bincount(label.ravel(), minlength=4)
            image = rng.integers(0, 256, (*SIZES[i], 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            if encoding == "index":
                mask = Image.fromarray(np.array([5, 6, 7, 0], dtype=np.uint8)[label])
            elif encoding == "rgb":
                mask = Image.fromarray(np.array([*(c for _, c in CLASSES), (0, 0, 0)], dtype=np.uint8)[label])
            else:
                mask = Image.fromarray(np.array([0, 1, 2, 255], dtype=np.uint8)[label]).convert("P")
                mask.putpalette([v for _, c in CLASSES for v in c] + [0] * 3 * 253)
            mask.save(root / "masks" / split / f"{i}.png")
        counts[split] = histogram
    return counts


def check(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "dataset", "check", str(root), *args], cwd=root.parent,
                          env=stage_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("encoding", FOLDER_ENCODINGS)
def test_dataset_check_counts_exactly_what_was_written(tmp_path, encoding):
    written = write_dataset(tmp_path / "mine", encoding)
    proc = check(tmp_path / "mine", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["format"], report["num_classes"], report["classes"]) == ("folder", 3, ["sky", "grass", "cat"])
    assert report["splits"] == {"train": 3, "val": 2}
    assert report["class_pixels"] == {name: {s: int(written[s][k]) for s in written}
                                      for k, (name, _) in enumerate(CLASSES)}
    assert report["ignored_pixels"] == {s: int(written[s][3]) for s in written}
    assert report["ignored_share"]["val"] == pytest.approx(written["val"][3] / written["val"].sum())


@pytest.mark.parametrize("encoding", FOLDER_ENCODINGS)
def test_the_generated_folder_dataset_reads_back_as_written(tmp_path, encoding):
    summary = generate_folder(tmp_path / "gen", encoding, num_train=2, num_val=1, size=(32, 64), seed=1)
    report = json.loads(check(tmp_path / "gen", "--json").stdout)
    assert report["num_classes"] == 7 and report["classes"] == summary["classes"]
    assert report["class_pixels"] == summary["class_pixels"] and report["ignored_pixels"] == summary["ignored_pixels"]


def test_the_reader_gives_class_indices_and_ignore(tmp_path):
    write_dataset(tmp_path / "mine", "index")
    val = FolderSegmentation(tmp_path / "mine", "val")
    image, label = val[1]
    assert image.shape == (3, 16, 24) and label.shape == (16, 24) and val.class_names == ("sky", "grass", "cat")
    assert set(label.unique().tolist()) == {0, 1, 2, IGNORE_INDEX}


def test_the_table_and_the_preview(tmp_path):
    write_dataset(tmp_path / "mine", "rgb")
    proc = check(tmp_path / "mine", "--preview", str(tmp_path / "preview.png"))
    assert proc.returncode == 0, proc.stderr
    assert "folder format, 3 classes" in proc.stdout and "grass" in proc.stdout
    preview = np.array(Image.open(tmp_path / "preview.png"))
    assert preview.shape[1] == 4 * 256
    legend = preview[-40:].reshape(-1, 3)  # the legend's swatches carry the class colours
    assert all((legend == c).all(1).any() for _, c in CLASSES)


def test_every_problem_is_listed_naming_its_file_and_nothing_is_written(tmp_path):
    root = tmp_path / "mine"
    write_dataset(root, "rgb")
    (root / "images" / "train" / "0.png").unlink()  # a mask without its image
    (root / "masks" / "val" / "0.png").unlink()  # an image without its mask
    Image.new("RGB", (5, 5)).save(root / "masks" / "train" / "1.png")  # a size that differs
    mask = np.array(Image.open(root / "masks" / "train" / "2.png"))
    mask[0, 0] = (1, 2, 3)
    Image.fromarray(mask).save(root / "masks" / "train" / "2.png")  # a colour not in classes.yaml
    (root / "images" / "val" / "1.png").write_bytes(b"not a png")  # an unreadable file
    (root / "images" / "val" / "notes.txt").write_text("x")  # a stray file
    proc = check(root, "--preview", str(tmp_path / "preview.png"), "--json")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"squeezenas dataset check: error: 6 problem(s) in {root} (no preview written):"
    expected = [f"{root}/masks/train/0.png: no image", f"{root}/masks/train/1.png: mask is 5x5 but its image",
                f"{root}/masks/train/2.png: colours [1, 2, 3] (1 pixels) are no class of classes.yaml",
                f"{root}/images/val/0.png: no mask (expected {root}/masks/val/0.png)",
                f"cannot read image {root}/images/val/1.png", f"{root}/images/val/notes.txt: unexpected file"]
    assert all(any(e in line for line in lines[1:]) for e in expected), lines
    assert not (tmp_path / "preview.png").exists()


def test_an_index_not_in_classes_yaml_names_the_file(tmp_path):
    root = tmp_path / "mine"
    write_dataset(root, "index")
    Image.fromarray(np.full(SIZES[0], 9, dtype=np.uint8)).save(root / "masks" / "val" / "0.png")
    proc = check(root)
    assert proc.returncode == 2
    assert f"{root}/masks/val/0.png: mask values 9 ({SIZES[0][0] * SIZES[0][1]} pixels) are no class of " \
           "classes.yaml (expected 5, 6, 7 or ignore_index 0)" in proc.stderr
    with pytest.raises(DatasetError, match="masks/val/0.png: mask values 9"):
        FolderSegmentation(root, "val")[0]


@pytest.mark.parametrize("text,problems", [
    (None, ["classes.yaml: missing"]),
    ("classes: [a, b\n", ["classes.yaml: cannot read it"]),
    ("- road\n", ["classes.yaml: expected 'classes:'"]),
    ("classes:\n  - {name: road, color: [1, 2]}\n  - {name: road, colour: [1, 2, 3], color: [0, 0, 0]}\n"
     "ignore_index: yes\n",
     ["classes[0].color: expected [r, g, b]", "classes[1]: unknown key 'colour'", "ignore_index: expected an integer",
      "name 'road' given to more than one class"]),
    ("classes:\n  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [1, 2, 3], id: 4}\nignore_index: 0\n",
     ["give every class an id or none", "color (1, 2, 3) given to more than one class"]),
    ("classes:\n  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [4, 5, 6]}\nignore_index: 0\n",
     ["ignore_index 0 is also the mask value of class 'road' (its position)"]),
])
def test_a_bad_classes_yaml_lists_every_problem(tmp_path, text, problems):
    root = tmp_path / "mine"
    write_dataset(root, "palette")
    if text is None:
        (root / "classes.yaml").unlink()
    else:
        (root / "classes.yaml").write_text(text)
    proc = check(root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()[1:]
    assert len(lines) == len(problems), lines
    assert all(p in line for p, line in zip(problems, lines)), lines
    with pytest.raises(DatasetError, match="classes.yaml"):
        read_classes(root)


def test_a_missing_root_or_split(tmp_path):
    proc = check(tmp_path / "nope")
    assert proc.returncode == 2 and f"{tmp_path / 'nope'}: no such dataset folder" in proc.stderr
    write_dataset(tmp_path / "mine", "rgb")
    (tmp_path / "mine" / "masks" / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'mine'}/masks/val: missing split folder"):
        FolderSegmentation(tmp_path / "mine", "val")


def test_cityscapes_is_checked_the_same_way(tmp_path):
    generate_cityscapes(tmp_path / "cs", num_train=2, num_val=1, num_extra=1, size=(32, 64), seed=0)
    report = json.loads(check(tmp_path / "cs", "--format", "cityscapes", "--json").stdout)
    assert report["num_classes"] == 19 and report["splits"] == {"train": 2, "val": 1, "coarse_train": 3}
    assert sum(c["train"] for c in report["class_pixels"].values()) + report["ignored_pixels"]["train"] == 2 * 32 * 64
