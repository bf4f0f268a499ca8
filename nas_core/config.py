"""The one typed schema of `params.yaml`: frozen sections, unknown keys rejected, errors that name
the field and the allowed values. Each stage receives its own section."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nas_core.search_space import SPACES

SpaceName = Literal["small", "large", "xlarge"]


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Size(Section):
    height: int = Field(gt=0, multiple_of=16)
    width: int = Field(gt=0, multiple_of=16)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)


class Paths(Section):
    """Every artifact path, once; dvc.yaml refers to them as ${paths.x}."""

    cityscapes: str = "data/cityscapes"
    coco: str = "data/coco"
    imagenet: str = "data/imagenet"
    cost_tables: str = "outputs/cost_tables"
    latency: str = "outputs/latency"
    search: str = "outputs/search"
    samples: str = "outputs/samples"
    train: str = "outputs/train"
    benchmark: str = "outputs/benchmark"


class Tracking(Section):
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment: str = "squeezenas"
    registered_model: str = "squeezenas"


class DataParams(Section):
    """The generated default datasets. With real datasets, set generate: false and point
    paths.cityscapes / coco / imagenet at them (README: "Real data")."""

    generate: bool = True
    seed: int = 0
    cityscapes_train: int = Field(32, ge=1)
    cityscapes_val: int = Field(12, ge=1)
    cityscapes_extra: int = Field(8, ge=0)
    cityscapes_size: Size = Size(height=256, width=512)
    coco_train: int = Field(24, ge=1)
    coco_val: int = Field(8, ge=1)
    coco_size: Size = Size(height=240, width=320)
    imagenet_classes: int = Field(4, ge=2)
    imagenet_train_per_class: int = Field(32, ge=1)
    imagenet_val_per_class: int = Field(8, ge=1)
    imagenet_size: int = Field(64, ge=16)


class CostTablesParams(Section):
    spaces: tuple[SpaceName, ...] = ("small", "large", "xlarge")
    input_size: Size = Size(height=1024, width=2048)
    num_classes: int = Field(19, ge=1)

    @field_validator("spaces")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError(f"list at least one space of: {', '.join(SPACES)}")
        return v


class Params(Section):
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    data: DataParams = DataParams()
    cost_tables: CostTablesParams = CostTablesParams()


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e.get('input')!r})"
        lines.append(f"{source}: {field}: {msg}{got}")
    return "\n".join(lines)


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{source}: {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections")
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(_format(e, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read params.yaml and apply `key.sub=value` overrides (values parsed as YAML)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw), f"--set {key}")
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return parse_params(data, source)
