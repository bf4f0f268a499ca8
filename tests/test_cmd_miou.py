"""`squeezenas miou` equals cityscapesscripts' evalPixelLevelSemanticLabeling on the same prediction files."""
import argparse
import json
import re
import shutil
from pathlib import Path

import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official
import numpy as np
import pytest
from PIL import Image

from cli.miou import add_parser
from nas_core.data import generate_cityscapes
from nas_core.data.labels import TRAIN_ID_NAMES, VALID_LABEL_ID
from nas_core.engine.metrics import evaluate_prediction_folder

VALID_IDS = np.flatnonzero(VALID_LABEL_ID)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    generate_cityscapes(root, num_train=1, num_val=4, num_extra=0, size=(32, 64), seed=0)
    return root


def write_predictions(root: Path, out: Path, keep: float, seed: int) -> None:
    """Corrupt each val ground truth into a prediction, in nested folders with a suffix, as submissions may be."""
    rng = np.random.default_rng(seed)
    for k, gt in enumerate(sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))):
        label_ids = np.array(Image.open(gt))
        noise = rng.choice(VALID_IDS, label_ids.shape).astype(np.uint8)
        prediction = np.where(rng.random(label_ids.shape) < keep, label_ids, noise)
        path = out / f"part{k % 2}" / gt.parent.name / gt.name.replace("_gtFine_labelIds", "_pred")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(prediction).save(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="squeezenas")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_official(root: Path, predictions: Path, tmp_path: Path, monkeypatch) -> dict:
    """The official script end to end: its own prediction lookup, file loading and instance-level pass."""
    # cityscapesscripts 2.3.0 calls np.in1d (removed in NumPy 2.4) for its instance-level scores; np.isin is
    # its documented replacement with the same semantics. The compiled addToConfusionMatrix extension is not
    # in the wheel, so the script takes its pure-Python confusion-matrix path.
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    for field, value in {"predictionPath": str(predictions), "predictionWalk": None, "quiet": True,
                         "JSONOutput": True, "exportFile": str(tmp_path / "official.json"),
                         "evalInstLevelScore": True, "evalPixelAccuracy": False, "colorized": False}.items():
        monkeypatch.setattr(official.args, field, value)
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    predicted = [official.getPrediction(official.args, gt) for gt in ground_truth]
    return official.evaluateImgLists(predicted, ground_truth, official.args)


@pytest.mark.parametrize("keep", [0.3, 0.8, 1.0])
def test_json_output_equals_the_official_evaluation(cityscapes, tmp_path, monkeypatch, capsys, keep):
    predictions = tmp_path / "predictions"
    write_predictions(cityscapes, predictions, keep, seed=int(keep * 10))
    code, out, _ = run_cli(["miou", "--cityscapes-root", str(cityscapes), "--predictions", str(predictions),
                            "--json"], capsys)
    assert code == 0
    ours = json.loads(out)
    theirs = run_official(cityscapes, predictions, tmp_path, monkeypatch)
    assert abs(ours["class_miou"] - theirs["averageScoreClasses"]) < 1e-6
    assert abs(ours["category_miou"] - theirs["averageScoreCategories"]) < 1e-6
    for name in TRAIN_ID_NAMES:
        expected = theirs["classScores"][name]
        got = ours["class_iou"][name]
        assert (got is None) if np.isnan(expected) else abs(got - expected) < 1e-6
    assert 0 <= ours["category_miou"] <= 1 and 0 <= ours["class_miou"] <= 1
    assert ours["images"] == 4 and (keep < 1 or ours["class_miou"] == 1.0)


def test_table_output_lists_classes_and_means(cityscapes, tmp_path, capsys):
    write_predictions(cityscapes, tmp_path, 0.5, seed=0)
    code, out, _ = run_cli(["miou", "--cityscapes-root", str(cityscapes), "--predictions", str(tmp_path)], capsys)
    assert code == 0 and "traffic sign" in out and "vehicle" in out and out.count("mean") == 2


def _first_prediction(predictions: Path) -> Path:
    return sorted(predictions.rglob("*.png"), key=lambda p: p.name)[0]


def test_missing_prediction_is_an_error_naming_the_image(cityscapes, tmp_path, capsys):
    write_predictions(cityscapes, tmp_path, 0.5, seed=0)
    missing = _first_prediction(tmp_path)
    missing.unlink()
    code, _, err = run_cli(["miou", "--cityscapes-root", str(cityscapes), "--predictions", str(tmp_path)], capsys)
    assert code == 2
    assert re.search(r"no prediction for ground truth .*" + missing.name.replace("_pred.png", "_gtFine_labelIds"), err)


def test_duplicate_prediction_is_an_error_naming_the_image(cityscapes, tmp_path, capsys):
    write_predictions(cityscapes, tmp_path, 0.5, seed=0)
    first = _first_prediction(tmp_path)
    shutil.copy(first, tmp_path / first.name.replace("_pred", "_other"))
    code, _, err = run_cli(["miou", "--cityscapes-root", str(cityscapes), "--predictions", str(tmp_path)], capsys)
    assert code == 2
    assert "multiple predictions" in err and first.name.replace("_pred.png", "_gtFine_labelIds") in err


@pytest.mark.parametrize("bad, message", [(np.zeros((32, 65), np.uint8), "but ground truth"),
                                          (np.full((32, 64), 40, np.uint8), "outside the Cityscapes set")],
                         ids=["wrong_size", "unknown_id"])
def test_bad_prediction_file_is_refused_naming_it(cityscapes, tmp_path, bad, message):
    write_predictions(cityscapes, tmp_path, 0.5, seed=0)
    first = _first_prediction(tmp_path)
    Image.fromarray(bad).save(first)
    with pytest.raises(ValueError, match=message) as error:
        evaluate_prediction_folder(cityscapes, tmp_path)
    assert str(first) in str(error.value)
