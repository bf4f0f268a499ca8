"""The report layer (Table 1, Figures 5-6): real rows, real files, real plots."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nas_core.report.table1 import ROW_KEYS, compare_spaces, figure, load_paper_figures, table_row, write_table1

ROOT = Path(__file__).resolve().parents[1]


def row(network, kind="ours", space="small", objective="macs", miou=0.60, lat=20.0, p10=None, p90=None,
        gmacs=2.0, params=0.5, weights=None):
    return table_row(network, kind, space, objective, f"arch of {network}", weights, miou, lat,
                     p10 if p10 is not None else (None if lat is None else lat * 0.95),
                     p90 if p90 is not None else (None if lat is None else lat * 1.05), gmacs, params)


def fourteen() -> list[dict]:
    """Our six, the six published (three with mIoU), the two MobileNetV3 baselines."""
    rows = []
    for i, space in enumerate(("small", "large", "xlarge")):
        rows.append(row(f"mac_{space}", space=space, miou=0.50 + i / 20, lat=20.0 * (i + 1), gmacs=5.0 * (i + 1)))
        rows.append(row(f"lat_{space}", space=space, objective="latency", miou=0.52 + i / 20, lat=16.0 * (i + 1),
                        gmacs=9.0 * (i + 1)))
    published_miou = {"mac_small": 0.66, "lat_small": 0.6802, "mac_large": 0.72}
    for i, space in enumerate(("small", "large", "xlarge")):
        for objective, tag in (("macs", "mac"), ("latency", "lat")):
            name = f"{tag}_{space}"
            rows.append(row(f"squeezenas_{name}", kind="published", space=space, objective=objective,
                            miou=published_miou.get(name), lat=18.0 * (i + 1) * (0.9 if tag == "lat" else 1),
                            gmacs=(6.0 if tag == "mac" else 11.0) * (i + 1),
                            weights=f"reference/weights/squeezenas_{name}.pth" if name in published_miou else None))
    rows.append(row("mobilenetv3_small", kind="baseline", space=None, objective=None, miou=0.55, lat=15.0, gmacs=3.0))
    rows.append(row("mobilenetv3_large", kind="baseline", space=None, objective=None, miou=None, lat=30.0, gmacs=9.0))
    return rows


def test_row_has_exactly_the_keys_and_throughput():
    r = row("mac_small", lat=25.0, gmacs=5.0)
    assert tuple(r) == ROW_KEYS
    assert r["gmacs_per_s"] == pytest.approx(200.0)  # 5 GMACs in 0.025 s
    assert row("x", lat=None)["gmacs_per_s"] is None
    assert row("y", miou=float("nan"))["class_miou"] is None  # pandas' missing value


@pytest.mark.parametrize("kwargs, says", [
    ({"kind": "theirs"}, "kind must be one of"),
    ({"objective": "energy"}, "objective must be"),
    ({"miou": 68.02}, "fraction"),
    ({"lat": -1.0}, "latency_ms must be positive"),
])
def test_bad_row_is_refused_naming_the_network(kwargs, says):
    with pytest.raises(ValueError, match=f"^net_17: .*{says}"):
        row("net_17", **kwargs)


def test_comparison_figures_on_constructed_rows():
    rows = [row("mac_small", miou=0.60, lat=20.0, gmacs=2.0), row("lat_small", objective="latency", miou=0.62,
                                                                  lat=15.0, gmacs=3.0)]
    (c,) = compare_spaces(rows)
    assert (c["space"], c["kind"], c["mac_network"], c["lat_network"]) == ("small", "ours", "mac_small", "lat_small")
    assert c["faster_pct"] == pytest.approx(25.0)
    assert c["miou_diff"] == pytest.approx(2.0)
    assert c["mac_ratio"] == pytest.approx(1.5)
    assert c["holds"] == {"faster": True, "accuracy_equal_or_better": True, "more_macs": True}
    assert "claim holds" in c["verdict"] and "25.0% faster" in c["verdict"]


def test_failed_claim_is_said_plainly():
    rows = [row("mac_large", space="large", miou=0.70, lat=40.0, p90=41.0, gmacs=8.0),
            row("lat_large", space="large", objective="latency", miou=0.68, lat=44.0, gmacs=6.0)]
    (c,) = compare_spaces(rows)
    assert c["faster_pct"] == pytest.approx(-10.0)
    assert c["miou_diff"] == pytest.approx(-2.0)
    assert c["holds"] == {"faster": False, "accuracy_equal_or_better": False, "more_macs": False}
    assert c["latency_within_noise"] is False
    v = c["verdict"]
    assert "does not hold" in v and "slower" in v and "less accurate" in v and "not more" in v
    assert v.count(".") >= 1 and "\n" not in v


def test_missing_miou_gives_null_diff_and_an_unchecked_claim():
    rows = [row("squeezenas_mac_xlarge", kind="published", space="xlarge", miou=None, lat=50.0, gmacs=10.0),
            row("squeezenas_lat_xlarge", kind="published", space="xlarge", objective="latency", miou=None,
                lat=40.0, gmacs=20.0),
            row("mobilenetv3_small", kind="baseline", space=None, objective=None)]
    (c,) = compare_spaces(rows)
    assert c["miou_diff"] is None and c["holds"]["accuracy_equal_or_better"] is None
    assert "cannot be fully checked" in c["verdict"]


@pytest.mark.parametrize("lat_lat, within", [(21.0, True), (21.0001, False), (20.5, True)])
def test_latency_within_noise_boundary(lat_lat, within):
    rows = [row("mac_small", lat=20.0, p10=19.0, p90=21.0), row("lat_small", objective="latency", lat=lat_lat,
                                                                p10=lat_lat, p90=lat_lat, gmacs=3.0)]
    (c,) = compare_spaces(rows)
    assert c["latency_within_noise"] is within
    assert c["holds"]["faster"] is False  # slower in the median either way
    assert ("within measurement noise" in c["verdict"]) is within


def test_only_complete_pairs_are_compared_in_space_order():
    rows = fourteen()
    comps = compare_spaces(rows[::-1])
    assert [(c["space"], c["kind"]) for c in comps] == [
        (s, k) for s in ("small", "large", "xlarge") for k in ("ours", "published")]
    assert compare_spaces([row("mac_small")]) == []
    with pytest.raises(ValueError, match="two ours macs networks in space small: a and b"):
        compare_spaces([row("a"), row("b")])


def test_write_table1_round_trips_fourteen_rows(tmp_path):
    rows = fourteen()
    comps = compare_spaces(rows)
    paper = load_paper_figures()
    notes = ["mIoU on generated data: not comparable with the paper's numbers"]
    paths = write_table1(rows, comps, "local CPU (onnxruntime, 1 thread)", tmp_path / "report", paper, notes)
    assert paths == {"json": tmp_path / "report" / "table1.json", "md": tmp_path / "report" / "table1.md"}
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"target", "rows", "comparison"}
    assert data["target"] == "local CPU (onnxruntime, 1 thread)"
    assert len(data["rows"]) == 14
    for written, original in zip(data["rows"], rows):
        assert set(written) == set(ROW_KEYS) | {"paper"}
        assert {k: written[k] for k in ROW_KEYS} == original
    by_name = {r["network"]: r for r in data["rows"]}
    assert by_name["squeezenas_lat_small"]["paper"]["class_miou"] == 0.6802
    assert by_name["lat_small"]["paper"]["paper_network"] == "squeezenas_lat_small"  # ours reproduces it
    assert by_name["mac_small"]["paper"] is None
    assert data["comparison"] == json.loads(json.dumps(comps))
    md = paths["md"].read_text()
    for r in rows:
        assert f"| {r['network']} |" in md
    for c in comps:
        assert c["verdict"] in md
    assert notes[0] in md and "68.02" in md and "< 35" in md
    assert re.search(r"^Where our result differs from the paper: .*not comparable", md, re.M)
    assert not list((tmp_path / "report").glob(".*tmp"))  # atomic writes leave no temp files


def test_write_table1_refuses_a_repeated_network(tmp_path):
    r = row("mac_small")
    with pytest.raises(ValueError, match="mac_small: network listed twice"):
        write_table1([r, r], [], "cpu", tmp_path)
    assert not (tmp_path / "table1.json").exists()


def test_markdown_says_when_the_claim_holds_everywhere(tmp_path):
    rows = [row("mac_small", lat=20.0, gmacs=2.0), row("lat_small", objective="latency", miou=0.61, lat=15.0,
                                                       gmacs=3.0)]
    md = write_table1(rows, compare_spaces(rows), "cpu", tmp_path)["md"].read_text()
    assert "Where our result differs from the paper: nowhere that we measured" in md


@pytest.mark.parametrize("x", ["gmacs", "latency_ms"])
def test_figures_are_written_with_null_miou_rows(tmp_path, x):
    rows = fourteen()
    rows.append(row("squeezenas_no_latency", kind="published", space="large", objective="latency", miou=None,
                    lat=None) if x == "latency_ms" else row("no_gmacs", space="large", gmacs=None))
    out = figure(rows[:-1], x, tmp_path / "figs" / f"figure_{x}.png", f"Figure vs {x}")
    assert out == tmp_path / "figs" / f"figure_{x}.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # a row without the x figure is listed, not drawn; only rows without mIoU still draw
    figure(rows, x, tmp_path / "with_missing.png", "missing")
    only_strip = [r for r in rows if r["class_miou"] is None and r[x] is not None]
    assert figure(only_strip, x, tmp_path / "strip.png", "strip only").stat().st_size > 5_000
    assert not list(tmp_path.rglob(".*tmp"))


def test_figure_refuses_an_unknown_axis(tmp_path):
    with pytest.raises(ValueError, match="'gmacs' or 'latency_ms'"):
        figure(fourteen(), "params_m", tmp_path / "f.png", "t")


def _as_text(value: float) -> str:
    return f"{value:g}"


def test_shipped_paper_figures_load_and_every_number_is_quoted():
    paper = load_paper_figures(ROOT / "reference" / "paper_figures.json")
    assert "Xavier" in paper["target"] and paper["source"]
    assert {"squeezenas_lat_small", "squeezenas_lat_large"} <= set(paper["rows"])
    known = {f"squeezenas_{t}_{s}" for t in ("mac", "lat") for s in ("small", "large", "xlarge")}
    assert set(paper["rows"]) <= known | {"mobilenetv3_small", "mobilenetv3_large"}
    for name, r in paper["rows"].items():
        quote = r["quote"]
        if r["class_miou"] is not None:
            assert f"{100 * r['class_miou']:.2f}%" in quote, name
        for field in ("latency_ms", "gmacs", "params_m"):
            if r[field] is not None:
                assert re.search(rf"(?<![\d.]){re.escape(_as_text(r[field]))}(?![\d])", quote), (name, field)
        if r["latency_bound"] == "under":
            assert "less than" in quote or "under" in quote, name
    assert paper["rows"]["squeezenas_lat_small"]["class_miou"] == 0.6802
    assert paper["rows"]["squeezenas_lat_large"]["latency_ms"] == 100


def test_default_path_loads_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "rows" in load_paper_figures()


@pytest.mark.parametrize("text, says", [
    (None, "not found"),
    ("{not json", "not a readable JSON"),
    ('{"source": "s", "target": "t", "rows": {"n": {"class_miou": 68.0, "quote": "68%"}}}', r"rows\.n\.class_miou"),
    ('{"source": "s", "target": "t", "rows": {"n": {"latency_ms": 35}}}', r"rows\.n\.quote"),
    ('{"source": "s", "target": "t"}', "'rows'"),
])
def test_broken_paper_figures_name_the_file(tmp_path, text, says):
    path = tmp_path / "paper_figures.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=f"^{re.escape(str(path))}: .*{says}"):
        load_paper_figures(path)


def test_differences_line_names_a_failed_claim(tmp_path):
    rows = [row("mac_large", space="large", miou=0.70, lat=40.0, p90=41.0, gmacs=8.0),
            row("lat_large", space="large", objective="latency", miou=0.68, lat=44.0, gmacs=6.0)]
    md = write_table1(rows, compare_spaces(rows), "cpu", tmp_path)["md"].read_text()
    line = next(s for s in md.splitlines() if s.startswith("Where our result differs from the paper:"))
    assert "large (ours): does not hold" in line and "10.0% slower" in line and "-2.00 pp" in line
    assert "0.75x the MACs, not more" in line
