"""run_app: the envelope, the pipeline, tags, the invoking-channel rule, ingestion parsing."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fleetcloud.core.errors import NotFound
from fleetcloud.sdk.errors import InvokingChannelWrite
from fleetcloud.sdk.processor import Application, InvocationContext, run_app, run_app_async
from fleetcloud.sdk.testing import AppHarness
from tests.servers.postgres import free_port

# ---------------------------------------------------------------- the pipeline


class Recorder(Application):
    """Records the order of the pipeline's steps, and what had been written at each."""

    log: list[str] = []  # noqa: RUF012 - shared with the test on purpose

    async def setup(self) -> None:
        self.log.append("setup")

    async def on_schedule(self, event: Any) -> None:
        await self.set_tag("a", 1)
        await self.set_tag("b", {"x": 1})
        await self.set_tag("c", "gone")
        await self.set_tag("c", None)
        self.log.append("handler")

    async def close(self) -> None:
        writes = getattr(self.api.transport, "calls", [])
        self.log.append(f"close after {[w.channel for w in writes]}")


def test_pipeline_order_and_one_tag_flush() -> None:
    Recorder.log = []
    harness = AppHarness(Recorder, app_key="rec")
    event = harness.schedule()
    summary = harness.invoke(event)
    assert Recorder.log == ["setup", "handler", "close after ['tag_values']"]
    [flush] = harness.writes("tag_values")
    assert flush.method == "publish"
    assert flush.data == {"rec": {"a": 1, "b": {"x": 1}}}  # one merge-patch; "c" never existed
    assert summary["status"] == "ok"
    assert summary["handler"] == "on_schedule"
    assert summary["event_id"] == event["d"]["event_id"]
    assert summary["tags_flushed"] is True
    assert summary["ui_pushed"] is False
    assert summary["messages_published"] == 1
    assert summary["error"] is None
    assert summary["duration_ms"] >= 0


class TagSemantics(Application):
    async def on_manual_invoke(self, event: Any) -> None:
        step = event.payload
        if step == "mutate":
            mapping = await self.get_tag("mapping", {})
            mapping["b"] = 2
            assert await self.get_tag("mapping", {}) == {"a": 1}  # a copy was returned
            del mapping["a"]
            await self.set_tag("mapping", mapping)
            assert await self.get_tag("mapping") == {"b": 2}  # local writes are visible
        elif step == "clear":
            await self.set_tag("mapping", None)
            assert await self.get_tag("mapping", "fallback") == "fallback"
        elif step == "same":
            await self.set_tag("mapping", await self.get_tag("mapping"))
        elif step == "peek":
            await self.set_tag("peeked", await self.get_tag("level", app_key="other_app"))


def test_tag_semantics() -> None:
    harness = AppHarness(TagSemantics, app_key="tags", tags={"mapping": {"a": 1}})
    harness.invoke(harness.manual_invoke("mutate"))
    assert harness.tags == {"mapping": {"b": 2}}  # the removed key is removed in the channel
    assert harness.writes("tag_values", harness.last_calls)[0].data == {
        "tags": {"mapping": {"a": None, "b": 2}}
    }
    harness.invoke(harness.manual_invoke("same"))
    assert harness.writes("tag_values", harness.last_calls) == []  # unchanged: no write
    harness.invoke(harness.manual_invoke("clear"))
    assert harness.tags == {}
    harness.api.put_message(harness.agent_id, "tag_values", {"other_app": {"level": 4}}, 1)
    harness.invoke(harness.manual_invoke("peek"))
    assert harness.tags == {"peeked": 4}
    assert harness.tag_values["other_app"] == {"level": 4}


class BadTag(Application):
    async def on_schedule(self, event: Any) -> None:
        await self.set_tag("handle", object())


def test_a_tag_json_cannot_carry_fails_at_set_tag() -> None:
    harness = AppHarness(BadTag)
    summary = harness.invoke(harness.schedule(), check=False)
    assert summary["error"].startswith("NotJsonSerializable: tag 'handle' cannot be sent as JSON")


class Echo(Application):
    async def on_message_create(self, event: Any) -> None:
        await self.set_tag("seen", event.message.data)
        target = event.message.data.get("to")
        if target == "same":
            await self.api.publish_message(event.owner_id, event.channel_name, {"echo": 1})
        elif target == "other-agent":
            await self.api.publish_message(self.harness_other, event.channel_name, {"echo": 1})

    async def on_aggregate_update(self, event: Any) -> None:
        await self.api.update_aggregate(self.agent_id, event.channel_name, {"echo": 1})


def test_publishing_to_the_invoking_channel_is_refused() -> None:
    harness = AppHarness(Echo, app_key="echo")
    summary = harness.invoke(harness.message_create("inbox", {"to": "same"}), check=False)
    assert summary["status"] == "error"
    assert summary["error"].startswith(
        "InvokingChannelWrite: this invocation was triggered by channel 'inbox'"
    )
    assert harness.published("inbox") == []
    assert harness.tags == {"seen": {"to": "same"}}  # its own tag_values key is still written
    with pytest.raises(InvokingChannelWrite):
        harness.invoke(harness.aggregate_update("settings", {"mode": 1}))


