"""A pool of identical devices profiling one latency table (paper section 5.2 times every block on
the target; several units of that target share the work). The units still missing from every
device's store are dealt across the devices; the table is assembled from the union of the stores,
and one table comes from one kind of device only.
"""
from __future__ import annotations

from typing import Iterable

from nas_core.cost.export import Unit, network_unit, table_units
from nas_core.cost.fidelity import spread_architectures, uniform_architectures
from nas_core.cost.latency import MeasurementStore
from nas_core.cost.macs import build_cost_table
from nas_core.cost.targets import ProfileError
from nas_core.space.spaces import Architecture

FIDELITY = "fidelity"  # the shard of whole networks timed for the fidelity check
# what makes two devices "one kind": a table mixing them would be no device's table
HARDWARE = ("cpu", "gpu", "jetson_model", "tensorrt", "onnxruntime", "power_mode")
STAT_SUMS = ("export_s", "timed_s", "warmup_s", "measured")


class PoolError(ProfileError):
    """The devices of a pool differ; the message names two of them and what differs."""


def model_shard(space: str) -> str:
    """The shard of whole networks timed to fit `space`'s latency model."""
    return f"model:{space}"


def fit_networks(space: str, fit: tuple[int, int] | None) -> list[Architecture]:
    """The networks `space`'s latency model is fitted on (`fit` = (count, seed)), none for no model:
    spread over the cost range a search covers (`spread_architectures`)."""
    return spread_architectures(space, fit[0], fit[1]) if fit and fit[0] else []


def held_out_networks(fidelity: tuple[str, int, int], fit: tuple[int, int] | None) -> list[Architecture]:
    """The fidelity check's networks (`fidelity` = (space, count, seed)): uniform draws, none of them
    among the model's fitted ones (and none twice)."""
    space, count, seed = fidelity
    seen = {a.choices for a in fit_networks(space, fit)}
    picked, extra = [], 0
    while len(picked) < count:  # draw more until `count` are new (collisions are rare: 13^n architectures)
        picked = []
        for a in uniform_architectures(space, count + extra, seed):
            if a.choices not in seen and all(a.choices != b.choices for b in picked):
                picked.append(a)
        extra += max(1, count - len(picked))
    return picked[:count]


def planned_units(spaces: Iterable[str], input_size: tuple[int, int], num_classes: int,
                  fidelity: tuple[str, int, int] | None = None,
                  fit: tuple[int, int] | None = None) -> dict[str, list[Unit]]:
    """Every unit to time, by shard name: each space's table units, each space's model networks
    (`fit` = (count, seed)) under `model_shard(space)`, then the held-out fidelity networks
    (`fidelity` = (space, count, seed)) under FIDELITY."""
    def networks(archs):
        return list({u.key: u for u in (network_unit(a, input_size, num_classes) for a in archs)}.values())

    plan = {}
    for space in spaces:
        base = build_cost_table(space, input_size, num_classes)
        plan[space] = table_units(base, space)
    for space in spaces:
        if fit and fit[0]:
            plan[model_shard(space)] = networks(fit_networks(space, fit))
    if fidelity and fidelity[1]:
        plan[FIDELITY] = networks(held_out_networks(fidelity, fit))
    return plan


def deal(plan: dict[str, list[Unit]], done: set[str], devices: int) -> list[dict[str, list[str]]]:
    """Each device's share: the keys missing from `done`, each once (spaces share shapes), dealt
    round-robin in plan order so every device gets a like mix of cheap and costly units."""
    shares: list[dict[str, list[str]]] = [{name: [] for name in plan} for _ in range(devices)]
    seen, turn = set(done), 0
    for name, units in plan.items():
        for unit in units:
            if unit.key not in seen:
                seen.add(unit.key)
                shares[turn % devices][name].append(unit.key)
                turn += 1
    return shares


class PoolStore:
    """The union of the devices' stores, read-only, shaped like a MeasurementStore for
    `latency_table`; a key stored by several devices is taken from the first."""

    def __init__(self, stores: list[MeasurementStore]):
        self.path = " + ".join(str(s.path) for s in stores)  # what errors name
        self.records: dict[str, dict] = {}
        for store in reversed(stores):
            self.records.update(store.records)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)


def check_same_hardware(facts: dict[str, dict]) -> None:
    """Refuse a pool whose devices report different hardware or runtimes (PoolError naming two)."""
    (first, ref), *rest = facts.items()
    for name, other in rest:
        for key in HARDWARE:
            if other.get(key) != ref.get(key):
                raise PoolError(f"latency.hosts: {first} and {name} are not the same kind of device ({key}: "
                                f"{ref.get(key)!r} on {first}, {other.get(key)!r} on {name}); one latency table "
                                f"must come from one kind of device")


def pool_facts(facts: dict[str, dict]) -> dict:
    """device.json: one device's facts as they are; for a pool, the facts all devices share plus
    each device's own under `devices`."""
    if len(facts) == 1:
        return next(iter(facts.values()))
    first, *others = facts.values()
    shared = {k: v for k, v in first.items() if all(o.get(k) == v for o in others)}
    return {**shared, "target": ", ".join(f["target"] for f in facts.values()), "devices": facts}


def pool_stats(per_device: list[dict], units: int) -> dict:
    """One space's profile accounting over the devices that measured a share of it: the pool's
    wall time is the slowest device's, the overhead is over all devices' time together."""
    walls = [s["wall_s"] for s in per_device]
    out = {"wall_s": max(walls, default=0.0), **{k: sum(s[k] for s in per_device) for k in STAT_SUMS},
           "units": units}
    busy, total = out["timed_s"] + out["warmup_s"], sum(walls)
    out["overhead"] = (total - busy) / total if total > 0 and out["measured"] else 0.0
    return out
