"""The Ray side of the backend: start a local Ray cluster or join one, deploy the replicas as Ray
Serve applications, wait until they are up, and take it all down again.

Each replica is its own Serve application (``<serve.ray_app_name>-replica-<i>``) of one deployment
with one replica, rather than one deployment with ``num_replicas=N``: the ingress then holds a handle
per replica and chooses the replica itself (router.py), and Serve still restarts each one that dies.
Serve's HTTP proxy stays off: the ingress is our own uvicorn app.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import ray
from ray import serve

from mistralrs.conf.schema import Config, ServeConfig

from mistralrs.engine.scaleout.errors import ScaleOutError
from mistralrs.engine.scaleout.replica import EngineReplica
from mistralrs.engine.scaleout.replica_set import app_statuses

log = logging.getLogger(__name__)
STATUS_POLL_SECONDS = 0.5
DELETE_TIMEOUT_SECONDS = 60.0  # how long closing waits for our applications to be gone from a shared cluster


def connect(cfg: ServeConfig) -> bool:
    """Join ``serve.ray_address``, or the Ray this process already joined, or start a local cluster on
    this machine's cores. True when this process started the cluster (and must stop it)."""
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster of ours reports nothing
        common = dict(logging_level=logging.WARNING, log_to_driver=True)
        if cfg.ray_address:
            try:
                ray.init(address=cfg.ray_address, **common)
            except ConnectionError as exc:
                raise ScaleOutError(f"cannot join the Ray cluster at serve.ray_address={cfg.ray_address!r}: {exc}") from None
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **common)
            started = True
    # also in a Ray joined before: else deploying starts Serve itself, with an HTTP proxy on every node
    try:
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    except BaseException:
        if started:  # not a cluster of ours left behind
            ray.shutdown()
        raise
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per app deployed or deleted
    return started


def app_names(cfg: ServeConfig) -> list[str]:
    return [f"{cfg.ray_app_name}-replica-{i}" for i in range(cfg.replicas)]


def replica_config(config: Config) -> Config:
    """The config a replica loads with: its torch threads default to the CPUs it reserves; without
    GPUs of its own, model.device=auto is the CPU (validate_config refuses cuda then: Ray hides no GPU
    from such a replica, so all would pile onto cuda:0); the API key stays with the ingress (the
    constructor's arguments travel pickled through the cluster)."""
    threads = config.engine.threads or max(1, int(config.serve.replica_cpus))
    device = "cpu" if config.model.device == "auto" and not config.serve.replica_gpus else config.model.device
    return dataclasses.replace(config, engine=dataclasses.replace(config.engine, threads=threads),
                               model=dataclasses.replace(config.model, device=device),
                               serve=dataclasses.replace(config.serve, api_key=None))


def refuse_taken(apps: list[str]) -> None:
    """Deploying over applications of the same names would take another server's replicas."""
    taken = sorted(app_statuses(apps))
    if taken:
        raise ScaleOutError(f"the Ray cluster already runs the Serve applications {', '.join(taken)}, another "
                            f"server's (or a stale one's: serve.delete them); give this server its own "
                            f"serve.ray_app_name")


def check_resources(cfg: ServeConfig) -> None:
    total = ray.cluster_resources()
    for resource, each in (("CPU", cfg.replica_cpus), ("GPU", cfg.replica_gpus)):
        need, have = cfg.replicas * each, total.get(resource, 0.0)
        if need > have:
            key = "replica_cpus" if resource == "CPU" else "replica_gpus"
            raise ScaleOutError(f"serve.replicas={cfg.replicas} x serve.{key}={each:g} need {need:g} {resource}s, and "
                                f"the Ray cluster has {have:g} (lower serve.replicas or serve.{key}, or join a larger "
                                f"cluster with serve.ray_address)")


def deploy(config: Config) -> list:
    """Deploy the replicas and wait until every one has loaded its model; their handles, in order."""
    cfg = config.serve
    check_resources(cfg)
    engine = config.engine
    actor_options: dict = {"num_cpus": cfg.replica_cpus}
    if cfg.replica_gpus:
        actor_options["num_gpus"] = cfg.replica_gpus
    deployment = serve.deployment(EngineReplica).options(
        name="engine", ray_actor_options=actor_options,
        # the engine's own queue refuses what it cannot hold (503); Serve must not queue in front of it
        max_ongoing_requests=engine.max_waiting + engine.max_seqs + 8,
        health_check_period_s=2.0, health_check_timeout_s=30.0, graceful_shutdown_timeout_s=5.0,
        max_constructor_retry_count=3,
        logging_config={"log_level": config.log_level.upper(), "enable_access_log": False})
    replica = replica_config(config)
    targets = [serve.RunTarget(deployment.bind(replica), name=name, route_prefix=None) for name in app_names(cfg)]
    handles = serve.run_many(targets, wait_for_applications_running=False)
    _wait_running(app_names(cfg), cfg.ray_startup_timeout_seconds)
    return handles


def _wait_running(apps: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = serve.status().applications
        for app in apps:
            overview = status.get(app)
            if overview is not None and overview.status == "DEPLOY_FAILED":
                raise ScaleOutError(f"replica {app} failed to start: {overview.message.strip()}")
        if all(app in status and status[app].status == "RUNNING" for app in apps):
            return
        if time.monotonic() > deadline:
            states = ", ".join(f"{app}: {status[app].status.value if app in status else 'not deployed'}" for app in apps)
            raise ScaleOutError(f"the replicas were not all up after {timeout:g} s (serve.ray_startup_timeout_seconds; "
                                f"{states})")
        time.sleep(STATUS_POLL_SECONDS)


def teardown(apps: list[str], started_cluster: bool) -> None:
    """Stop Serve and the local cluster when we started them (that deletes our applications too);
    on a cluster we joined, delete our applications and wait (bounded) until they are gone."""
    if not ray.is_initialized():
        return
    if started_cluster:
        serve.shutdown()
        ray.shutdown()
        return
    for app in apps:  # all at once: each delete alone would wait for its replicas to stop
        try:
            serve.delete(app, _blocking=False)
        except Exception as exc:  # noqa: BLE001 - the others must still go
            log.warning("could not delete the Serve application %s: %s", app, exc)
    deadline = time.monotonic() + DELETE_TIMEOUT_SECONDS
    while (left := app_statuses(apps)) and time.monotonic() < deadline:
        time.sleep(STATUS_POLL_SECONDS)
    if left:
        log.warning("the Serve applications %s were still being deleted after %g s", ", ".join(sorted(left)),
                    DELETE_TIMEOUT_SECONDS)
