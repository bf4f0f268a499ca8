"""The 13 candidate blocks of a superblock (paper section 3.2, Appendix B).

A candidate's position in `CANDIDATES` is its column in the architecture logits and in the
cost table; its name is the key everywhere else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^k(?P<k>[35])_d(?P<d>[12])_e(?P<e>[136])_g(?P<g>[12])$")


@dataclass(frozen=True)
class Candidate:
    """One candidate block: an inverted residual (kernel, dilation, expansion, groups) or `skip`."""

    kernel: int = 0
    dilation: int = 0
    expansion: int = 0
    groups: int = 0

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0

    @property
    def name(self) -> str:
        if self.is_skip:
            return "skip"
        return f"k{self.kernel}_d{self.dilation}_e{self.expansion}_g{self.groups}"

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel - 1) // 2

    @staticmethod
    def parse(name: str) -> Candidate:
        """The candidate called `name`; raises ValueError listing the 13 valid names otherwise."""
        if isinstance(name, str):
            if name == "skip":
                return SKIP
            m = _NAME.match(name)
            if m:
                cand = Candidate(int(m["k"]), int(m["d"]), int(m["e"]), int(m["g"]))
                if cand in CANDIDATES:
                    return cand
        raise ValueError(
            f"unknown candidate {name!r}; valid candidates are: {', '.join(CANDIDATE_NAMES)}"
        )

    def __str__(self) -> str:
        return self.name


SKIP = Candidate()

# Appendix B order. Note the search space has no k5 dilated candidates.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate(3, 1, 1, 2),
    Candidate(3, 1, 1, 1),
    Candidate(3, 1, 3, 1),
    Candidate(3, 1, 6, 1),
    Candidate(3, 2, 1, 2),
    Candidate(3, 2, 1, 1),
    Candidate(3, 2, 3, 1),
    Candidate(3, 2, 6, 1),
    Candidate(5, 1, 1, 2),
    Candidate(5, 1, 1, 1),
    Candidate(5, 1, 3, 1),
    Candidate(5, 1, 6, 1),
    SKIP,
)
CANDIDATE_NAMES: tuple[str, ...] = tuple(c.name for c in CANDIDATES)
NUM_CANDIDATES = len(CANDIDATES)
