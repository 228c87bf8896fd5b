"""Every key belongs to one workspace, and a batch to the workspace that made it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest

from conftest import async_client_for, make_settings, raw_client, running_server, simple_request, wait_ended
from msgbatch.api.app import MsgBatchServer

NOT_FOUND = "Message Batch ID not found."


@pytest.fixture
async def two_workspaces(tmp_path: Path) -> AsyncIterator[MsgBatchServer]:
    settings = make_settings(tmp_path, workspaces={"ws-a": ["key-a", "key-a2"], "ws-b": ["key-b"]})
    async with running_server(settings) as srv:
        yield srv


async def test_other_workspace_sees_nothing(two_workspaces: MsgBatchServer) -> None:
    async with (
        async_client_for(two_workspaces, api_key="key-a") as a,
        async_client_for(two_workspaces, api_key="key-b") as b,
        async_client_for(two_workspaces, api_key="key-a2") as a2,
    ):
        ended = await a.messages.batches.create(requests=[simple_request("a1")])
        await wait_ended(a, ended.id)
        mine_b = await b.messages.batches.create(requests=[simple_request("b1")])
        await wait_ended(b, mine_b.id)

        for batches in (b.messages.batches, b.beta.messages.batches):
            for call in (batches.retrieve, batches.cancel, batches.delete, batches.results):
                with pytest.raises(anthropic.NotFoundError) as exc:
                    await call(ended.id)
                assert exc.value.api_message == NOT_FOUND
        async with raw_client(two_workspaces) as http:
            resp = await http.get(f"/v1/messages/batches/{ended.id}/results", headers={"x-api-key": "key-b"})
            assert resp.status_code == 404 and resp.json()["error"]["message"] == NOT_FOUND

        # Listing: each workspace sees only its own, whatever cursor it is handed.
        assert [x.id async for x in b.messages.batches.list()] == [mine_b.id]
        assert [x.id async for x in a.messages.batches.list()] == [ended.id]
        assert [x.id async for x in b.messages.batches.list(before_id=ended.id)] == [mine_b.id]
        assert [x.id async for x in a.messages.batches.list(after_id=mine_b.id)] == [ended.id]

        # Another key of the same workspace sees it all.
        assert (await a2.messages.batches.retrieve(ended.id)).id == ended.id
        assert [r.custom_id async for r in await a2.messages.batches.results(ended.id)] == ["a1"]

        # Nothing ws-b tried changed the batch; its owner can still delete it.
        still = await a.messages.batches.retrieve(ended.id)
        assert still.processing_status == "ended" and still.request_counts.succeeded == 1
        assert (await a.messages.batches.delete(ended.id)).type == "message_batch_deleted"
        assert (await b.messages.batches.retrieve(mine_b.id)).id == mine_b.id


async def test_other_workspace_cannot_cancel_in_progress(two_workspaces: MsgBatchServer) -> None:
    async with (
        async_client_for(two_workspaces, api_key="key-a") as a,
        async_client_for(two_workspaces, api_key="key-b") as b,
    ):
        slow = await a.messages.batches.create(requests=[simple_request("s", "x [[simulate latency=0.3]]")])
        for call in (b.messages.batches.cancel, b.messages.batches.delete):
            with pytest.raises(anthropic.NotFoundError):
                await call(slow.id)
        ended = await wait_ended(a, slow.id)
        assert ended.cancel_initiated_at is None and ended.request_counts.succeeded == 1


async def test_workspace_header_must_name_the_keys_workspace(two_workspaces: MsgBatchServer) -> None:
    async with async_client_for(two_workspaces, api_key="key-a") as a:
        made = await a.messages.batches.create(requests=[simple_request("a")], workspace_id="ws-a")
        with pytest.raises(anthropic.PermissionDeniedError):
            await a.messages.batches.retrieve(made.id, workspace_id="ws-b")
        assert (await a.messages.batches.retrieve(made.id, workspace_id="ws-a")).id == made.id


async def test_open_mode_accepts_any_non_empty_key(server: MsgBatchServer) -> None:
    async with (
        async_client_for(server, api_key="first-key") as one,
        async_client_for(server, api_key="something-else-entirely") as two,
    ):
        made = await one.messages.batches.create(requests=[simple_request("a")])
        # One shared workspace: another key sees and manages the same batch.
        assert (await two.messages.batches.retrieve(made.id)).id == made.id
        await wait_ended(two, made.id)
        assert [x.id async for x in two.messages.batches.list()] == [made.id]
        assert (await two.messages.batches.delete(made.id)).type == "message_batch_deleted"
    async with raw_client(server) as http:
        for headers in ({"x-api-key": "x"}, {"authorization": "Bearer y"}, {"x-api-key": "anything at all"}):
            assert (await http.get("/v1/messages/batches", headers=headers)).status_code == 200
        for headers in ({}, {"x-api-key": ""}, {"authorization": "Bearer "}, {"authorization": "Token z"}):
            resp = await http.get("/v1/messages/batches", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
