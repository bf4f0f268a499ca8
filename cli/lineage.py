"""`squeezenas lineage MODEL[/VERSION|@ALIAS]`: from a registered model back to the dataset and cost-table hashes."""
from __future__ import annotations

import json

from cli.args import add_params_args


def run(args) -> int:
    from cli.run import runs_url
    from nas_core.config import load_params
    from tasks.tracking import lineage

    params = load_params(args.params, tuple(args.overrides))
    chain = lineage(params.tracking, args.model)
    if args.json:
        print(json.dumps(chain, indent=2))
        return 0
    model = chain[0]
    aliases = f" (alias {', '.join(model['aliases'])})" if model["aliases"] else ""
    print(f"model {model['name']} version {model['version']}{aliases} <- run {model['run_id']}")
    for key, value in sorted(model["tags"].items()):
        print(f"    tag {key} = {value}")
    for node in chain[1:]:
        print(f"stage {node['stage']:<18} run {node['run_id']}  commit {node['git_commit'][:12]}")
        for path, md5 in sorted(node["inputs"].items()):
            pulled = (f"  <- from DVC (remote {node['remote']}), not made by a run here"
                      if path in node["external"] else "")
            print(f"    input {path}  md5 {md5}{pulled}")
        for path, md5 in sorted(node["outputs"].items()):
            print(f"    output {path}  md5 {md5}")
        for name, md5 in sorted(node["datasets"].items()):
            print(f"    dataset {name}  md5 {md5}")
        if node["upstream"]:
            print(f"    upstream runs: {', '.join(node['upstream'])}")
    print(f"in the MLflow UI: {runs_url(params.tracking)} (each run's description links its upstream runs)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("lineage", help="print the chain from a registered model back to its data and cost tables")
    p.add_argument("model", metavar="MODEL_NAME[/VERSION|@ALIAS]")
    p.add_argument("--json", action="store_true")
    add_params_args(p)
    p.set_defaults(func=run)