def test_the_same_channel_name_on_another_agent_is_allowed() -> None:
    harness = AppHarness(Echo, app_key="echo", devices=["peer"])
    Echo.harness_other = harness.device_ids["peer"]  # type: ignore[attr-defined]
    harness.invoke(harness.message_create("inbox", {"to": "other-agent"}))
    assert harness.published("inbox", agent_id=harness.device_ids["peer"]) == [{"echo": 1}]


def test_invoked_by_tag_values_the_app_still_flushes_its_own_key() -> None:
    harness = AppHarness(Echo, app_key="echo")
    summary = harness.invoke(harness.message_create("tag_values", {"sim": {"level": 2}}))
    assert summary["status"] == "ok"
    assert harness.tags == {"seen": {"sim": {"level": 2}}}


def test_the_apps_own_tag_write_echoed_back_is_skipped() -> None:
    harness = AppHarness(Echo, app_key="echo")
    summary = harness.invoke(harness.message_create("tag_values", {"echo": {"x": 1}}))
    assert summary["status"] == "skipped"
    assert summary["reason"] == "the event is this app's own tag_values write"
    assert harness.last_calls == []


def test_an_event_without_a_handler_is_skipped() -> None:
    harness = AppHarness(Echo)
    summary = harness.invoke(harness.schedule())
    assert summary["status"] == "skipped"
    assert summary["reason"] == "the app has no on_schedule handler"


class Reader(Application):
    async def on_manual_invoke(self, event: Any) -> None:
        settings = await self.api.get_aggregate(self.agent_id, "settings")
        await self.set_tag("mode", settings.data["mode"])
        await self.api.get_aggregate(self.agent_id, "never_written")


def test_reading_aggregates_through_the_api() -> None:
    harness = AppHarness(Reader)
    harness.api.patch_aggregate(harness.agent_id, "settings", {"mode": "eco"})
    with pytest.raises(NotFound, match="channel 'never_written'"):
        harness.invoke(harness.manual_invoke())
    assert harness.tags == {"mode": "eco"}


# ---------------------------------------------------------------- ingestion payloads


class Ingest(Application):
    async def on_ingestion_endpoint(self, event: Any) -> None:
        await self.set_tag("payload", event.payload)


class CsvIngest(Ingest):
    def parse_ingestion_event_payload(self, payload: str) -> Any:
        text = base64.b64decode(payload).decode()
        return dict(zip(["id", "level"], text.split(","), strict=True))


def test_ingestion_payload_default_is_base64_json() -> None:
    harness = AppHarness(Ingest, agent_kind="organisation")
    harness.invoke(harness.ingestion({"level": 3, "ok": True}))
    assert harness.tags == {"payload": {"level": 3, "ok": True}}


def test_ingestion_payload_that_is_not_json_fails_clearly() -> None:
    harness = AppHarness(Ingest, agent_kind="organisation")
    summary = harness.invoke(harness.ingestion(b"\x00\x01binary"), check=False)
    assert summary["status"] == "error"
    assert summary["error"].startswith("JSONDecodeError")
    assert harness.api.calls == []


def test_ingestion_payload_parser_can_be_overridden() -> None:
    harness = AppHarness(CsvIngest, agent_kind="organisation")
    harness.invoke(harness.ingestion("pump-3,41"))
    assert harness.tags == {"payload": {"id": "pump-3", "level": "41"}}


# ---------------------------------------------------------------- envelope and transport


def test_a_malformed_envelope_gives_a_clear_error_summary() -> None:
    harness = AppHarness(Ingest)
    event = harness.schedule()
    del event["d"]["upgrade"]
    summary = run_app(Ingest(), event, InvocationContext(transport=harness.api))
    assert summary["status"] == "error"
    assert summary["error"] == "InvalidEnvelope: d.upgrade is missing: the runtime must send it"
    assert run_app(Ingest(), {"op": "on_nothing", "d": {}})["error"].startswith(
        "InvalidEnvelope: op 'on_nothing' is not one of on_message_create"
    )


def test_without_an_api_url_the_error_says_where_to_put_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLEETCLOUD_API_URL", raising=False)
    harness = AppHarness(Recorder)
    summary = run_app(Recorder(), harness.schedule(), None)
    assert summary["error"] == (
        "InvalidEnvelope: no data API URL: set d.upgrade.api_url in the envelope or "
        "FLEETCLOUD_API_URL"
    )


def test_the_env_api_url_is_used_and_unreachable_is_translated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETCLOUD_API_URL", f"http://127.0.0.1:{free_port()}")
    Recorder.log = []
    harness = AppHarness(Recorder)
    summary = run_app(Recorder(), harness.schedule(), {})
    assert summary["status"] == "error"
    assert summary["error"].startswith("DataApiUnavailable: cannot reach the data API at http://")
    assert Recorder.log[-1].startswith("close")  # close() ran anyway


async def test_run_app_works_inside_a_running_event_loop() -> None:
    harness = AppHarness(TagSemantics, app_key="tags")
    context = InvocationContext(transport=harness.api)
    summary = run_app(TagSemantics(), harness.manual_invoke("clear"), context)  # sync API
    assert summary["status"] == "ok"
    summary = await run_app_async(TagSemantics(), harness.manual_invoke("clear"), context)
    assert summary["status"] == "ok"
    assert context.summary == summary
