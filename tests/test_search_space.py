import json
import math

import pytest

from nas_core.space.candidates import CANDIDATE_NAMES, CANDIDATES, Candidate
from nas_core.space.spaces import SPACES, Architecture, get_space
from nas_core.space.zoo import PUBLISHED


def test_thirteen_candidates_in_appendix_b_order():
    assert CANDIDATE_NAMES == (
        "k3_d1_e1_g2", "k3_d1_e1_g1", "k3_d1_e3_g1", "k3_d1_e6_g1", "k3_d2_e1_g2", "k3_d2_e1_g1",
        "k3_d2_e3_g1", "k3_d2_e6_g1", "k5_d1_e1_g2", "k5_d1_e1_g1", "k5_d1_e3_g1", "k5_d1_e6_g1", "skip")


@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_candidate_name_round_trips(name):
    cand = Candidate.parse(name)
    assert cand.name == name
    assert CANDIDATES[CANDIDATE_NAMES.index(name)] == cand


@pytest.mark.parametrize("bad", ["k5_d2_e1_g1", "k3_d1_e2_g1", "K3_D1_E1_G1", "", "identity", None, 3])
def test_unknown_candidate_lists_the_valid_names(bad):
    with pytest.raises(ValueError) as e:
        Candidate.parse(bad)
    assert "k3_d1_e1_g2" in str(e.value) and "skip" in str(e.value)


def test_padding_is_derived():
    assert Candidate.parse("k3_d2_e1_g1").padding == 2
    assert Candidate.parse("k5_d1_e6_g1").padding == 2


@pytest.mark.parametrize("space,blocks,out_stride_at_low", [("small", 20, 8), ("large", 22, 8), ("xlarge", 22, 4)])
def test_spaces_match_published_sheet(space, blocks, out_stride_at_low):
    s = get_space(space)
    assert s.num_blocks == blocks == len(s.blocks)
    strides = [2 * math.prod(b.stride for b in s.blocks[:i + 1]) for i in range(len(s.blocks))]  # stem: stride 2
    assert strides[-1] == 16
    assert strides[s.low_level_index] == out_stride_at_low
    # the low-level block is the last one at its output stride
    assert strides[s.low_level_index + 1] > strides[s.low_level_index]


def test_space_channels_are_the_corrected_ones():
    assert [(b.c_in, b.c_out, b.stride) for b in SPACES["large"].blocks[:3]] == [(16, 16, 1), (16, 24, 2), (24, 24, 1)]
    assert SPACES["xlarge"].blocks[0].c_in == 48 and SPACES["xlarge"].blocks[-1].c_out == 320
    assert SPACES["small"].encoder_channels == 256 and SPACES["large"].encoder_channels == 160


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_architecture_json_round_trip(name, tmp_path):
    arch = PUBLISHED[name]
    assert Architecture.from_json(arch.to_json()) == arch
    arch.save(tmp_path / "a.json")
    assert Architecture.load(tmp_path / "a.json") == arch


def test_wrong_block_count_says_how_many():
    with pytest.raises(ValueError, match="the small space has 20 blocks, but the architecture lists 3"):
        Architecture("small", ["skip"] * 3)


def test_unknown_candidate_in_architecture_names_block_and_valid_names():
    choices = ["skip"] * 20
    choices[5] = "k7_d1_e1_g1"
    with pytest.raises(ValueError,
                       match=r"block 5: unknown candidate 'k7_d1_e1_g1'; valid candidates are: k3_d1_e1_g2"):
        Architecture("small", choices)


def test_unknown_space_lists_spaces():
    with pytest.raises(ValueError, match="unknown search space 'medium'; valid spaces are: small, large, xlarge"):
        Architecture("medium", ["skip"] * 20)


@pytest.mark.parametrize("text,message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"space": "small"}', "missing the field"),
    ('{"space": "small", "choices": [], "extra": 1}', "unknown field"),
    ('{"space": "small", "choices": "skip"}', "list of candidate names"),
])
def test_bad_architecture_json(text, message):
    with pytest.raises(ValueError, match=message):
        Architecture.from_json(text)


def test_load_error_names_the_file(tmp_path):
    p = tmp_path / "arch.json"
    p.write_text(json.dumps({"space": "small", "choices": ["skip"]}))
    with pytest.raises(ValueError, match=str(p)):
        Architecture.load(p)
