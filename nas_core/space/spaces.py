"""The constrained macro-architectures (paper section 3.1) and the `Architecture` value.

The Small, Large and XLarge spaces are data, exactly as `published_networks.md` gives them (it
corrects the channel columns of the paper's Appendix C).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nas_core.space.candidates import CANDIDATE_NAMES, Candidate

# Every space has output stride 16, and the decoders' exact x2 / x4 / x8 upsampling needs input sides divisible by
# 16: the networks refuse other sizes, the evaluation pads to it, params.yaml's sizes must be multiples of it.
INPUT_MULTIPLE = 16
# The networks' classes: Cityscapes' 19 evaluation classes (nas_core/data/labels.py; COCO is mapped onto them, so a
# segmentation head carries over between the training stages).
NUM_CLASSES = 19

@dataclass(frozen=True)
class BlockSpec:
    """The fixed macro parameters of one searchable block."""

    index: int
    c_in: int
    c_out: int
    stride: int

    @property
    def residual(self) -> bool:
        """The residual `x + block(x)` applies (and `skip` is then the identity)."""
        return self.stride == 1 and self.c_in == self.c_out


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    groups: tuple[tuple[int, int, int], ...]  # (channels, repeats, stride of the first block)
    post_encoder_channels: int | None  # 1x1 conv + BN + ReLU after the encoder (Small only)
    decoder: str  # "lraspp" or "dw_aspp"
    decoder_channels: int
    low_level_index: int  # the block whose output feeds the decoder's low-level branch

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        specs, c_in = [], self.stem_channels
        for channels, repeats, stride in self.groups:
            for r in range(repeats):
                specs.append(BlockSpec(len(specs), c_in, channels, stride if r == 0 else 1))
                c_in = channels
        return tuple(specs)

    @property
    def num_blocks(self) -> int:
        return sum(repeats for _, repeats, _ in self.groups)

    @property
    def encoder_channels(self) -> int:
        """Channels of the stride-16 feature that enters the decoder."""
        return self.post_encoder_channels or self.groups[-1][0]

    @property
    def low_level_channels(self) -> int:
        return self.blocks[self.low_level_index].c_out


SPACES: dict[str, SearchSpace] = {
    "small": SearchSpace(
        name="small",
        stem_channels=16,
        groups=((16, 4, 2), (24, 4, 2), (40, 4, 2), (48, 4, 1), (96, 4, 1)),
        post_encoder_channels=256,
        decoder="lraspp",
        decoder_channels=128,
        low_level_index=7,
    ),
    "large": SearchSpace(
        name="large",
        stem_channels=16,
        groups=((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (96, 4, 1), (160, 4, 1), (160, 1, 1)),
        post_encoder_channels=None,
        decoder="lraspp",
        decoder_channels=128,
        low_level_index=8,
    ),
    "xlarge": SearchSpace(
        name="xlarge",
        stem_channels=48,
        groups=((24, 1, 1), (32, 4, 2), (48, 4, 2), (96, 4, 2), (144, 4, 1), (240, 4, 1), (320, 1, 1)),
        post_encoder_channels=None,
        decoder="dw_aspp",
        decoder_channels=160,
        low_level_index=4,
    ),
}


def get_space(name: str | SearchSpace) -> SearchSpace:
    if isinstance(name, SearchSpace):
        return name
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown search space {name!r}; valid spaces are: {', '.join(SPACES)}") from None


@dataclass(frozen=True)
class Architecture:
    """A point of a search space: one candidate name per block."""

    space: str
    choices: tuple[str, ...]

    def __post_init__(self) -> None:
        space = get_space(self.space)
        if isinstance(self.choices, str) or not hasattr(self.choices, "__len__"):
            raise ValueError(f"choices must be a list of candidate names, got {self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) != space.num_blocks:
            raise ValueError(
                f"the {space.name} space has {space.num_blocks} blocks, "
                f"but the architecture lists {len(self.choices)} choices"
            )
        for i, name in enumerate(self.choices):
            if name not in CANDIDATE_NAMES:
                raise ValueError(
                    f"block {i}: unknown candidate {name!r}; valid candidates are: {', '.join(CANDIDATE_NAMES)}"
                )

    @property
    def search_space(self) -> SearchSpace:
        return get_space(self.space)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return tuple(Candidate.parse(n) for n in self.choices)

    def to_dict(self) -> dict:
        return {"space": self.space, "choices": list(self.choices)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        if not isinstance(data, dict):
            raise ValueError(f"an architecture is a JSON object with 'space' and 'choices', got {type(data).__name__}")
        missing = {"space", "choices"} - set(data)
        if missing:
            raise ValueError(f"architecture is missing the field(s): {', '.join(sorted(missing))}")
        extra = set(data) - {"space", "choices"}
        if extra:
            raise ValueError(f"architecture has unknown field(s): {', '.join(sorted(extra))}")
        return cls(data["space"], data["choices"])

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"architecture is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        from nas_core.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
