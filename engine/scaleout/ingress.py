"""``serve.backend=ray`` put together: the replicas deployed and the app that fronts them.

Everything Ray-related is imported inside :func:`start_ingress`, so that importing this module (the
serve task does, lazily) costs nothing and a missing Ray is one clear error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mistralrs.conf.schema import Config

from mistralrs.engine.scaleout.errors import RAY_MISSING, ScaleOutError
from mistralrs.engine.scaleout.frontend_model import FrontendModel, open_model_files
from mistralrs.engine.scaleout.router import PrefixAffinityRouter

log = logging.getLogger(__name__)
DESCRIBE_TIMEOUT_SECONDS = 60.0


@dataclass
class RayIngress:
    app: Any  # the Litestar app
    model: FrontendModel
    client: Any  # engine_client.RayEngineClient
    apps: list[str]  # the replicas' Serve applications
    started_cluster: bool  # this process started the local Ray cluster (and stops it)

    def close(self) -> None:
        from mistralrs.engine.scaleout.cluster import teardown

        teardown(self.apps, self.started_cluster)


def start_ingress(config: Config) -> RayIngress:
    """Join or start the Ray cluster, deploy ``serve.replicas`` replicas, wait for them, and build the
    app. The model's files open first: a bad model path fails before any Ray process starts."""
    from mistralrs.engine.server import create_app

    files = open_model_files(config.model)
    try:
        from mistralrs.engine.scaleout import cluster
        from mistralrs.engine.scaleout.engine_client import RayEngineClient
        from mistralrs.engine.scaleout.replica_set import ReplicaSet, ReplicaSlot
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "ray":
            raise ScaleOutError(RAY_MISSING) from None
        raise
    serve_cfg = config.serve
    started = cluster.connect(serve_cfg)
    apps = cluster.app_names(serve_cfg)
    cluster.refuse_taken(apps)  # before the try: applications of these names are not ours to delete
    try:
        handles = cluster.deploy(config)
        descriptions = [h.describe.remote().result(timeout_s=DESCRIBE_TIMEOUT_SECONDS) for h in handles]
        model = FrontendModel(config, files, descriptions)
        slots = [ReplicaSlot(i, app, handle, d.pid, d.host)
                 for i, (app, handle, d) in enumerate(zip(apps, handles, descriptions))]
        router = PrefixAffinityRouter(len(slots), config.engine.block_size, serve_cfg.affinity_max_imbalance)
        replicas = ReplicaSet(slots, router)
        client = RayEngineClient(replicas, serve_cfg.ray_failover_seconds)
        app = create_app(model, serve_cfg, engine=client, replicas=replicas)
    except BaseException:
        cluster.teardown(apps, started)
        raise
    for d in descriptions:
        log.info("replica up: pid %d on %s", d.pid, d.host)
    return RayIngress(app, model, client, apps, started)
