"""The Ray backend's pieces that need no Ray cluster: prefix-affinity routing, the request client's
failover over fake replica handles, the replica set's liveness and counters, refusals crossing the
process boundary, and the serve.* settings (tests/test_server_ray.py runs the backend itself on a
local Ray cluster)."""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest

from mistralrs.engine.core.async_engine import EngineClosed, EngineUnavailable
from mistralrs.engine.core.context_policy import ContextLengthExceeded
from mistralrs.engine.core.llm_engine import EngineStats
from mistralrs.engine.core.sampler import InvalidSamplingParam
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.scheduler import QueueFull
from mistralrs.engine.core.sequence import SeqEvent
from mistralrs.engine.scaleout.replica_metrics import ReplicaCounters
from mistralrs.engine.scaleout.router import PrefixAffinityRouter
from mistralrs.engine.scaleout.wire import Refusal, ReplicaDescription


def test_least_loaded_replica_takes_a_prompt_nobody_has():
    router = PrefixAffinityRouter(3, block_size=4, max_imbalance=2)
    router.in_flight[:] = [2, 0, 1]
    assert router.choose(router.block_hashes(list(range(20))), [0, 1, 2]) == 1


def test_idle_replicas_take_turns():
    router = PrefixAffinityRouter(2, block_size=4, max_imbalance=2)
    picks = {router.choose([], [0, 1]) for _ in range(4)}
    assert picks == {0, 1}


def test_a_prompt_goes_where_its_prefix_went():
    router = PrefixAffinityRouter(2, block_size=4, max_imbalance=2)
    shared = list(range(100, 112))  # three full blocks
    router.record(1, router.block_hashes(shared + [1, 2, 3, 4]))
    router.in_flight[:] = [0, 2]  # busier, but within max_imbalance
    assert router.choose(router.block_hashes(shared + [9, 9, 9, 9]), [0, 1]) == 1
    assert router.matched_blocks(1, router.block_hashes(shared + [9, 9, 9, 9])) == 3
    assert router.matched_blocks(0, router.block_hashes(shared)) == 0


def test_affinity_yields_to_load_beyond_the_imbalance_and_to_a_replaced_replica():
    router = PrefixAffinityRouter(2, block_size=4, max_imbalance=1)
    prompt = list(range(16))
    router.record(0, router.block_hashes(prompt))
    router.in_flight[:] = [3, 0]
    assert router.choose(router.block_hashes(prompt), [0, 1]) == 1
    router.in_flight[:] = [0, 0]
    assert router.choose(router.block_hashes(prompt), [0, 1]) == 0
    router.forget(0)
    assert router.matched_blocks(0, router.block_hashes(prompt)) == 0


