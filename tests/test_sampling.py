"""Sampling K distinct architectures (section 5.3.1) and evaluating their paths through the supernet."""
import numpy as np
import pandas as pd
import pytest
import torch

from nas_core.engine.evaluate import class_map, eval_mode, evaluate_segmentation
from nas_core.io import atomic_torch_save, atomic_write_parquet
from nas_core.search.supernet import SupernetPath, extract_network
from nas_core.select.sampling import (
    evaluate_path,
    load_supernet,
    read_probabilities,
    recalibrate_bn,
    sample_architectures,
)
from nas_core.space.candidates import CANDIDATE_NAMES, NUM_CANDIDATES
from nas_core.space.spaces import get_space
from tests.test_sampling_fixtures import SPACE, random_batches, searched_supernet, write_search_outputs

torch.set_num_threads(1)
BLOCKS = get_space(SPACE).num_blocks


@pytest.fixture(scope="module")
def supernet():
    return searched_supernet()


@pytest.fixture(scope="module")
def probs(supernet):
    return supernet.probabilities().detach().double().numpy()


def random_probs(seed: int, zeros: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((BLOCKS, NUM_CANDIDATES)) * (rng.random((BLOCKS, NUM_CANDIDATES)) > zeros)
    p[:, 0] += 1e-3 * (p.sum(1) == 0)  # every block keeps a live candidate
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sampling_is_seeded_distinct_and_starts_with_the_argmax(probs, seed):
    a = sample_architectures(probs, SPACE, 50, seed)
    b = sample_architectures(probs, SPACE, 50, seed)
    assert a == b
    assert len(a.architectures) == 50 and len(set(a.architectures)) == 50
    assert a.architectures[0].choices == tuple(CANDIDATE_NAMES[j] for j in probs.argmax(1))
    assert a.draws == 49 + a.duplicates and not a.exhausted
    other = sample_architectures(probs, SPACE, 50, seed + 100)
    assert other.architectures[0] == a.architectures[0] and other.architectures[1:] != a.architectures[1:]


def test_a_smaller_sample_is_a_prefix_of_a_larger_one(probs):
    assert sample_architectures(probs, SPACE, 300, 3).architectures[:20] == \
        sample_architectures(probs, SPACE, 20, 3).architectures


@pytest.mark.parametrize("seed", range(4))
def test_pruned_candidates_are_never_drawn(seed):
    p = random_probs(seed, zeros=0.6)
    p[:, -1] = 0  # a zero in the last column: no round-off may select it
    p /= p.sum(1, keepdims=True)
    s = sample_architectures(p, SPACE, 200, seed)
    for arch in s.architectures:
        cols = [CANDIDATE_NAMES.index(c) for c in arch.choices]
        assert (p[np.arange(BLOCKS), cols] > 0).all()
    lp = np.log(p[np.arange(BLOCKS), [CANDIDATE_NAMES.index(c) for c in s.architectures[5].choices]]).sum()
    assert s.log_probs[5] == pytest.approx(lp)


def test_draws_follow_the_distribution():
    # one block with two live candidates (0.8 / 0.2), all others fixed: the support is 2, so the
    # second architecture is the minority one, and it needs a geometric number of draws
    p = np.zeros((BLOCKS, NUM_CANDIDATES))
    p[:, 1] = 1
    p[4] = 0
    p[4, [3, 7]] = [0.8, 0.2]
    s = sample_architectures(p, SPACE, 10, 0)
    assert s.support == 2 and len(s.architectures) == 2 and not s.exhausted
    assert s.architectures[0].choices[4] == "k3_d1_e6_g1" and s.architectures[1].choices[4] == "k3_d2_e6_g1"
    draws = [sample_architectures(p, SPACE, 2, seed).draws for seed in range(300)]
    assert np.mean(draws) == pytest.approx(1 / 0.2, rel=0.2)


def test_a_peaked_distribution_stops_at_max_draws():
    p = np.zeros((BLOCKS, NUM_CANDIDATES))
    p[:, 1] = 1 - 1e-9
    p[:, 2] = 1e-9
    s = sample_architectures(p, SPACE, 5, 0, max_draws=100)
    assert s.exhausted and s.draws == 100 and len(s.architectures) == 1


def test_bad_probabilities_are_rejected(probs):
    with pytest.raises(ValueError, match="rows must sum to 1"):
        sample_architectures(probs * 2, SPACE, 5)
    with pytest.raises(ValueError, match="20 blocks"):
        sample_architectures(probs[:3], SPACE, 5)


def test_theta_table_gives_the_supernets_final_probabilities(tmp_path, supernet, probs):
    _, theta_path = write_search_outputs(tmp_path, supernet)
    np.testing.assert_allclose(read_probabilities(theta_path, BLOCKS), probs, atol=1e-6)
    # logits + live (no probability column) give the same distribution
    df = pd.read_parquet(theta_path).drop(columns="probability")
    atomic_write_parquet(tmp_path / "logits.parquet", df)
    np.testing.assert_allclose(read_probabilities(tmp_path / "logits.parquet"), probs, atol=1e-6)
    atomic_write_parquet(tmp_path / "bad.parquet", df.drop(columns="logit"))
    with pytest.raises(ValueError, match="bad.parquet: needs columns"):
        read_probabilities(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_probabilities(tmp_path / "nope.parquet")


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_supernet_path_gives_the_extracted_networks_logits(supernet, probs, k):
    arch = sample_architectures(probs, SPACE, 4, seed=11).architectures[k]
    x = random_batches(1)[0][0]
    with torch.no_grad():
        path = supernet.forward_architecture(x, arch)
        static = extract_network(supernet, arch).eval()(x)
    torch.testing.assert_close(path, static, rtol=0, atol=1e-5)


def test_estimated_miou_is_the_extracted_networks_miou(supernet, probs):
    batches = random_batches(2)
    for arch in sample_architectures(probs, SPACE, 3, seed=5).architectures:
        est = evaluate_path(supernet, arch, batches, 19)
        real = evaluate_segmentation(extract_network(supernet, arch).eval(), batches, 19)
        assert est["class_miou"] == real["class_miou"] and est["images"] == 4 and est["bn_images"] == 0


def test_one_evaluation_scores_a_path_and_its_copy_alike_at_any_image_size(supernet, probs):
    g = torch.Generator().manual_seed(3)
    odd = [(torch.randn(1, 3, 56, 100, generator=g), torch.randint(0, 19, (1, 56, 100), generator=g))]
    arch = sample_architectures(probs, SPACE, 2, seed=4).architectures[1]
    path = evaluate_segmentation(SupernetPath(supernet, arch), odd)  # padded to 64x112, cropped back
    assert path == evaluate_segmentation(extract_network(supernet, arch).eval(), odd)
    assert path["images"] == 1


def test_the_evaluation_never_switches_a_models_mode(supernet, probs):
    net = extract_network(supernet, sample_architectures(probs, SPACE, 1).architectures[0])
    assert net.training
    with pytest.raises(ValueError, match="eval mode"):
        evaluate_segmentation(net, random_batches(1))
    with eval_mode(net):  # a model being trained is lent in eval mode and handed back in training mode
        evaluate_segmentation(net, random_batches(1))
    assert net.training


def test_class_map_is_argmax_with_the_first_index_on_ties():
    logits = torch.randn(2, 19, 8, 16, generator=torch.Generator().manual_seed(0))
    logits[:, 7] = logits[:, 3]  # exact ties
    logits[0, :, 0, 0] = 1.0  # a pixel where every class ties
    assert torch.equal(class_map(logits), logits.argmax(1))
    assert class_map(logits)[0, 0, 0] == 0


def test_bn_recalibration_never_changes_the_supernet(supernet, probs):
    a, b = sample_architectures(probs, SPACE, 2, seed=2).architectures
    batches, bn = random_batches(1), random_batches(2, seed=9)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    plain_b = evaluate_path(supernet, b, batches, 19)
    recal_a = evaluate_path(supernet, a, batches, 19, bn_batches=bn)
    assert recal_a["bn_images"] == 4
    assert evaluate_path(supernet, b, batches, 19) == plain_b  # a's recalibration did not leak into b
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert recal_a["class_miou"] != evaluate_path(supernet, a, batches, 19)["class_miou"]


def test_recalibrated_statistics_are_the_plain_average_over_the_batches():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = random_batches(3, batch=2, seed=4)
    recalibrate_bn(model, batches)
    bn = model[1]
    with torch.no_grad():
        means = torch.stack([model[0](x).mean((0, 2, 3)) for x, _ in batches])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training


def test_evaluation_needs_eval_mode(supernet, probs):
    arch = sample_architectures(probs, SPACE, 1).architectures[0]
    supernet.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            evaluate_path(supernet, arch, random_batches(1), 19)
    finally:
        supernet.eval()


def test_load_supernet_restores_the_pruned_supernet(tmp_path, supernet):
    supernet_path, _ = write_search_outputs(tmp_path, supernet)
    loaded = load_supernet(supernet_path)
    assert not loaded.training and torch.equal(loaded.live_mask(), supernet.live_mask())
    x = random_batches(1)[0][0]
    arch = supernet.argmax_architecture()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_architecture(x, arch), supernet.forward_architecture(x, arch))
    atomic_torch_save(tmp_path / "bare.pt", {"supernet": supernet.state_dict()})
    with pytest.raises(ValueError, match="bare.pt: the checkpoint does not record space, num_classes"):
        load_supernet(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable supernet checkpoint"):
        load_supernet(tmp_path / "junk.pt")
