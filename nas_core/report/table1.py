"""The experiment's report (paper Table 1, Figures 5-6, sections 5.1-5.4): one row per network, the
per-space comparison of the latency-aware network with its MAC counterpart, and the two figures.

Pure functions of rows the pipeline measured: no torch, no training; the stage that calls them owns
the measuring. The paper claims that per space the latency network is faster on the target at equal
or better accuracy although it has more MACs; `compare_spaces` checks exactly those three points so
the report can say plainly where our result holds and where it differs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from nas_core.io import atomic_path, atomic_write_json, atomic_write_text

ROW_KEYS = ("network", "kind", "space", "objective", "architecture", "weights", "class_miou", "latency_ms",
            "latency_p10_ms", "latency_p90_ms", "gmacs", "gmacs_per_s", "params_m")
KINDS = ("ours", "published", "baseline")
OBJECTIVES = ("macs", "latency", None)
SPACE_ORDER = ("small", "large", "xlarge")
COMPARED_KINDS = ("ours", "published")
PAPER_FIGURES = "reference/paper_figures.json"
_ROOT = Path(__file__).resolve().parents[2]  # the repository (nas_core/report/table1.py)
_PAPER_NUMBERS = ("class_miou", "latency_ms", "gmacs", "params_m")


# ---------------------------------------------------------------- rows

def _number(network: str, field: str, value: Any) -> float | None:
    """A float or None (NaN counts as missing: pandas writes NaN where a figure was not measured)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{network}: {field} must be a number or null, not {value!r}") from None
    return None if math.isnan(number) else number


def table_row(network, kind, space, objective, architecture, weights, class_miou, latency_ms, latency_p10_ms,
              latency_p90_ms, gmacs, params_m) -> dict:
    """One Table 1 row with exactly ROW_KEYS; gmacs_per_s = GMACs / latency in seconds (the paper's
    Figure 10 throughput), None where either is unknown. Refuses a row the report could misfile."""
    network = str(network)
    if kind not in KINDS:
        raise ValueError(f"{network}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"{network}: objective must be macs, latency or null, not {objective!r}")
    if kind != "baseline" and (space is None or objective is None):
        raise ValueError(f"{network}: a {kind} network needs its space and objective (got {space!r}, {objective!r})")
    row = {"network": network, "kind": kind, "space": None if space is None else str(space), "objective": objective,
           "architecture": architecture, "weights": None if weights is None else str(weights)}
    for field, value in (("class_miou", class_miou), ("latency_ms", latency_ms), ("latency_p10_ms", latency_p10_ms),
                         ("latency_p90_ms", latency_p90_ms), ("gmacs", gmacs), ("params_m", params_m)):
        row[field] = _number(network, field, value)
    _check_ranges(row)
    lat, g = row["latency_ms"], row["gmacs"]
    row["gmacs_per_s"] = g / (lat / 1000.0) if g is not None and lat else None
    return {k: row[k] for k in ROW_KEYS}


def _check_ranges(row: dict) -> None:
    """mIoU is a fraction (a percentage here would make every comparison 100x off); costs are positive."""
    name, miou = row["network"], row["class_miou"]
    if miou is not None and not 0.0 <= miou <= 1.0:
        raise ValueError(f"{name}: class_miou must be a fraction in [0, 1], not {miou} (a percentage?)")
    for field in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "gmacs", "params_m"):
        if row[field] is not None and row[field] <= 0:
            raise ValueError(f"{name}: {field} must be positive, not {row[field]}")
    p10, lat, p90 = row["latency_p10_ms"], row["latency_ms"], row["latency_p90_ms"]
    if None not in (p10, lat, p90) and not p10 <= lat <= p90:
        raise ValueError(f"{name}: latency must satisfy p10 <= latency <= p90, got {p10}, {lat}, {p90}")


# ---------------------------------------------------------------- the paper's figures

