"""`dvc` as `squeezenas run` starts it: DVC itself, with dvc.lock read by libyaml rather than by ruamel's
round-trip parser. `python -m cli.dvc_repro ARGS` is `dvc ARGS`.

After every stage DVC rewrites dvc.lock whole: it parses the file with ruamel's round-trip loader (pure
Python; it keeps a person's comments and formatting) and dumps it again. dvc.lock is DVC's own output and
holds neither, and that parse was the largest part of DVC's time between two stages of the six-experiment
run (it grows with the lock: stages x deps; benchmarks/README.md, "The paper's experiment"). Here the lock
is parsed by ruamel's safe loader (libyaml's C parser) into the same values, which DVC updates and dumps with
its own dumper, so the file written is byte for byte the one DVC writes (tests/test_dvc_repro.py compares
them). Only with the DVC version this was checked against (`CHECKED`); any other runs as plain DVC.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

CHECKED = "3.67.1"  # constraints.txt's dvc


def fast_lock_installed() -> bool:
    """Install the lock-file parse on DVC's Lockfile; False (nothing changed) with another DVC version."""
    import dvc
    import dvc.dvcfile as dvcfile
    from dvc.utils.serialize import _yaml
    from dvc.utils.serialize._common import _modify_data

    if dvc.__version__ != CHECKED or getattr(dvcfile.modify_yaml, "__module__", "") != _yaml.__name__:
        return False

    def parse_plain(text: str, path):
        return _yaml.parse_yaml(text, path, typ="safe")  # libyaml when ruamel.yaml.clib is there

    @contextmanager
    def modify_lock(path, fs=None):
        with _modify_data(path, parse_plain, _yaml._dump, fs=fs) as data:
            yield data

    dump_stages = dvcfile.Lockfile.dump_stages

    def dump_stages_fast(self, stages, **kwargs):
        # Lockfile.dump_stages reads the module-level name: swapped for this call only (repro dumps in one thread)
        dvcfile.modify_yaml = modify_lock
        try:
            return dump_stages(self, stages, **kwargs)
        finally:
            dvcfile.modify_yaml = _yaml.modify_yaml

    dvcfile.Lockfile.dump_stages = dump_stages_fast
    return True


def main(argv: list[str] | None = None) -> int:
    from dvc.cli import main as dvc_main

    fast_lock_installed()
    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
