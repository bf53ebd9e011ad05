"""ModelHost logic without Serve: a fake loader and a batcher that calls straight through."""

import asyncio
from typing import Any

import numpy as np
import pytest

from maas.data import DataSchema
from maas.serving.host import ModelHost
from maas.serving.model import LoadedModel
from maas.serving.versions import ServingPlan

SCHEMA = DataSchema(input_shape=(2,), classes=["a", "b"])


class ConstantModel:
    def __init__(self, value: float):
        self.value = value

    def __call__(self, batch: Any, training: bool = False) -> Any:
        return np.full((len(batch), 2), self.value, dtype=np.float32)


def loaded(version: int) -> LoadedModel:
    model = LoadedModel("m", version, SCHEMA, ConstantModel(version), {})
    model.predict = lambda batch: model.model(batch)  # no tf.function in a unit test
    return model


def direct_batcher(settings: Any) -> Any:
    """Stands in for @serve.batch (which needs a Serve replica): one call per request."""
    def wrap(many: Any) -> Any:
        async def one(item: Any) -> Any:
            return (await many([item]))[0]
        one.set_max_batch_size = lambda n: None
        one.set_batch_wait_timeout_s = lambda s: None
        return one
    return wrap


class FakeRegistryHost(ModelHost):
    """Versions come from ``self.registered``; versions in ``self.broken`` fail to load."""

    def __init__(self, registered: list[int], broken: set[int] | None = None,
                 served: list[int] | None = None):
        super().__init__("m", "/nowhere", 16, load=self._fake_load, batcher=direct_batcher)
        self.registered, self.broken, self.loads = registered, broken or set(), []
        self.served = served if served is not None else []  # the registry's served history
        self.audited: list[tuple[str, dict[str, Any]]] = []

    def _audit(self, action: str, **fields: Any) -> None:
        self.audited.append((action, fields))

    def _served_history(self) -> list[int]:
        return list(self.served)

    def _record_served(self, version: int) -> None:
        self.served[:] = [version, *[v for v in self.served if v != version]]

    def _fake_load(self, version: int) -> LoadedModel:
        self.loads.append(version)
        if version in self.broken:
            raise ValueError(f"version {version} failed its integrity check")
        return loaded(version)

    def _plan(self) -> ServingPlan:
        from maas.serving.versions import plan_versions

        return plan_versions("m", self.settings, self.registered)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_swaps_in_new_versions_and_keeps_serving_when_one_fails() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        await host.configure({"versions": {"latest": 1}})
        assert (await host.infer([[0.0, 0.0]]))["version"] == 1
        host.registered.append(2)
        await host.sync()
        answer = await host.infer([[0.0, 0.0]])
        assert answer["version"] == 2 and answer["outputs"][0].tolist() == [2.0, 2.0]
        host.registered.append(3)
        host.broken.add(3)
        await host.sync()
        assert (await host.infer([[0.0, 0.0]]))["version"] == 2  # the old one keeps serving
        status = await host.status()
        assert "integrity check" in status["load_error"] and status["served_versions"] == [2]
        await host.configure({"versions": {"specific": [1, 2]}})
        assert host.loads == [1, 2, 3, 1] and (await host.status())["load_error"] is None
        assert (await host.infer([[0.0, 0.0]], version="1"))["version"] == 1
        actions = [(action, fields.get("versions")) for action, fields in host.audited]
        assert actions == [("version.loaded", [1]), ("version.loaded", [2]), ("version.refused", [3]),
                           ("version.loaded", [1, 2])]

    run(scenario())


def test_polling_does_not_reload_a_plan_that_failed_but_a_config_change_does() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        await host.configure({})
        host.registered.append(2)
        host.broken.add(2)
        await host.sync(retry_failed=False)  # a poll: tried once, fails
        await host.sync(retry_failed=False)  # the next poll: same plan, not fetched again
        assert host.loads == [1, 2] and "integrity check" in host.load_error
        await host.configure({"refresh": 1})  # `maas serve refresh`: tried again
        assert host.loads == [1, 2, 2]
        host.broken.clear()
        host.registered.append(3)  # a new registration changes the plan: tried at the next poll
        await host.sync(retry_failed=False)
        assert host.loads == [1, 2, 2, 3] and host.load_error is None
        assert (await host.infer([[0.0, 0.0]]))["version"] == 3

    run(scenario())


def test_a_replica_starting_while_the_newest_version_fails_serves_the_last_that_loaded() -> None:
    """A version that loaded on first sight and later cannot (file gone, registry outage): a
    replica that starts then serves the newest version that loaded before, and says why."""
    async def scenario() -> None:
        served: list[int] = []
        first = FakeRegistryHost([1], served=served)
        await first.configure({})
        first.registered.append(2)
        await first.sync()  # a registry poll picks up version 2
        assert served == [2, 1]
        restarted = FakeRegistryHost([1, 2], broken={2}, served=served)
        await restarted.configure({})  # no exception: the replica starts
        answer = await restarted.infer([[0.0, 0.0]])
        assert answer["version"] == 1
        status = await restarted.status()
        assert status["served_versions"] == [1] and "serving version 1, the last that loaded" in (
            status["load_error"])
        restarted.broken.clear()
        await restarted.sync()  # the plan loads again: back to the newest
        assert (await restarted.infer([[0.0, 0.0]]))["version"] == 2

    run(scenario())


def test_with_no_version_that_loads_the_model_answers_503_and_recovers_by_itself() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1], broken={1})
        await host.configure({})  # no exception: the replica (and every other model) stays up
        refused = await host.infer([[0.0, 0.0]])
        assert refused["status"] == 503 and refused["kind"] == "unavailable"
        assert "model 'm' is unavailable" in refused["error"] and "integrity check" in refused["error"]
        assert (await host.status())["status"] == 503
        host.broken.clear()
        host._retrier.cancel()
        await host._retry_until_available(first_wait_s=0.01)
        assert host.unavailable is None and (await host.infer([[0.0, 0.0]]))["version"] == 1

    run(scenario())


def test_bad_requests_and_unknown_versions_come_back_as_data() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        assert (await host.infer([[0.0]]))["status"] == 400
        missing = await host.infer([[0.0, 0.0]], version="7")
        assert missing["status"] == 404 and "version 7 is not served" in missing["error"]
        assert (await host.status(label="canary"))["status"] == 404

    run(scenario())


def test_past_max_pending_requests_answers_503_at_once() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        await host.configure({"max_pending_requests": 2})
        release = asyncio.Event()

        async def slow(items: Any) -> Any:
            await release.wait()
            return [np.zeros((len(b), 2)) for _, b in items]

        host._predict_batch = direct_batcher(None)(slow)
        waiting = [asyncio.create_task(host.infer([[0.0, 0.0]])) for _ in range(2)]
        await asyncio.sleep(0)
        refused = await host.infer([[0.0, 0.0]])
        assert refused["status"] == 503 and "max_pending_requests=2" in refused["error"]
        release.set()
        assert all("outputs" in answer for answer in await asyncio.gather(*waiting))
        assert host.pending == 0 and "outputs" in await host.infer([[0.0, 0.0]])

    run(scenario())


def test_settings_that_fail_validation_name_the_model() -> None:
    with pytest.raises(ValueError, match="user_config of m"):
        run(FakeRegistryHost([1]).configure({"max_batch_size": 0}))