def load_paper_figures(path: str | Path = PAPER_FIGURES) -> dict:
    """The figures the paper states for Table 1's rows (reference/paper_figures.json). A relative path
    not found from the working folder is taken from the repository root (stages run from either)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (_ROOT / path).exists():
        path = _ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the paper's figures not found (the project ships {PAPER_FIGURES})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file of the paper's figures ({e})") from None
    _check_paper(path, data)
    return data


def _check_paper(path: Path, data: Any) -> None:
    """Every row's figures are numbers or null, mIoU a fraction, and each stated number has its quote."""
    if not isinstance(data, dict) or not isinstance(data.get("rows"), dict):
        raise ValueError(f"{path}: expected an object with a 'rows' object of networks")
    for field in ("source", "target"):
        if not isinstance(data.get(field), str):
            raise ValueError(f"{path}: '{field}' must be a string")
    for network, row in data["rows"].items():
        where = f"{path}: rows.{network}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for field in _PAPER_NUMBERS:
            value = row.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}.{field}: must be a number or null, not {value!r}")
        miou = row.get("class_miou")
        if miou is not None and not 0.0 <= miou <= 1.0:
            raise ValueError(f"{where}.class_miou: must be a fraction in [0, 1], not {miou}")
        if row.get("latency_bound") not in ("under", None):
            raise ValueError(f"{where}.latency_bound: must be 'under' or null, not {row.get('latency_bound')!r}")
        stated = any(row.get(f) is not None for f in _PAPER_NUMBERS)
        if stated and not (isinstance(row.get("quote"), str) and row["quote"].strip()):
            raise ValueError(f"{where}.quote: every stated figure needs the sentence it comes from")


def paper_row(paper: dict | None, row: dict) -> dict | None:
    """The paper's figures for a row: the network's own, or for one of ours the published network it
    reproduces (ours lat_small <-> squeezenas_lat_small), marked with that name."""
    if not paper:
        return None
    rows = paper.get("rows", {})
    for name in (row["network"], f"squeezenas_{row['network']}" if row["kind"] == "ours" else None):
        if name in rows:
            return {**rows[name], "paper_network": name}
    return None


# ---------------------------------------------------------------- the per-space comparison

def _space_key(space: str) -> tuple:
    return (SPACE_ORDER.index(space) if space in SPACE_ORDER else len(SPACE_ORDER), space)