def test_prefix_blocks_chain_and_only_reusable_blocks_count():
    router = PrefixAffinityRouter(1, block_size=4, max_imbalance=0)
    assert len(router.block_hashes(list(range(11)))) == 2
    # as the block manager: the block of the prompt's last token is never reused (it must run)
    assert [len(router.block_hashes(list(range(n)))) for n in (8, 9)] == [1, 2]
    # the same second block after a different first block is a different prefix
    a, b = router.block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9]), router.block_hashes([0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert a[1] != b[1]


def test_the_router_forgets_the_oldest_blocks_beyond_its_capacity():
    router = PrefixAffinityRouter(1, block_size=1, max_imbalance=0, capacity=4)
    router.record(0, router.block_hashes([1, 2, 3, 4]))
    router.record(0, router.block_hashes([7, 8, 9, 10]))
    assert router.matched_blocks(0, router.block_hashes([7, 8, 9, 10])) == 3
    assert router.matched_blocks(0, router.block_hashes([1, 2, 3, 4])) == 0  # its first block went out first


def _route(router: PrefixAffinityRouter, prompts: list[list[int]], concurrency: int) -> list[int]:
    """Requests per replica when ``prompts`` come with ``concurrency`` in flight (each starts at once)."""
    counts, in_flight = [0] * len(router.in_flight), deque()
    for prompt in prompts:
        hashes = router.block_hashes(prompt)
        replica = router.choose(hashes, range(len(counts)))
        router.assign(replica)
        router.record(replica, hashes)
        counts[replica] += 1
        in_flight.append(replica)
        if len(in_flight) >= concurrency:
            router.release(in_flight.popleft())
    for replica in in_flight:
        router.release(replica)
    return counts


def test_requests_sharing_only_a_template_opening_spread_over_the_replicas():
    """A chat template's fixed opening (a full 16-token block) is in every prompt: it must not draw
    all requests to the replica that saw it first, nor starve a replaced replica."""
    rnd = random.Random(0)
    header = list(range(1000, 1020))
    prompts = [header + [rnd.randrange(50_000) for _ in range(rnd.randint(10, 300))] for _ in range(300)]
    router = PrefixAffinityRouter(2, block_size=16, max_imbalance=8)
    for concurrency in (2, 4, 16):
        split = _route(router, prompts[:200], concurrency)
        assert min(split) >= 80, f"{concurrency} in flight: {split}"
    router.forget(1)  # replaced: its cache is empty, the other's holds the opening
    assert min(_route(router, prompts[200:], 4)) >= 40


def test_a_long_shared_prefix_keeps_its_replica_and_a_one_block_match_only_breaks_ties():
    router = PrefixAffinityRouter(2, block_size=4, max_imbalance=8)
    system = list(range(100, 140))  # 10 blocks
    router.record(0, router.block_hashes(system + [1, 2]))
    router.in_flight[:] = [5, 0]
    assert router.choose(router.block_hashes(system + [7, 8]), [0, 1]) == 0  # 10 blocks are worth 5 waiting
    router.in_flight[:] = [10, 0]
    assert router.choose(router.block_hashes(system + [7, 8]), [0, 1]) == 1  # beyond max_imbalance
    short = system[:4] + [5, 6, 7, 8, 9]  # 2 blocks, 1 of them held by replica 0
    router.in_flight[:] = [1, 0]
    assert router.choose(router.block_hashes(short), [0, 1]) == 1
    router.in_flight[:] = [0, 0]
    assert router.choose(router.block_hashes(short), [0, 1]) == 0
    router.record(1, router.block_hashes(system + [3]))  # now both hold it: no preference
    router.in_flight[:] = [1, 0]
    assert router.choose(router.block_hashes(system + [7, 8]), [0, 1]) == 1


# -- the request client and the replica set, over fake replica handles --------------------------------
class _Reply:
    """What ``handle.method.remote()`` returns: awaitable (a callable value runs when awaited)."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self._get().__await__()

    async def _get(self):
        value = self.value() if callable(self.value) else self.value
        if isinstance(value, BaseException):
            raise value
        return value

    def cancel(self) -> None:
        pass


class _Stream:
    """A streamed generate call: yields ``items`` (a Refusal, lists of events), raising exceptions."""

    def __init__(self, items):
        self.items = items
        self.cancelled = False

    def __aiter__(self):
        return self._run()

    async def _run(self):
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled = True


class _Raising:
    """Stream items whose iteration calls ``fail`` (which raises)."""

    def __init__(self, fail):
        self.fail = fail

    def __iter__(self):
        self.fail()
        return iter(())


class _Handle:
    """A replica's DeploymentHandle; ``replies``: each generate call's stream items, in turn."""

    def __init__(self, replies=(), describe=None, stats=None):
        self.replies = iter(replies)
        self.generate = SimpleNamespace(remote=lambda prompt_ids, params: _Stream(next(self.replies)))
        self.describe = SimpleNamespace(remote=lambda: _Reply(describe))
        self.stats = SimpleNamespace(remote=lambda: _Reply(stats))

    def options(self, **kwargs):
        return self


def _replicas(*handles):
    from mistralrs.engine.scaleout.replica_set import ReplicaSet, ReplicaSlot

    slots = [ReplicaSlot(i, f"app-{i}", h, pid=100 + i, host="node") for i, h in enumerate(handles)]
    return ReplicaSet(slots, PrefixAffinityRouter(len(slots), block_size=4, max_imbalance=8))


def _client(*handles):
    from mistralrs.engine.scaleout.engine_client import RayEngineClient

    return RayEngineClient(_replicas(*handles), failover_seconds=0.3)


def _generate(client, prompt=tuple(range(20))) -> list[SeqEvent]:
    async def main():
        return [e async for e in client.generate(list(prompt), SamplingParams(max_tokens=1))]

    return asyncio.run(main())


ANSWER = [SeqEvent(1, 0, 7, "hi", finish_reason="length")]  # a replica's one batch of events


def _requests(client) -> list[int]:
    return [s.counters.requests for s in client.replicas.slots]


def test_a_full_queue_sends_the_request_to_a_replica_with_room_and_records_no_blocks_for_it():
    client = _client(_Handle([[Refusal("queue_full", "the waiting queue is full")]]), _Handle([[ANSWER]]))
    client.router.in_flight[:] = [0, 1]  # replica 0 is asked first
    assert _generate(client) == ANSWER
    assert _requests(client) == [1, 1]
    hashes = client.router.block_hashes(list(range(20)))
    assert [client.router.matched_blocks(r, hashes) for r in (0, 1)] == [0, len(hashes)]


def test_a_request_every_replica_refuses_for_a_full_queue_gets_queue_full():
    full = [Refusal("queue_full", "the waiting queue is full")]
    client = _client(_Handle([full]), _Handle([full]))
    with pytest.raises(QueueFull, match="waiting queue is full"):
        _generate(client)
    assert _requests(client) == [1, 1]


@pytest.mark.parametrize("died", [True, False])
def test_a_request_moves_off_a_replica_that_fails_before_it_starts_which_goes_down_only_when_dead(died):
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    failure = ActorDiedError() if died else ActorUnavailableError("unavailable", None)
    client = _client(_Handle([[failure]]), _Handle([[ANSWER]]))
    client.router.in_flight[:] = [0, 1]
    assert _generate(client) == ANSWER
    assert [s.up for s in client.replicas.slots] == [not died, True]


def test_a_request_whose_replicas_all_die_before_it_starts_is_not_retried_forever():
    from ray.exceptions import ActorDiedError

    dies = [[ActorDiedError()]] * 10
    client = _client(_Handle(dies), _Handle(dies))

    def replaced_at_once(slot, why):  # Serve puts a new process in its place: a replica not yet tried
        slot.pid += 1000

    client.replicas.mark_lost = replaced_at_once
    with pytest.raises(EngineUnavailable, match="replicas died"):
        _generate(client)
    assert sum(_requests(client)) == 2  # max(2, replicas) tries


def test_a_request_is_not_moved_once_the_server_is_closing():
    from ray.exceptions import ActorUnavailableError

    client = _client(_Handle(), _Handle())

    def closing_then_unavailable():
        client._closing = True
        raise ActorUnavailableError("unavailable", None)

    client.replicas.slots[0].handle.replies = iter([_Raising(closing_then_unavailable)])
    client.router.in_flight[:] = [0, 1]
    with pytest.raises(EngineClosed):
        _generate(client)
    assert _requests(client) == [1, 0]


def _description(pid: int, vocab: int = 64, context: int = 128) -> ReplicaDescription:
    from mistralrs.conf.schema import SamplingConfig

    return ReplicaDescription(pid=pid, host="node", max_seq_len=context, vocab_size=vocab, adapter_info=None,
                              sampling=SamplingConfig())


def test_replicas_go_down_on_serve_status_and_come_back_when_running_and_answering(monkeypatch):
    from mistralrs.engine.scaleout import replica_set

    replicas = _replicas(_Handle(describe=_description(100)), _Handle(describe=RuntimeError("not yet")),
                         _Handle())
    statuses = {"app-0": "UNHEALTHY", "app-1": "DELETING", "app-2": "DEPLOYING"}
    monkeypatch.setattr(replica_set, "app_statuses", lambda apps: dict(statuses))

    async def main():
        await replicas.check()
        assert [s.up for s in replicas.slots] == [False, False, True]
        statuses.update({"app-0": "RUNNING", "app-1": "RUNNING"})
        await replicas.check()  # replica 0 answers (the same process: it survived), replica 1 does not yet
        assert [s.up for s in replicas.slots] == [True, False, True]
        await replicas.stop()

    asyncio.run(main())


def test_a_stuck_status_call_holds_only_its_own_thread_and_later_checks_skip(monkeypatch):
    from mistralrs.engine.scaleout import replica_set

    release, calls = threading.Event(), []

    def stuck(apps):
        calls.append(threading.current_thread().name)
        release.wait(10)
        return {app: "RUNNING" for app in apps}

    monkeypatch.setattr(replica_set, "app_statuses", stuck)
    monkeypatch.setattr(replica_set, "PROBE_TIMEOUT_SECONDS", 0.05)
    replicas = _replicas(_Handle())

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await replicas.check()
        await replicas.check()  # the first call still waits: no second one
        assert len(calls) == 1 and calls[0].startswith("serve-status")
        release.set()
        await asyncio.sleep(0.05)
        await replicas.check()
        assert len(calls) == 2
        await replicas.stop()

    asyncio.run(main())


def test_counters_go_to_their_replica_when_one_goes_down_while_they_come():
    replicas = _replicas(_Handle(), _Handle(stats=(101, _stats(generated_tokens=7))))

    def answer_then_die():
        replicas.mark_lost(replicas.slots[0], "test")
        return 100, _stats(generated_tokens=3)

    replicas.slots[0].handle.stats.remote = lambda: _Reply(answer_then_die)
    total = asyncio.run(replicas.stats())
    assert [s.counters.current.generated_tokens for s in replicas.slots] == [3, 7]
    assert total.generated_tokens == 10


@pytest.mark.parametrize("exc", [
    QueueFull("the waiting queue is full (256)"),
    EngineClosed("the server is shutting down"),
    ContextLengthExceeded("the prompt leaves no room: lower {max_tokens}"),
    InvalidSamplingParam("top_p", "top_p must be in (0, 1]"),
    ValueError("empty prompt"),
])
def test_refusals_cross_the_process_boundary_with_their_fields(exc):
    again = pickle.loads(pickle.dumps(Refusal.of(exc))).exception()
    assert type(again) is type(exc) and str(again) == str(exc)
    if isinstance(exc, ContextLengthExceeded):
        assert again.naming("max_completion_tokens") == exc.naming("max_completion_tokens")
    if isinstance(exc, InvalidSamplingParam):
        assert again.param == "top_p"


def _stats(**values) -> EngineStats:
    base = dict(running=0, waiting=0, kv_blocks_total=0, kv_blocks_free=0, prefix_hit_tokens=0,
                prefix_queried_tokens=0, prompt_tokens=0, generated_tokens=0, preemptions=0)
    return EngineStats(**{**base, **values})


def test_summed_counters_survive_a_replaced_replica():
    a, b = ReplicaCounters(), ReplicaCounters()
    a.update(10, _stats(generated_tokens=50, running=2, kv_blocks_total=100, kv_blocks_free=90))
    b.update(20, _stats(generated_tokens=30, running=1, kv_blocks_total=100, kv_blocks_free=95))
    total = ReplicaCounters.total([a.view(True), b.view(True)])
    assert (total.generated_tokens, total.running, total.kv_blocks_total) == (80, 3, 200)
    # b dies: its gauges leave the sums, its counters stay
    total = ReplicaCounters.total([a.view(True), b.view(False)])
    assert (total.generated_tokens, total.running, total.kv_blocks_total) == (80, 2, 100)
    # and its new process starts from zero without the sum going backwards
    b.update(21, _stats(generated_tokens=4, running=1, kv_blocks_total=100, kv_blocks_free=99))
    total = ReplicaCounters.total([a.view(True), b.view(True)])
    assert (total.generated_tokens, total.running, b.restarts) == (84, 3, 1)


@pytest.mark.parametrize("override, message", [
    ("serve.backend=kubernetes", "serve.backend='kubernetes' is invalid: it must be local or ray"),
    ("serve.backend=ray model.device=cuda", "model.device='cuda' is invalid: it must be cpu or auto with "
                                            "serve.backend=ray and serve.replica_gpus=0"),
    ("serve.backend=ray model.device=cuda:1", "(set serve.replica_gpus"),
    ("serve.replicas=2", "serve.replicas=2 is invalid: it must be 1 with serve.backend=local"),
    ("serve.replicas=0", "serve.replicas=0 is invalid: it must be >= 1"),
    ("serve.replica_cpus=0", "serve.replica_cpus=0.0 is invalid: it must be > 0"),
    # Ray-only settings with the local backend would be ignored: refused instead
    ("serve.ray_address=auto", "serve.ray_address='auto' applies to serve.backend=ray only"),
    ("serve.replica_gpus=1", "serve.replica_gpus=1.0 applies to serve.backend=ray only"),
    ("bench.ray_replicas=[2]", "bench.ray_replicas applies to bench.mode=served only"),
    ("bench.ray_replica_threads=2", "bench.ray_replica_threads applies to the rows of bench.ray_replicas"),
])
def test_serve_settings_are_checked(override, message):
    from mistralrs.engine.config import compose_config, to_schema, validate_config

    with pytest.raises(ValueError) as info:
        validate_config(to_schema(compose_config(override.split())))
    assert message in str(info.value)


def test_the_bench_ray_rows_take_ray_settings(monkeypatch):
    """task=bench with bench.ray_replicas: Ray-only serve settings are for its Ray servers (accepted), and
    the local server it starts first gets none of them."""
    from mistralrs.engine.bench import served
    from mistralrs.engine.cli.tasks import bench
    from mistralrs.engine.config import compose_config, to_schema, validate_config

    args = ["task=bench", "bench.mode=served", "bench.ray_replicas=[2]", "serve.replica_gpus=0.5",
            "+serve.ray_address=auto", "model.dtype=float32"]
    validate_config(to_schema(compose_config(args[:4])))
    started: list[list[str]] = []

    class Stop(Exception):
        pass

    class FakeServer:
        base_url = "http://127.0.0.1:9/v1"

        def stop(self):
            pass

    def fake_start(overrides, *_args, **_kw):
        started.append(overrides)
        if len(started) == 2:  # the Ray row's server: enough seen
            raise Stop
        return FakeServer()

    monkeypatch.setattr(served, "job_overrides", lambda: args[3:])
    monkeypatch.setattr(served, "start_ours", fake_start)
    monkeypatch.setattr(served, "long_prompt", lambda *a: "a long prompt")
    monkeypatch.setattr(served, "measure", lambda *a, **k: {"decode": {}, "ttft_s": None, "peak_rss_mb": {}})
    with pytest.raises(Stop):
        bench.run_served(compose_config(["task=bench", "bench.mode=served", "engine.threads=1", "bench.ray_replicas=[2]"]))
    assert started[0] == ["model.dtype=float32", "engine.threads=1"]
    assert started[1] == ["serve.replica_gpus=0.5", "+serve.ray_address=auto", "model.dtype=float32", "engine.threads=1",
                          "serve.backend=ray", "serve.replicas=2", "serve.replica_cpus=1"]


def _config(*overrides: str):
    from mistralrs.engine.config import compose_config, to_schema, validate_config

    config = to_schema(compose_config(["serve.backend=ray", *overrides]))
    validate_config(config)
    return config


def test_replicas_load_on_the_cpu_without_gpus_and_never_get_the_api_key():
    from mistralrs.engine.scaleout.cluster import replica_config

    cpu = replica_config(_config("serve.api_key=secret", "serve.replica_cpus=2"))
    assert (cpu.model.device, cpu.serve.api_key, cpu.engine.threads) == ("cpu", None, 2)
    gpu = replica_config(_config("serve.replica_gpus=1", "model.device=cuda"))
    assert gpu.model.device == "cuda"
    assert replica_config(_config("serve.replica_gpus=1")).model.device == "auto"  # that replica's GPU


def test_a_server_refuses_to_deploy_over_another_servers_replicas(monkeypatch):
    from mistralrs.engine.scaleout import cluster
    from mistralrs.engine.scaleout.errors import ScaleOutError

    monkeypatch.setattr(cluster, "app_statuses", lambda apps: {apps[1]: "RUNNING"})
    with pytest.raises(ScaleOutError, match="mistralrs-replica-1.*serve.ray_app_name"):
        cluster.refuse_taken(cluster.app_names(_config("serve.replicas=2").serve))


def test_teardown_deletes_all_applications_at_once_only_on_a_joined_cluster(monkeypatch):
    from mistralrs.engine.scaleout import cluster

    calls, left = [], [["a", "b"], ["b"], []]
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(cluster.serve, "shutdown", lambda: calls.append("serve.shutdown"))
    monkeypatch.setattr(cluster.serve, "delete", lambda app, _blocking: calls.append(f"delete {app} {_blocking}"))
    monkeypatch.setattr(cluster, "app_statuses", lambda apps: dict.fromkeys(left.pop(0), "DELETING"))
    monkeypatch.setattr(cluster, "STATUS_POLL_SECONDS", 0)
    cluster.teardown(["a", "b"], started_cluster=True)
    assert calls == ["serve.shutdown", "ray.shutdown"]
    calls.clear()
    cluster.teardown(["a", "b"], started_cluster=False)
    assert calls == ["delete a False", "delete b False"] and left == []


def test_the_frontend_checks_the_tokenizer_against_the_replicas_and_the_replicas_against_each_other():
    from mistralrs.engine.formats.checkpoint import ModelFileError
    from mistralrs.engine.scaleout.errors import ScaleOutError
    from mistralrs.engine.scaleout.frontend_model import FrontendModel

    config = _config()
    files = (Path("model.gguf"), SimpleNamespace(tokenizer=lambda: SimpleNamespace(vocab_size=64, chat_template=None)))
    assert FrontendModel(config, files, [_description(1), _description(2)]).vocab_size == 64
    with pytest.raises(ModelFileError, match="more than the model's 32 embeddings"):
        FrontendModel(config, files, [_description(1, vocab=32)])
    with pytest.raises(ScaleOutError, match="different models"):
        FrontendModel(config, files, [_description(1), _description(2, context=256)])


def test_closing_a_replica_stream_mid_request_closes_the_engine_stream():
    """The ingress cancels a stream while the replica waits at a yield: the engine's stream is closed
    then (its request aborted, KV freed), not when a collector gets to it, and closing raises nothing."""
    from mistralrs.engine.scaleout.replica import EngineReplica

    closed = asyncio.Event()

    async def endless(_ids, _params):
        try:
            i = 0
            while True:
                await asyncio.sleep(0)
                i += 1
                yield i
        finally:
            closed.set()

    async def main():
        replica = SimpleNamespace(engine=SimpleNamespace(generate=endless))
        stream = EngineReplica.generate(replica, [1, 2, 3], None)
        first = await stream.__anext__()
        await asyncio.sleep(0.01)  # the pump runs ahead meanwhile
        await stream.aclose()
        return first, closed.is_set()

    first, was_closed = asyncio.run(main())
    assert first == [1] and was_closed
