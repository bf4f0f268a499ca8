"""Create or update the deployments of prefect.yaml on the Prefect server (`python -m flows.deploy
[NAME ...]`, with SQUEEZENAS_REPO set as for `prefect deploy --all`). Prefect 3.8.8's `prefect deploy`
(and `flow.deploy`) creates the first deployment, then fails asking the server for the work pool's
online workers (HTTP 422: its client sends `limit: null`), so `--all` stops after one; this reads the
same file and applies every deployment through the client, offline, with no image build."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

VARIABLE = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _resolve(value, source: str):
    """`{{ $NAME }}` replaced by the environment variable NAME (as `prefect deploy` does); unset: an error."""
    if isinstance(value, dict):
        return {k: _resolve(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, source) for v in value]
    if isinstance(value, str):
        def env(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise ValueError(f"{source}: {m.group(0)} needs the environment variable {m.group(1)} "
                                 "(e.g. SQUEEZENAS_REPO=$PWD)")
            return os.environ[m.group(1)]
        return VARIABLE.sub(env, value)
    return value


def apply_deployments(prefect_yaml: str | Path = "prefect.yaml", names: tuple[str, ...] = ()) -> dict[str, str]:
    """Apply prefect.yaml's deployments (all, or those in `names`); returns {"flow/deployment": id}."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = yaml.safe_load(Path(prefect_yaml).read_text()) or {}
    deployments = spec.get("deployments") or []
    unknown = sorted(set(names) - {d["name"] for d in deployments})
    if unknown:
        raise ValueError(f"{prefect_yaml}: no deployment {', '.join(unknown)}; it has: "
                         f"{', '.join(d['name'] for d in deployments)}")
    applied = {}
    with get_client(sync_client=True) as client:
        for d in deployments:
            if names and d["name"] not in names:
                continue
            source = f"{prefect_yaml} deployment {d['name']!r}"
            pool = d.get("work_pool") or {}
            try:
                client.read_work_pool(pool["name"])
            except (KeyError, ObjectNotFound):
                raise ValueError(f"{source}: no work pool {pool.get('name')!r} on the Prefect server (create it: "
                                 f"prefect work-pool create {pool.get('name') or 'NAME'} --type process)") from None
            stage_flow = load_flow_from_entrypoint(d["entrypoint"])
            flow_id = client.create_flow_from_name(stage_flow.name)
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=d["name"], entrypoint=d["entrypoint"], description=d.get("description"),
                tags=d.get("tags") or [], parameters=d.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(stage_flow).model_dump_for_openapi(),
                work_pool_name=pool["name"], work_queue_name=pool.get("work_queue_name"),
                job_variables=_resolve(pool.get("job_variables") or {}, source),
                pull_steps=_resolve(d.get("pull", spec.get("pull")) or [], source))
            applied[f"{stage_flow.name}/{d['name']}"] = str(deployment_id)
            print(f"[deploy] {stage_flow.name}/{d['name']} ({d['entrypoint']}) on work pool {pool['name']}")
    return applied


if __name__ == "__main__":
    try:
        apply_deployments("prefect.yaml", tuple(sys.argv[1:]))
    except ValueError as e:
        print(f"flows.deploy: error: {e}", file=sys.stderr)
        sys.exit(2)
