"""The four retraining stages: encoder transfer, stage skipping with lineage, and the Prefect flows
with their MLflow runs, on tiny generated datasets."""
import json

import pytest
import torch

from nas_core.config import TRAIN_STAGE_DEFAULTS, TrainParams
from nas_core.data import generate_cityscapes, generate_coco, generate_imagenet
from nas_core.space.classifier import Classifier, encoder_state_dict, load_encoder
from nas_core.space.network import SegmentationNetwork
from nas_core.space.zoo import PUBLISHED
from nas_core.train.stages import TRAIN_STAGES, StageSettings, load_payload, stage_settings
from tasks.train import skip_stage_task, train_stage

ARCH = PUBLISHED["squeezenas_lat_small"]
TINY = stage_settings(TrainParams(num_workers=0, amp=False, log_every=100, train_fine={
    "epochs": 1, "lr": 0.02, "milestones": (), "patch": {"height": 64, "width": 64}, "batch_size": 2}), "train_fine")


def test_params_yaml_has_a_section_for_each_stage_of_the_chain_in_its_order():
    # the names are written in the schema (its fields, the CLI's choices without torch) and in STAGE_DATA
    assert tuple(TRAIN_STAGE_DEFAULTS) == TRAIN_STAGES
    assert [name for name in TrainParams.model_fields if name in TRAIN_STAGE_DEFAULTS] == list(TRAIN_STAGES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_cityscapes(root / "cityscapes", num_train=4, num_val=2, num_extra=2, size=(64, 128), seed=0)
    generate_coco(root / "coco", num_train=4, num_val=2, size=(64, 96), seed=0)
    generate_imagenet(root / "imagenet", num_classes=2, train_per_class=2, val_per_class=1, size=32, seed=0)
    ARCH.save(root / "chosen_architecture.json")
    return root


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_classifier_encoder_carries_into_the_segmentation_network_unchanged():
    torch.manual_seed(0)
    classifier = Classifier(ARCH, num_classes=5)
    seg = SegmentationNetwork(ARCH, 19)
    decoder_before = {k: v.clone() for k, v in seg.decoder.state_dict().items()}
    copied = load_encoder(seg, classifier.state_dict(), "imagenet model")
    encoder = encoder_state_dict(classifier)
    assert copied == len(encoder) > 0
    assert all(torch.equal(seg.state_dict()[k], v) for k, v in encoder.items())
    assert all(torch.equal(seg.decoder.state_dict()[k], v) for k, v in decoder_before.items())


def test_an_encoder_of_another_architecture_is_refused_naming_the_source():
    other = Classifier(PUBLISHED["squeezenas_mac_large"], num_classes=5)
    with pytest.raises(ValueError, match="^imagenet model: its encoder does not fit"):
        load_encoder(SegmentationNetwork(ARCH, 19), other.state_dict(), "imagenet model")


def test_a_trained_chain_hands_each_model_to_the_next_stage(tmp_path, data):
    arch = str(data / "chosen_architecture.json")
    imagenet = train_stage("pretrain_imagenet", StageSettings(**{**TINY.__dict__, "patch": (32, 32)}), arch,
                           str(data / "imagenet"), None, str(tmp_path / "pretrain_imagenet"), "cpu")
    coco = train_stage("pretrain_coco", TINY, arch, str(data / "coco"), str(tmp_path / "pretrain_imagenet/model.pt"),
                       str(tmp_path / "pretrain_coco"), "cpu")
    assert (imagenet["init"], coco["init"], coco["starts_from"]) == ("scratch", "encoder", "pretrain_imagenet")
    assert 0 <= imagenet["final"]["top1"] <= 1 and 0 <= coco["final"]["class_miou"] <= 1
    payload = load_payload(tmp_path / "pretrain_coco/model.pt")
    assert payload["task"] == "segmentation" and payload["num_classes"] == 19
    assert [e["stage"] for e in payload["lineage"]] == ["pretrain_imagenet", "pretrain_coco"]
    assert not (tmp_path / "pretrain_coco" / "checkpoints").exists()  # a finished stage leaves no checkpoint


def test_a_stage_trained_twice_on_cpu_gives_the_same_weights_and_scores(tmp_path, data):
    arch, root = str(data / "chosen_architecture.json"), str(data / "cityscapes")
    first = train_stage("train_coarse", TINY, arch, root, None, str(tmp_path / "a"), "cpu", threads=1)
    second = train_stage("train_coarse", TINY, arch, root, None, str(tmp_path / "b"), "cpu", threads=1)
    assert first["final"] == second["final"]
    a, b = load_payload(tmp_path / "a/model.pt"), load_payload(tmp_path / "b/model.pt")
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


def test_a_target_with_other_classes_starts_from_cocos_body_with_a_new_head(tmp_path, data):
    """Section 5.3.2's chain on the user's task: COCO keeps its (Cityscapes-class) head; the target stage takes
    every other weight, re-initialises the head for the dataset's 7 classes, and lineage records it."""
    from nas_core.data import generate_folder
    from nas_core.data.generate import CATEGORY_NAMES
    from nas_core.train.stages import HEAD_PREFIXES, build_model

    arch = str(data / "chosen_architecture.json")
    generate_folder(tmp_path / "mine", "palette", num_train=4, num_val=2, size=(64, 128))
    train_stage("pretrain_coco", TINY, arch, str(data / "coco"), None, str(tmp_path / "pretrain_coco"), "cpu")
    coco = load_payload(tmp_path / "pretrain_coco/model.pt")
    assert coco["num_classes"] == 19 and coco["class_names"][0] == "road"

    model, init = build_model("train_fine", ARCH, coco, len(CATEGORY_NAMES), 0, class_names=CATEGORY_NAMES)
    state = model.state_dict()
    head = [k for k in state if k.startswith(HEAD_PREFIXES)]
    assert init == "new_head" and head and all(state[k].shape[0] == 7 for k in head if k.endswith("weight"))
    assert all(torch.equal(state[k], v) for k, v in coco["state_dict"].items() if not k.startswith(HEAD_PREFIXES))
    torch.manual_seed(0)  # the head as a fresh network of the seed has it
    fresh = SegmentationNetwork(ARCH, 7).state_dict()
    assert all(torch.equal(state[k], fresh[k]) for k in head)

    fine = train_stage("train_fine", TINY, arch, str(tmp_path / "mine"), str(tmp_path / "pretrain_coco/model.pt"),
                       str(tmp_path / "train_fine"), "cpu", data_format="folder")
    assert (fine["init"], fine["starts_from"]) == ("new_head", "pretrain_coco")
    payload = load_payload(tmp_path / "train_fine/model.pt")
    assert payload["num_classes"] == 7 and payload["class_names"] == list(CATEGORY_NAMES)
    entry = json.loads((tmp_path / "train_fine/lineage.json").read_text())[-1]
    assert entry["head"] == {"reinitialised": True, "num_classes": 7, "classes": list(CATEGORY_NAMES),
                             "previous_num_classes": 19, "previous_classes": coco["class_names"]}
    assert "category_miou" not in fine["final"]  # Cityscapes' categories mean nothing for other classes


def test_the_same_classes_carry_the_whole_model_over(tmp_path, data):
    """The default chain (COCO mapped onto Cityscapes' classes -> Cityscapes): the head is kept, as before."""
    from nas_core.data.labels import TRAIN_ID_NAMES
    from nas_core.train.stages import build_model

    coco = {"arch": ARCH.to_dict(), "task": "segmentation", "num_classes": 19, "class_names": list(TRAIN_ID_NAMES),
            "state_dict": SegmentationNetwork(ARCH, 19).state_dict()}
    model, init = build_model("train_coarse", ARCH, coco, 19, 1, class_names=TRAIN_ID_NAMES)
    assert init == "full" and all(torch.equal(model.state_dict()[k], v) for k, v in coco["state_dict"].items())


class Killed(Exception):
    pass


def test_a_run_with_other_settings_keeps_a_killed_runs_checkpoint_and_it_resumes(tmp_path, data):
    arch, root, out = str(data / "chosen_architecture.json"), str(data / "imagenet"), str(tmp_path / "stage")
    settings = StageSettings(**{**TINY.__dict__, "patch": (32, 32), "epochs": 2})

    def killed_in_epoch_2(epoch, metrics):
        if epoch == 1:  # epoch 1's checkpoint is written; the run dies before epoch 2's
            raise Killed

    with pytest.raises(Killed):
        train_stage("pretrain_imagenet", settings, arch, root, None, out, "cpu", on_epoch_end=killed_in_epoch_2)
    (killed,) = (tmp_path / "stage" / "checkpoints").glob("*/last.pt")
    other = train_stage("pretrain_imagenet", StageSettings(**{**settings.__dict__, "lr": 0.05}), arch, root, None,
                        out, "cpu")
    assert other["resumed_from"] is None and killed.is_file()  # finished beside it and removed only its own
    assert list((tmp_path / "stage" / "checkpoints").glob("*/last.pt")) == [killed]
    resumed = train_stage("pretrain_imagenet", settings, arch, root, None, out, "cpu")
    assert resumed["resumed_from"] == (1, 0)
    assert not (tmp_path / "stage" / "checkpoints").exists()  # the last one gone: the folder too
    reference = train_stage("pretrain_imagenet", settings, arch, root, None, str(tmp_path / "ref"), "cpu")
    assert resumed["final"] == reference["final"]
    a, b = load_payload(tmp_path / "stage/model.pt"), load_payload(tmp_path / "ref/model.pt")
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


def test_a_switched_off_middle_stage_passes_the_previous_weights_on(tmp_path, data):
    arch = str(data / "chosen_architecture.json")
    train_stage("train_coarse", TINY, arch, str(data / "cityscapes"), None, str(tmp_path / "train_coarse"), "cpu")
    skipped = skip_stage_task.fn("train_fine", arch, str(tmp_path / "train_coarse/model.pt"), str(tmp_path / "fine"))
    assert skipped == {"stage": "train_fine", "status": "skipped", "passes_on": "train_coarse"}
    before, after = load_payload(tmp_path / "train_coarse/model.pt"), load_payload(tmp_path / "fine/model.pt")
    assert all(torch.equal(before["state_dict"][k], v) for k, v in after["state_dict"].items())
    assert after["lineage"][-1] == {"stage": "train_fine", "status": "skipped", "passes_on": "train_coarse"}


@pytest.mark.slow
def test_flows_skip_switched_off_stages_and_record_the_lineage_in_mlflow(tmp_path, data, monkeypatch,
                                                                          prefect_harness):
    import mlflow

    from flows.train import FLOWS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "chosen_architecture.json").write_text(ARCH.to_json())
    stage = "{epochs: 1, milestones: [], patch: {height: 64, width: 64}, batch_size: 2}"
    (tmp_path / "params.yaml").write_text(
        f"paths: {{dataset: {data / 'cityscapes'}, coco: {data / 'coco'}, imagenet: {data / 'imagenet'}, "
        f"samples: samples, train: train}}\n"
        f"tracking: {{mlflow_uri: 'sqlite:///{tmp_path / 'mlflow.db'}', experiment: t}}\n"
        f"train: {{device: cpu, num_workers: 0, lr: 0.02, pretrain_imagenet: {{enabled: false}}, "
        f"pretrain_coco: {{enabled: false}}, train_coarse: {stage}, train_fine: {stage}}}\n")
    summaries = {name: flow("params.yaml") for name, flow in FLOWS.items()}
    assert summaries["pretrain_imagenet"]["passes_on"] == summaries["pretrain_coco"]["passes_on"] == "scratch"
    assert (summaries["train_coarse"]["starts_from"], summaries["train_coarse"]["init"]) == ("scratch", "scratch")
    assert (summaries["train_fine"]["starts_from"], summaries["train_fine"]["init"]) == ("train_coarse", "full")
    lineage = json.loads((tmp_path / "train/train_fine/lineage.json").read_text())
    assert [(e["stage"], e["status"]) for e in lineage] == [
        ("pretrain_imagenet", "skipped"), ("pretrain_coco", "skipped"), ("train_coarse", "trained"),
        ("train_fine", "trained")]
    assert load_payload(tmp_path / "train/pretrain_coco/model.pt")["state_dict"] is None

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["t"], output_format="list")
    runs = {r.data.tags["squeezenas.stage"]: r for r in found}
    assert set(runs) == set(FLOWS)
    assert runs["pretrain_coco"].data.tags["squeezenas.enabled"] == "false"
    fine = runs["train_fine"]
    assert 0 <= fine.data.metrics["final_class_miou"] <= 1
    history = mlflow.MlflowClient().get_metric_history(fine.info.run_id, "val_class_miou")
    assert [m.step for m in history] == [1]
    assert fine.data.params["stage.epochs"] == "1"


def test_a_missing_chosen_architecture_is_an_error_naming_the_file(tmp_path, monkeypatch):
    from flows.train import run_train_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("paths: {samples: nowhere}\n")
    with pytest.raises(FileNotFoundError, match="nowhere/chosen_architecture.json"):
        run_train_stage("train_fine", "params.yaml")


@pytest.mark.slow
def test_a_stage_in_two_ddp_processes_writes_one_model_and_the_history(tmp_path, data):
    from tasks.train import train_stage_task

    seen = []
    summary = train_stage_task.fn("train_fine", TINY, str(data / "chosen_architecture.json"), str(data / "cityscapes"),
                                  None, str(tmp_path / "fine"), "cpu", 2, lambda e, m: seen.append(e), 1)
    assert summary["world_size"] == 2 and summary["init"] == "scratch"
    assert seen == [0] and 0 <= summary["final"]["class_miou"] <= 1
    assert load_payload(tmp_path / "fine/model.pt")["lineage"][-1]["stage"] == "train_fine"