def _pairs(rows: Iterable[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    """{(space, kind): {objective: row}} for ours and published; two rows in one slot is an error."""
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        if row["kind"] not in COMPARED_KINDS or row["space"] is None or row["objective"] is None:
            continue
        slot = pairs.setdefault((row["space"], row["kind"]), {})
        if row["objective"] in slot:
            raise ValueError(f"two {row['kind']} {row['objective']} networks in space {row['space']}: "
                             f"{slot[row['objective']]['network']} and {row['network']}")
        slot[row["objective"]] = row
    return pairs


def compare_spaces(rows: Iterable[dict]) -> list[dict]:
    """Per space and kind (ours, published) with both a MAC and a latency network: how much faster,
    how much more accurate and how many more MACs the latency network has, and whether the paper's
    claim holds there."""
    pairs = _pairs(rows)
    out = []
    for space, kind in sorted(pairs, key=lambda k: (_space_key(k[0]), COMPARED_KINDS.index(k[1]))):
        slot = pairs[(space, kind)]
        if "macs" in slot and "latency" in slot:
            out.append(_compare(space, kind, slot["macs"], slot["latency"]))
    return out


def _compare(space: str, kind: str, mac: dict, lat: dict) -> dict:
    def both(field):
        return mac[field] is not None and lat[field] is not None

    faster = 100.0 * (mac["latency_ms"] - lat["latency_ms"]) / mac["latency_ms"] if both("latency_ms") else None
    miou_diff = 100.0 * (lat["class_miou"] - mac["class_miou"]) if both("class_miou") else None
    ratio = lat["gmacs"] / mac["gmacs"] if both("gmacs") else None
    noise = None
    if lat["latency_ms"] is not None and mac["latency_p90_ms"] is not None:
        noise = lat["latency_ms"] <= mac["latency_p90_ms"]
    holds = {"faster": None if faster is None else faster > 0,
             "accuracy_equal_or_better": None if miou_diff is None else miou_diff >= -1e-9,
             "more_macs": None if ratio is None else ratio > 1}
    c = {"space": space, "kind": kind, "mac_network": mac["network"], "lat_network": lat["network"],
         "faster_pct": faster, "miou_diff": miou_diff, "mac_ratio": ratio, "latency_within_noise": noise,
         "holds": holds}
    c["verdict"] = verdict(c, mac, lat)
    return c


def _outcome(c: dict) -> str:
    """holds / holds within measurement noise / does not hold / cannot be fully checked."""
    h = c["holds"]
    if False in (h["accuracy_equal_or_better"], h["more_macs"]) or (h["faster"] is False
                                                                     and c["latency_within_noise"] is not True):
        return "does not hold"
    if None in h.values():
        return "cannot be fully checked"
    return "holds" if h["faster"] else "holds within measurement noise"


def verdict(c: dict, mac: dict, lat: dict) -> str:
    """One plain sentence: the outcome, then speed, accuracy and MACs each as measured."""
    outcome = _outcome(c)
    head = f"{c['space']} ({c['kind']}): the paper's claim {outcome}"
    return f"{head}: {_speed(c, mac, lat)}; {_accuracy(c)}; {_macs(c)}."


def _speed(c: dict, mac: dict, lat: dict) -> str:
    if c["faster_pct"] is None:
        return f"latency not measured for both {c['lat_network']} and {c['mac_network']}"
    times = f"{lat['latency_ms']:.2f} vs {mac['latency_ms']:.2f} ms"
    if c["faster_pct"] > 0:
        return f"{c['lat_network']} is {c['faster_pct']:.1f}% faster than {c['mac_network']} ({times})"
    text = f"{c['lat_network']} is {-c['faster_pct']:.1f}% slower than {c['mac_network']} ({times})"
    if c["latency_within_noise"]:
        return f"{text}, within the MAC network's p90 of {mac['latency_p90_ms']:.2f} ms"
    if c["latency_within_noise"] is False:
        return f"{text}, beyond the MAC network's p90 of {mac['latency_p90_ms']:.2f} ms (not faster, unlike the paper)"
    return f"{text} (not faster, unlike the paper; no p90 to judge the noise)"


def _accuracy(c: dict) -> str:
    d = c["miou_diff"]
    if d is None:
        return "accuracy not comparable (class mIoU missing)"
    if d >= -1e-9:
        return f"{d:+.2f} pp class mIoU"
    return f"{d:+.2f} pp class mIoU (less accurate, unlike the paper)"


def _macs(c: dict) -> str:
    r = c["mac_ratio"]
    if r is None:
        return "MACs not known for both"
    if r > 1:
        return f"{r:.2f}x the MACs of the MAC network"
    return f"{r:.2f}x the MACs of the MAC network (not more, unlike the paper)"


# ---------------------------------------------------------------- Table 1 files

def _json_rows(rows: Sequence[dict], paper: dict | None) -> list[dict]:
    """Rows with exactly ROW_KEYS plus 'paper' (and 'class_iou', {class: IoU}, where a row has it); a row missing
    a key or a repeated network is refused."""
    out, seen = [], set()
    for row in rows:
        name = row.get("network", "?")
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{name}: row lacks {', '.join(missing)} (build rows with table_row)")
        if name in seen:
            raise ValueError(f"{name}: network listed twice in Table 1")
        seen.add(name)
        extra = {"class_iou": row["class_iou"]} if "class_iou" in row else {}
        out.append({**{k: row[k] for k in ROW_KEYS}, **extra, "paper": paper_row(paper, row)})
    return out


def write_table1(rows: Sequence[dict], comparisons: Sequence[dict], target: str, out_dir: str | Path,
                 paper: dict | None = None, notes: Sequence[str] = (), classes: Sequence[str] | None = None
                 ) -> dict[str, Path]:
    """Write out_dir/table1.json (target, the dataset's classes, rows, comparison) and out_dir/table1.md (Table 1,
    the per-class IoU, the per-space comparison with its verdicts, the notes, and where we differ from the paper)."""
    out_dir = Path(out_dir)
    table = _json_rows(rows, paper)
    paths = {"json": out_dir / "table1.json", "md": out_dir / "table1.md"}
    head = {"target": target, **({"classes": list(classes)} if classes is not None else {})}
    atomic_write_json(paths["json"], {**head, "rows": table, "comparison": list(comparisons)})
    atomic_write_text(paths["md"], table1_markdown(table, comparisons, target, paper, notes, classes))
    return paths


def _class_iou_lines(table: Sequence[dict], classes: Sequence[str]) -> list[str]:
    scored = [r for r in table if r.get("class_iou")]
    if not scored:
        return []
    lines = ["| class | " + " | ".join(r["network"] for r in scored) + " |", "| --- |" + " ---: |" * len(scored)]
    lines += [f"| {c} | " + " | ".join(_fmt(r["class_iou"].get(c), ".2f", 100.0) for r in scored) + " |"
              for c in classes]
    return ["", f"## Class IoU (%) on the validation set's {len(classes)} classes", "", *lines]


def _fmt(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _latency_cell(row: dict) -> str:
    cell = _fmt(row["latency_ms"])
    if row["latency_p10_ms"] is not None and row["latency_p90_ms"] is not None:
        cell += f" [{row['latency_p10_ms']:.2f}, {row['latency_p90_ms']:.2f}]"
    return cell


def _paper_cells(p: dict | None) -> tuple[str, str]:
    if not p:
        return "-", "-"
    lat = _fmt(p.get("latency_ms"), "g")
    if p.get("latency_ms") is not None and p.get("latency_bound") == "under":
        lat = f"< {lat}"
    return _fmt(p.get("class_miou"), ".2f", 100.0), lat


def _table_lines(table: Sequence[dict]) -> list[str]:
    lines = ["| network | kind | class mIoU % | latency ms [p10, p90] | GMACs | GMACs/s | params M "
             "| paper mIoU % | paper latency ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        pm, pl = _paper_cells(r["paper"])
        lines.append(f"| {r['network']} | {r['kind']} | {_fmt(r['class_miou'], '.2f', 100.0)} | {_latency_cell(r)} "
                     f"| {_fmt(r['gmacs'])} | {_fmt(r['gmacs_per_s'], '.1f')} | {_fmt(r['params_m'])} "
                     f"| {pm} | {pl} |")
    return lines


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _comparison_lines(comparisons: Sequence[dict]) -> list[str]:
    if not comparisons:
        return ["No space has both a MAC and a latency network of the same kind: nothing to compare."]
    lines = ["| space | kind | MAC network | latency network | faster % | mIoU diff pp | MAC ratio "
             "| within noise | faster | accuracy >= | more MACs |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for c in comparisons:
        h = c["holds"]
        lines.append(f"| {c['space']} | {c['kind']} | {c['mac_network']} | {c['lat_network']} "
                     f"| {_fmt(c['faster_pct'], '+.1f')} | {_fmt(c['miou_diff'], '+.2f')} | {_fmt(c['mac_ratio'])} "
                     f"| {_yes(c['latency_within_noise'])} | {_yes(h['faster'])} "
                     f"| {_yes(h['accuracy_equal_or_better'])} | {_yes(h['more_macs'])} |")
    return lines + [""] + [f"- {c['verdict']}" for c in comparisons]


def differences(table: Sequence[dict], comparisons: Sequence[dict], target: str, paper: dict | None) -> list[str]:
    """Each place our result differs from the paper: a claim that fails, a figure off the paper's."""
    out = [_differs(c) for c in comparisons if _outcome(c) != "holds"]
    same_target = bool(paper) and target.strip().lower() == str(paper.get("target", "")).strip().lower()
    for r in table:
        p = r["paper"]
        if not p:
            continue
        if r["class_miou"] is not None and p.get("class_miou") is not None:
            d = 100.0 * (r["class_miou"] - p["class_miou"])
            if abs(d) >= 0.005:
                out.append(f"{r['network']}: class mIoU {100 * r['class_miou']:.2f}% vs the paper's "
                           f"{100 * p['class_miou']:.2f}% ({d:+.2f} pp)")
        if same_target and r["latency_ms"] is not None and p.get("latency_ms") is not None:
            over = r["latency_ms"] >= p["latency_ms"] if p.get("latency_bound") == "under" else \
                abs(r["latency_ms"] - p["latency_ms"]) > 0.05 * p["latency_ms"]
            if over:
                out.append(f"{r['network']}: latency {r['latency_ms']:.2f} ms vs the paper's "
                           f"{_paper_cells(p)[1]} ms")
    if paper and not same_target:
        out.append(f"latency measured on {target}, not the paper's {paper.get('target')}: "
                   "milliseconds are not comparable with the paper's, only the per-space ordering is")
    return out


def _differs(c: dict) -> str:
    """What keeps one comparison from holding as the paper states it, in a few words."""
    h, parts = c["holds"], []
    if h["faster"] is False:
        noise = " (within the MAC network's p90)" if c["latency_within_noise"] else ""
        parts.append(f"{c['lat_network']} {-c['faster_pct']:.1f}% slower than {c['mac_network']}{noise}")
    if h["accuracy_equal_or_better"] is False:
        parts.append(f"{c['miou_diff']:+.2f} pp class mIoU")
    if h["more_macs"] is False:
        parts.append(f"{c['mac_ratio']:.2f}x the MACs, not more")
    missing = [name for key, name in (("faster", "latency"), ("accuracy_equal_or_better", "class mIoU"),
                                      ("more_macs", "GMACs")) if h[key] is None]
    if missing:
        parts.append(f"{' and '.join(missing)} missing")
    return f"{c['space']} ({c['kind']}): {_outcome(c)}, " + ", ".join(parts)


def table1_markdown(table: Sequence[dict], comparisons: Sequence[dict], target: str, paper: dict | None,
                    notes: Sequence[str] = (), classes: Sequence[str] | None = None) -> str:
    """Table 1 as markdown: rows, per-class IoU, per-space comparison and verdicts, notes, and the differences
    line."""
    lines = [f"# Table 1: networks on {target}", ""]
    if classes is not None:
        lines += [f"Classes ({len(classes)}): {', '.join(classes)}.", ""]
    if paper:
        lines += [f"Paper figures: {paper.get('source', '')} (target: {paper.get('target', '')}).", ""]
    lines += _table_lines(table)
    lines += _class_iou_lines(table, classes or [])
    lines += ["", "## Latency network vs MAC network per space (paper sections 5.1-5.4)", ""]
    lines += _comparison_lines(comparisons)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    diffs = differences(table, comparisons, target, paper)
    lines += ["", "## Where our result differs from the paper", ""]
    lines.append("Where our result differs from the paper: " + ("; ".join(diffs) + "." if diffs else
                 "nowhere that we measured: every per-space comparison holds as the paper states."))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Figures 5 and 6

_SPACE_COLOURS = {"small": "tab:blue", "large": "tab:orange", "xlarge": "tab:green"}
_EXTRA_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_MARKERS = {"macs": "o", "latency": "*", None: "s"}
_BASELINE = "0.45"
_XLABELS = {"gmacs": "GMACs per image (batch 1)", "latency_ms": "latency (ms; bars: p10-p90)"}


def _colours(rows: Sequence[dict]) -> dict[str, str]:
    spaces = sorted({r["space"] for r in rows if r["space"] is not None}, key=_space_key)
    extra = iter(_EXTRA_COLOURS * 4)
    return {s: _SPACE_COLOURS.get(s) or next(extra) for s in spaces}


def _style(row: dict, colours: dict[str, str]) -> dict:
    """Colour per space, marker per objective, ours filled, published hollow, baselines grey."""
    colour = _BASELINE if row["kind"] == "baseline" else colours.get(row["space"], _BASELINE)
    hollow = row["kind"] == "published"
    size = 150 if row["objective"] == "latency" else 60
    return {"marker": _MARKERS[row["objective"]], "s": size, "edgecolors": colour, "linewidths": 1.3,
            "facecolors": "none" if hollow else colour, "zorder": 3}


def figure(rows: Sequence[dict], x: str, path: str | Path, title: str) -> Path:
    """Figure 5 (x='gmacs') or Figure 6 (x='latency_ms') against class mIoU; rows without an mIoU on a
    strip under the axes (their cost still shows), rows without the x figure listed under the plot."""
    if x not in _XLABELS:
        raise ValueError(f"figure x must be 'gmacs' or 'latency_ms', not {x!r}")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rows = list(rows)
    drawn = [r for r in rows if r[x] is not None]
    fig, (ax, strip) = plt.subplots(2, 1, sharex=True, figsize=(8.5, 6.5),
                                    gridspec_kw={"height_ratios": [5, 1.2], "hspace": 0.05})
    colours = _colours(rows)
    lanes = _strip_lanes(drawn, x)
    where = {}
    for r in drawn:
        where[r["network"]] = _draw_point(ax, strip, r, x, colours, lanes.get(r["network"], 0.0))
    _draw_arrows(fig, drawn, where, colours)
    _dress(ax, strip, x, title, rows, drawn, colours)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _strip_lanes(drawn: Sequence[dict], x: str) -> dict[str, float]:
    """The strip's rows take two lanes in turn along x, so that neighbours' labels do not overlap."""
    bare = sorted((r for r in drawn if r["class_miou"] is None), key=lambda r: r[x])
    return {r["network"]: (0.4 if i % 2 == 0 else -0.45) for i, r in enumerate(bare)}


def _draw_point(ax, strip, r: dict, x: str, colours: dict, lane: float = 0.0) -> tuple:
    """Draw one row (on the mIoU axes or, at its lane, the strip) with its label; return (axes, (x, y))."""
    target, y = (ax, 100.0 * r["class_miou"]) if r["class_miou"] is not None else (strip, lane)
    style = _style(r, colours)
    xv = r[x]
    if x == "latency_ms" and r["latency_p10_ms"] is not None and r["latency_p90_ms"] is not None:
        target.errorbar([xv], [y], xerr=[[xv - r["latency_p10_ms"]], [r["latency_p90_ms"] - xv]], fmt="none",
                        ecolor=style["edgecolors"], elinewidth=1, capsize=3, zorder=2)
    target.scatter([xv], [y], **style)
    target.annotate(r["network"], (xv, y), xytext=(6, 4), textcoords="offset points",
                    fontsize=7, color="0.2" if r["kind"] != "baseline" else _BASELINE)
    return target, (xv, y)


def _draw_arrows(fig, drawn: Sequence[dict], where: dict, colours: dict) -> None:
    """An arrow from each MAC network to the latency network of the same space and kind (also
    across the strip, as a ConnectionPatch between the two axes)."""
    from matplotlib.patches import ConnectionPatch

    for (space, kind), slot in _pairs(drawn).items():
        if "macs" not in slot or "latency" not in slot:
            continue
        (ax_a, xy_a), (ax_b, xy_b) = where[slot["macs"]["network"]], where[slot["latency"]["network"]]
        fig.add_artist(ConnectionPatch(xy_a, xy_b, "data", "data", axesA=ax_a, axesB=ax_b, arrowstyle="-|>",
                                       mutation_scale=12, color=colours.get(space, _BASELINE), lw=1.1,
                                       linestyle="-" if kind == "ours" else "--", shrinkA=5, shrinkB=8, zorder=1))


def _dress(ax, strip, x: str, title: str, rows, drawn, colours: dict) -> None:
    """Axis labels, the strip's label, the legend and the note of rows that could not be drawn."""
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("class mIoU (%)")
    ax.grid(alpha=0.3)
    strip.set_yticks([])
    strip.set_ylim(-1, 1.1)
    strip.set_ylabel("no mIoU\n(no weights)", rotation=0, ha="right", va="center", fontsize=8)
    strip.set_xlabel(_XLABELS[x])
    strip.grid(alpha=0.3, axis="x")
    if not any(r["class_miou"] is not None for r in drawn):
        ax.text(0.5, 0.5, "no network with a class mIoU", transform=ax.transAxes, ha="center", color="0.5")
    ax.legend(handles=_legend(colours, rows), fontsize=7, loc="best", framealpha=0.85)
    left_out = [r["network"] for r in rows if r[x] is None]
    if left_out:
        strip.text(0.0, -1.1, f"not drawn (no {x}): {', '.join(left_out)}", transform=strip.transAxes,
                   fontsize=7, va="top", color="0.3")


def _legend(colours: dict, rows) -> list:
    from matplotlib.lines import Line2D

    def handle(label, marker="o", colour="0.3", face=None, size=7):
        return Line2D([], [], linestyle="none", marker=marker, markersize=size, markeredgecolor=colour,
                      markerfacecolor=colour if face is None else face, label=label)

    handles = [handle(f"space {s}", colour=c) for s, c in colours.items()]
    handles += [handle("MAC objective"), handle("latency objective", "*", size=11),
                handle("ours (filled)"), handle("published (hollow)", face="none")]
    if any(r["kind"] == "baseline" for r in rows):
        handles.append(handle("baseline (MobileNetV3)", "s", _BASELINE))
    return handles
