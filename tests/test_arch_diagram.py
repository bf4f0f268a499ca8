"""Pictures of the choice: the (cost, mIoU) scatter with the front, and Figure 8-9 style diagrams."""
import numpy as np
import pytest

from nas_core.select.diagrams import block_columns, plot_architectures, plot_pareto
from nas_core.select.pareto import nearest_cost, pareto_front
from nas_core.space.spaces import SPACES, Architecture
from nas_core.space.zoo import PUBLISHED

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("space", sorted(SPACES))
def test_downsampling_blocks_line_up_across_networks(space):
    archs = [a for a in PUBLISHED.values() if a.space == space]
    columns = block_columns(archs)
    strided = [b.index for b in SPACES[space].blocks if b.stride == 2]
    for cols in columns:
        assert all(b > a for a, b in zip(cols, cols[1:]))  # left to right, one box per block
        assert [cols[i] for i in strided] == [columns[0][i] for i in strided]


def test_the_kth_downsampling_blocks_line_up_across_spaces():
    # Small downsamples at blocks 0, 4, 8 and Large at 1, 5, 9: Large's block 0 stands alone in front
    small, large = PUBLISHED["squeezenas_mac_small"], PUBLISHED["squeezenas_mac_large"]
    cs, cl = block_columns([small, large])
    strided_small = [b.index for b in small.search_space.blocks if b.stride == 2]
    strided_large = [b.index for b in large.search_space.blocks if b.stride == 2]
    assert len(strided_small) == len(strided_large) == 3
    assert [cs[i] for i in strided_small] == [cl[i] for i in strided_large]
    assert cl[0] < cs[0]


@pytest.mark.parametrize("space", sorted(SPACES))
def test_architecture_diagram_is_written(tmp_path, space):
    rows = [(name, a) for name, a in PUBLISHED.items() if a.space == space]
    rows.append(("all skips", Architecture(space, ["skip"] * SPACES[space].num_blocks)))
    path = tmp_path / "arch.png"
    plot_architectures(rows, path)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


@pytest.mark.parametrize("metric", ["macs", "params", "latency_ms"])
def test_pareto_scatter_is_written(tmp_path, metric):
    rng = np.random.default_rng(0)
    cost, score = rng.random(40) * 3e9, rng.random(40)
    front = pareto_front(cost, score)
    path = tmp_path / f"pareto_{metric}.png"
    plot_pareto(cost, score, front, nearest_cost(cost, score, 1.5e9, front), path, metric=metric, target=1.5e9)
    assert path.read_bytes()[:8] == PNG
