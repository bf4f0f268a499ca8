"""Learning-rate schedules (paper section 5.3.2) and the paper's regime as the schema defaults."""
from pathlib import Path

import pytest

from nas_core.config import SampleParams, SearchParams, TrainParams, load_params
from nas_core.engine.schedules import SCHEDULES, Schedule, build_schedule

ROOT = Path(__file__).resolve().parents[1]


def lr_curve(schedule: Schedule, base_lr: float, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer step of a run, as `nas_core.engine.training` applies it."""
    return [base_lr * schedule.factor(step / steps_per_epoch) for step in range(epochs * steps_per_epoch)]


def test_fine_step_decay_divides_by_ten_at_epochs_50_and_75():
    steps = 3
    curve = lr_curve(build_schedule("step", 100, (50, 75)), 0.05, 100, steps)
    assert len(curve) == 100 * steps
    expected = [0.05] * 50 + [0.005] * 25 + [0.0005] * 25
    assert curve == pytest.approx([lr for lr in expected for _ in range(steps)])
    # exactly two drops, each at the first step of the milestone epoch
    drops = [i for i in range(1, len(curve)) if curve[i] < curve[i - 1] * 0.99]
    assert drops == [50 * steps, 75 * steps]


def test_poly_starts_at_base_and_decreases_to_zero():
    curve = lr_curve(build_schedule("poly", 10, power=0.9), 0.05, 10, 4)
    assert curve[0] == 0.05
    assert all(b < a for a, b in zip(curve, curve[1:]))
    assert 0 < curve[-1] < 0.05 * 0.1
    assert build_schedule("poly", 10).factor(5) == pytest.approx(0.5 ** 0.9)  # DeepLab's power 0.9


def test_warmup_ramps_linearly_then_follows_the_schedule():
    plain = build_schedule("step", 10, (5,))
    warm = build_schedule("step", 10, (5,), warmup_epochs=2, warmup_factor=0.1)
    assert warm.factor(0) == pytest.approx(0.1)
    assert warm.factor(1) == pytest.approx(0.55)
    assert [warm.factor(e) for e in (2, 4.5, 5, 9)] == [plain.factor(e) for e in (2, 4.5, 5, 9)]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_every_schedule_starts_at_the_base_rate(kind):
    assert build_schedule(kind, 10, (5,) if kind == "step" else ()).factor(0.0) == 1.0


@pytest.mark.parametrize("milestones", [(75, 50), (50, 50), (0, 50), (50, 100), (50, 120)])
def test_bad_milestones_are_rejected_naming_the_field(milestones):
    with pytest.raises(ValueError, match="milestones"):
        build_schedule("step", 100, milestones)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="step, poly, constant"):
        build_schedule("cosine", 10)


def test_schema_defaults_are_the_papers_regime():
    t = TrainParams()
    assert (t.lr, t.weight_decay, t.momentum, t.amp) == (0.05, 1e-5, 0.9, True)
    assert t.train_fine.epochs == 100 and t.train_fine.milestones == (50, 75) and t.train_fine.schedule == "step"
    assert t.train_coarse.epochs == 40
    for stage in ("pretrain_coco", "train_coarse", "train_fine"):
        assert t.stage(stage).patch.hw == (768, 768)


def test_paper_preset_file_equals_the_schema_defaults():
    params = load_params(ROOT / "params.paper.yaml")
    assert params.train == TrainParams()
    assert (params.search, params.sample) == (SearchParams(), SampleParams())


def test_a_stage_given_in_part_keeps_its_other_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("train: {train_fine: {enabled: false}}\n")
    fine = load_params(tmp_path / "p.yaml").train.train_fine
    assert not fine.enabled and fine.epochs == 100 and fine.milestones == (50, 75)
