"""The code examples of batches-sdk.md and beta-batches-sdk.md, as written.

Adapted only where the documents leave a blank: the client (`Anthropic()` becomes a client with
base_url/api_key set), sleep intervals (tiny), placeholder batch ids (a real batch of the right
state), and undefined inputs (`pdf_data`, `[...]`). Each test then checks the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic import Anthropic, AsyncAnthropic

from conftest import TEST_KEY, ThreadedServer, make_settings, simple_request

TINY = 0.01


@pytest.fixture
def slow_live(tmp_path: Path) -> Iterator[ThreadedServer]:
    """A real server that runs two requests at a time (for examples that cancel)."""
    with ThreadedServer(make_settings(tmp_path, concurrency=2)) as srv:
        yield srv


@pytest.fixture
def slow_client(slow_live: ThreadedServer) -> Iterator[Anthropic]:
    client = Anthropic(api_key=TEST_KEY, base_url=slow_live.base_url, max_retries=0)
    try:
        yield client
    finally:
        client.close()


def wait_ended_sync(client: Anthropic, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, batch
        time.sleep(TINY)
    return batch


def started_slow_batch(client: Anthropic, n: int = 6, latency: float = 0.5) -> str:
    """A batch whose first two requests are running (on `slow_live`) and the rest pending."""
    batch = client.messages.batches.create(
        requests=[simple_request(f"slow-{i}", f"slow {i} [[simulate latency={latency}]]") for i in range(n)]
    )
    time.sleep(0.15)
    return batch.id


# == batches-sdk.md ============================================================================


def test_basic_usage(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client

    # Create a batch with multiple message requests
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": "request-1",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            },
            {
                "custom_id": "request-2",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of Spain?"}],
                },
            },
        ]
    )

    print(f"Batch ID: {batch.id}")
    print(f"Status: {batch.processing_status}")

    # Poll for completion
    while batch.processing_status == "in_progress":
        time.sleep(TINY)  # Check every minute
        batch = client.messages.batches.retrieve(batch.id)
        print(f"Status: {batch.processing_status}, Counts: {batch.request_counts}")

    # Retrieve results once processing ends
    if batch.results_url:
        results = client.messages.batches.results(batch.id)
        for result in results:
            print(f"Request {result.custom_id}:")
            if result.result.type == "succeeded":
                print(f" Response: {result.result.message.content}")
            elif result.result.type == "errored":
                print(f" Error: {result.result.error}")

    out = capsys.readouterr().out
    assert f"Batch ID: {batch.id}" in out and "Status: in_progress" in out
    assert "Status: ended, Counts: " in out and "succeeded=2" in out
    assert "Request request-1:" in out and "Request request-2:" in out
    assert 'Regarding "What is the capital of France?"' in out
    assert 'Regarding "What is the capital of Spain?"' in out
    assert out.count(" Response: [TextBlock(") == 2


async def test_basic_usage_async(aclient: AsyncAnthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = aclient
    batch = await client.messages.batches.create(
        requests=[
            {
                "custom_id": "request-1",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            },
            {
                "custom_id": "request-2",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of Spain?"}],
                },
            },
        ]
    )
    print(f"Batch ID: {batch.id}")
    while batch.processing_status == "in_progress":
        await asyncio.sleep(TINY)
        batch = await client.messages.batches.retrieve(batch.id)
        print(f"Status: {batch.processing_status}, Counts: {batch.request_counts}")
    if batch.results_url:
        results = await client.messages.batches.results(batch.id)
        async for result in results:
            print(f"Request {result.custom_id}:")
            if result.result.type == "succeeded":
                print(f" Response: {result.result.message.content}")
            elif result.result.type == "errored":
                print(f" Error: {result.result.error}")
    out = capsys.readouterr().out
    assert "Request request-1:" in out and "Request request-2:" in out
    assert out.count(" Response: [TextBlock(") == 2


def test_create_example(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client

    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": "analysis-1",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 2048,
                    "messages": [{"role": "user", "content": "Analyze the sentiment of: 'I love this product!'"}],
                },
            },
            {
                "custom_id": "analysis-2",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 2048,
                    "messages": [{"role": "user", "content": "Analyze the sentiment of: 'This is disappointing.'"}],
                },
            },
        ]
    )

    print(f"Created batch: {batch.id}")
    print(f"Status: {batch.processing_status}")
    print(f"Expires at: {batch.expires_at}")

    out = capsys.readouterr().out
    assert f"Created batch: {batch.id}" in out and "Status: in_progress" in out
    assert f"Expires at: {batch.expires_at}" in out
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600


def test_retrieve_polling_example(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client
    batch_id = client.messages.batches.create(requests=[simple_request("a"), simple_request("b")]).id

    # Poll until processing completes
    while True:
        batch = client.messages.batches.retrieve(batch_id)

        print(f"Status: {batch.processing_status}")
        print(f"Request counts: {batch.request_counts}")

        if batch.processing_status == "ended":
            print("Batch completed!")
            print(f"Succeeded: {batch.request_counts.succeeded}")
            print(f"Errored: {batch.request_counts.errored}")
            print(f"Canceled: {batch.request_counts.canceled}")
            print(f"Expired: {batch.request_counts.expired}")
            break

        if batch.processing_status == "canceling":
            print("Batch is being canceled...")

        time.sleep(TINY)  # Wait 1 minute before checking again

    out = capsys.readouterr().out
    assert "Batch completed!\nSucceeded: 2\nErrored: 0\nCanceled: 0\nExpired: 0" in out


def test_list_example(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client
    made = [client.messages.batches.create(requests=[simple_request(f"l{i}")]).id for i in range(25)]

    # List all batches (paginated)
    page = client.messages.batches.list(limit=20)

    for batch in page.data:
        print(f"Batch {batch.id}:")
        print(f" Status: {batch.processing_status}")
        print(f" Created: {batch.created_at}")
        print(f" Requests: {batch.request_counts}")

    # Paginate through results
    next_page = None
    if page.has_next_page():
        next_page = client.messages.batches.list(limit=20, after_id=page.data[-1].id)

    out = capsys.readouterr().out
    assert [b.id for b in page.data] == made[::-1][:20]
    assert next_page is not None and [b.id for b in next_page.data] == made[::-1][20:]
    assert not next_page.has_next_page()
    assert out.count("Batch msgbatch_") == 20


def test_cancel_example(slow_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_client

    # Cancel a batch
    batch_id = started_slow_batch(client)
    batch = client.messages.batches.cancel(batch_id)

    print(f"Cancellation initiated: {batch.cancel_initiated_at}")
    print(f"Status: {batch.processing_status}")

    # Continue polling to see final cancellation results
    while batch.processing_status == "canceling":
        time.sleep(TINY)
        batch = client.messages.batches.retrieve(batch_id)

    print(f"Final counts: {batch.request_counts}")
    print(f"Canceled requests: {batch.request_counts.canceled}")

    out = capsys.readouterr().out
    assert "Status: canceling" in out and "Cancellation initiated: 20" in out
    assert batch.processing_status == "ended"
    assert "Canceled requests: 4" in out
    assert batch.request_counts.succeeded == 2


def test_delete_example(slow_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_client

    def example(batch_id: str) -> None:
        # Ensure batch is finished before deleting
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status != "ended":
            print("Batch must finish processing before deletion")
            # Optionally cancel first
            client.messages.batches.cancel(batch_id)
        else:
            # Delete the batch
            result = client.messages.batches.delete(batch_id)
            print(f"Deleted batch: {result.id}")

    running = started_slow_batch(client)
    example(running)
    assert "Batch must finish processing before deletion" in capsys.readouterr().out
    wait_ended_sync(client, running)
    example(running)
    assert f"Deleted batch: {running}" in capsys.readouterr().out
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(running)


def test_results_example(slow_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_client
    done = client.messages.batches.create(requests=[simple_request(f"ok-{i}", f"Item {i}") for i in range(3)]).id
    wait_ended_sync(client, done)
    canceled = started_slow_batch(client, n=4)
    client.messages.batches.cancel(canceled)
    wait_ended_sync(client, canceled)

    for batch_id in (done, canceled):
        # Check if batch is complete
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status != "ended":
            print("Batch is still processing...")
        else:
            # Stream and process results
            results = client.messages.batches.results(batch_id)

            succeeded = []
            failed = []

            for result in results:
                custom_id = result.custom_id

                if result.result.type == "succeeded":
                    message = result.result.message
                    succeeded.append({"id": custom_id, "content": message.content, "usage": message.usage})
                elif result.result.type == "errored":
                    error = result.result.error
                    failed.append(
                        {
                            "id": custom_id,
                            "error_type": error.type,
                            "message": error.message,  # type: ignore[attr-defined]
                        }
                    )
                elif result.result.type == "canceled":
                    print(f"Request {custom_id} was canceled")
                elif result.result.type == "expired":
                    print(f"Request {custom_id} expired")

            print(f"Successful: {len(succeeded)}")
            print(f"Failed: {len(failed)}")

    out = capsys.readouterr().out
    assert "Successful: 3\nFailed: 0" in out
    assert "Request slow-2 was canceled" in out and "Request slow-3 was canceled" in out
    assert "Successful: 2\nFailed: 0" in out


async def test_complete_workflow_async(aclient: AsyncAnthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = aclient
    batch = await client.messages.batches.create(
        requests=[
            {
                "custom_id": f"req-{i}",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
                },
            }
            for i in range(10)
        ]
    )
    while batch.processing_status == "in_progress":
        await asyncio.sleep(TINY)
        batch = await client.messages.batches.retrieve(batch.id)
        print(f"  Processing: {batch.request_counts.processing} remaining")
    if batch.processing_status == "ended" and batch.results_url:
        results = await client.messages.batches.results(batch.id)
        async for result in results:
            if result.result.type == "succeeded":
                message = result.result.message
                content = message.content[0].text  # type: ignore[union-attr]
                print(f"{result.custom_id}: {content}")
            else:
                print(f"{result.custom_id}: {result.result.type}")
    await client.messages.batches.delete(batch.id)
    out = capsys.readouterr().out
    for i in range(10):
        assert f'req-{i}: Regarding "What is {i} + {i}?":' in out


def test_error_handling_example(slow_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    from anthropic import AnthropicError

    client = slow_client

    def example(batch_id: str) -> None:
        try:
            # Try to get results
            results = client.messages.batches.results(batch_id)

            for result in results:
                custom_id = result.custom_id

                if result.result.type == "succeeded":
                    # Process successful result
                    print(f"Success for {custom_id}")

                elif result.result.type == "errored":
                    # Handle error result
                    error = result.result.error
                    print(f"Error for {custom_id}:")
                    print(f" Type: {error.type}")
                    print(f" Message: {error.message}")  # type: ignore[attr-defined]

                elif result.result.type == "canceled":
                    print(f"Canceled: {custom_id}")

                elif result.result.type == "expired":
                    print(f"Expired: {custom_id}")

        except AnthropicError as e:
            # Batch may not be finished yet
            print(f"Error retrieving results: {e}")
            batch = client.messages.batches.retrieve(batch_id)
            print(f"Batch status: {batch.processing_status}")

    running = started_slow_batch(client, n=4)
    example(running)
    out = capsys.readouterr().out
    assert "Error retrieving results: " in out and "Batch status: in_progress" in out

    client.messages.batches.cancel(running)
    wait_ended_sync(client, running)
    example(running)
    out = capsys.readouterr().out
    assert "Success for slow-0" in out and "Success for slow-1" in out
    assert "Canceled: slow-2" in out and "Canceled: slow-3" in out


async def test_async_batch_processing_example(aclient: AsyncAnthropic, capsys: pytest.CaptureFixture[str]) -> None:
    async def process_batch() -> str:
        client = aclient

        # Create batch
        batch = await client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"async-req-{i}",
                    "params": {
                        "model": "claude-3-5-sonnet-20241022",
                        "max_tokens": 1024,
                        "messages": [{"role": "user", "content": f"Question {i}"}],
                    },
                }
                for i in range(5)
            ]
        )

        print(f"Created batch: {batch.id}")

        # Poll for completion
        while batch.processing_status == "in_progress":
            await asyncio.sleep(TINY)
            batch = await client.messages.batches.retrieve(batch.id)
            print(f"Status: {batch.processing_status}")

        # Get results
        if batch.results_url:
            results = await client.messages.batches.results(batch.id)

            async for result in results:
                if result.result.type == "succeeded":
                    print(f"{result.custom_id}: Success")

        # Clean up
        await client.messages.batches.delete(batch.id)
        return batch.id

    batch_id = await process_batch()
    out = capsys.readouterr().out
    assert "Status: ended" in out
    assert sorted(line for line in out.splitlines() if line.endswith(": Success")) == [
        f"async-req-{i}: Success" for i in range(5)
    ]
    with pytest.raises(anthropic.NotFoundError):
        await aclient.messages.batches.retrieve(batch_id)


def test_managing_large_batches(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    from typing import Any as _Any
    from typing import Dict, List  # noqa: UP035 - as the document writes it

    def create_large_batch(
        client: Anthropic,
        requests_data: List[Dict[str, _Any]],  # noqa: UP006
        batch_size: int = 10000,
    ) -> List[str]:  # noqa: UP006
        """
        Create multiple batches if request count exceeds batch_size.
        Returns list of batch IDs.
        """
        batch_ids = []

        for i in range(0, len(requests_data), batch_size):
            chunk = requests_data[i : i + batch_size]

            batch = client.messages.batches.create(
                requests=[{"custom_id": f"req-{i + j}", "params": data} for j, data in enumerate(chunk)]  # type: ignore[misc]
            )

            batch_ids.append(batch.id)
            print(f"Created batch {batch.id} with {len(chunk)} requests")

        return batch_ids

    # Example usage
    client = sync_client

    # Prepare 15,000 requests (will be split into 2 batches)
    large_request_list = [
        {
            "model": "claude-3-5-sonnet-20241022",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": f"Process item {i}"}],
        }
        for i in range(15000)
    ]

    batch_ids = create_large_batch(client, large_request_list)
    print(f"Created {len(batch_ids)} batches")

    out = capsys.readouterr().out
    assert "Created 2 batches" in out
    assert len(batch_ids) == 2
    ended = [wait_ended_sync(client, batch_id) for batch_id in batch_ids]
    assert [b.request_counts.succeeded for b in ended] == [10000, 5000]
    assert all(b.request_counts.processing == 0 and b.request_counts.errored == 0 for b in ended)
    last = {r.custom_id for r in client.messages.batches.results(batch_ids[1])}
    assert last == {f"req-{i}" for i in range(10000, 15000)}


def test_retrieving_specific_results(sync_client: Anthropic) -> None:
    from typing import Dict, Optional  # noqa: UP035

    def get_result_by_custom_id(client: Anthropic, batch_id: str, target_custom_id: str) -> Optional[Dict]:  # type: ignore[type-arg]  # noqa: UP006, UP045
        """
        Find a specific result by custom_id in batch results.
        """
        results = client.messages.batches.results(batch_id)

        for result in results:
            if result.custom_id == target_custom_id:
                if result.result.type == "succeeded":
                    return {"success": True, "message": result.result.message}
                else:
                    return {
                        "success": False,
                        "type": result.result.type,
                        "error": getattr(result.result, "error", None),
                    }

        return None

    client = sync_client
    batch_id = client.messages.batches.create(
        requests=[simple_request(f"request-{i}", f"Item {i}") for i in range(60)]
        + [simple_request("important-request-42", "The important one")]
        + [simple_request("important-request-43", "x [[simulate error=rate_limit_error]]")]
    ).id
    wait_ended_sync(client, batch_id)

    result = get_result_by_custom_id(client, batch_id, "important-request-42")
    assert result is not None and result["success"] is True
    assert 'Regarding "The important one"' in result["message"].content[0].text
    failed = get_result_by_custom_id(client, batch_id, "important-request-43")
    assert failed is not None and failed["success"] is False and failed["type"] == "errored"
    assert failed["error"].error.type == "rate_limit_error"
    assert get_result_by_custom_id(client, batch_id, "missing") is None


# == beta-batches-sdk.md =======================================================================


def test_beta_basic_then_wait_and_results(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client

    # Basic Batch with Beta Features
    batch = client.beta.messages.batches.create(
        requests=[
            {
                "custom_id": "request-1",
                "params": {
                    "model": "claude-sonnet-4-5-20250929",
                    "max_tokens": 2048,
                    "thinking": {"type": "enabled"},  # type: ignore[typeddict-item]
                    "messages": [{"role": "user", "content": "Solve this problem..."}],
                },
            },
            {
                "custom_id": "request-2",
                "params": {
                    "model": "claude-sonnet-4-5-20250929",
                    "max_tokens": 2048,
                    "web_search": {"type": "enabled"},  # type: ignore[typeddict-unknown-key]
                    "messages": [{"role": "user", "content": "What are the latest news?"}],
                },
            },
        ]
    )
    print(f"Batch ID: {batch.id}")

    # Wait for completion
    while True:
        batch = client.beta.messages.batches.retrieve(batch.id)
        if batch.processing_status == "ended":
            break
        print(f"Processing: {batch.request_counts.processing} requests remaining")
        time.sleep(TINY)

    # Process results
    thinking_seen = []
    for response in client.beta.messages.batches.results(batch.id):
        if response.result.type == "succeeded":
            print(f"{response.custom_id}: Success")
            # Access beta feature content
            for block in response.result.message.content:
                if block.type == "thinking":
                    thinking_seen.append(response.custom_id)
                    print(f"  Reasoning: {block.thinking[:100]}...")
                elif block.type == "text":
                    print(f"  Response: {block.text[:100]}...")
        elif response.result.type == "errored":
            print(f"{response.custom_id}: Error - {response.result.error.message}")  # type: ignore[attr-defined]

    out = capsys.readouterr().out
    assert "request-1: Success" in out and "request-2: Success" in out
    assert thinking_seen == ["request-1"]
    assert "  Reasoning: " in out and out.count("  Response: ") == 2


MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def test_beta_mixed_features(sync_client: Anthropic) -> None:
    client = sync_client
    pdf_data = base64.standard_b64encode(MINIMAL_PDF).decode()

    # Create batch with different features per request
    requests = [
        {
            "custom_id": "thinking-1",
            "params": {
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 4096,
                "thinking": {"type": "enabled", "budget_tokens": 2000},
                "messages": [{"role": "user", "content": "Complex reasoning task"}],
            },
        },
        {
            "custom_id": "citations-1",
            "params": {
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 2048,
                "citations": {"type": "enabled"},
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "base64", "media_type": "application/pdf", "data": pdf_data},
                            },
                            {"type": "text", "text": "Summarize with citations"},
                        ],
                    }
                ],
            },
        },
        {
            "custom_id": "web-search-1",
            "params": {
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 2048,
                "web_search": {"type": "enabled"},
                "messages": [{"role": "user", "content": "Latest AI news"}],
            },
        },
        {
            "custom_id": "combined-1",
            "params": {
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 4096,
                "thinking": {"type": "enabled"},
                "web_search": {"type": "enabled"},
                "code_execution": {"type": "enabled"},
                "messages": [{"role": "user", "content": "Research and code solution"}],
            },
        },
    ]

    batch = client.beta.messages.batches.create(requests=requests)  # type: ignore[arg-type]

    ended = wait_ended_sync(client, batch.id)
    assert ended.request_counts.succeeded == 4
    results = {r.custom_id: r.result for r in client.beta.messages.batches.results(batch.id)}
    assert set(results) == {"thinking-1", "citations-1", "web-search-1", "combined-1"}
    for custom_id in ("thinking-1", "combined-1"):
        blocks = results[custom_id].message.content  # type: ignore[union-attr]
        assert blocks[0].type == "thinking" and blocks[0].thinking and blocks[0].signature
        assert blocks[-1].type == "text"
    assert len(results["thinking-1"].message.content[0].thinking.split()) <= 2000  # type: ignore[union-attr]
    assert [b.type for b in results["web-search-1"].message.content] == ["text"]  # type: ignore[union-attr]
    assert "Summarize with citations" in results["citations-1"].message.content[0].text  # type: ignore[union-attr]


def test_beta_large_scale(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client

    # Process thousands of requests with beta features
    requests = []
    for i in range(5000):
        requests.append(
            {
                "custom_id": f"request-{i}",
                "params": {
                    "model": "claude-sonnet-4-5-20250929",
                    "max_tokens": 2048,
                    "thinking": {"type": "enabled"},
                    "messages": [{"role": "user", "content": f"Task {i}: ..."}],
                },
            }
        )

    batch = client.beta.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    print(f"Created batch {batch.id} with {len(requests)} requests")

    # Monitor progress
    progress_seen = []
    while True:
        batch = client.beta.messages.batches.retrieve(batch.id)
        completed = batch.request_counts.succeeded + batch.request_counts.errored
        total = completed + batch.request_counts.processing
        progress = (completed / total * 100) if total > 0 else 0
        progress_seen.append((completed, total))
        print(f"Progress: {progress:.1f}% ({completed}/{total})")
        if batch.processing_status == "ended":
            break
        time.sleep(TINY)

    # Process all results
    results_by_id = {}
    for response in client.beta.messages.batches.results(batch.id):
        results_by_id[response.custom_id] = response.result
    print(f"Processed {len(results_by_id)} results")

    out = capsys.readouterr().out
    assert "Progress: 100.0% (5000/5000)" in out
    assert "Processed 5000 results" in out
    assert all(total == 5000 for _, total in progress_seen)
    assert [c for c, _ in progress_seen] == sorted(c for c, _ in progress_seen)
    assert all(r.type == "succeeded" and r.message.content[0].type == "thinking" for r in results_by_id.values())  # type: ignore[union-attr]


async def test_beta_async_operations(aclient: AsyncAnthropic) -> None:
    async def main() -> list[Any]:
        client = aclient

        # Create batch
        batch = await client.beta.messages.batches.create(
            requests=[
                {
                    "custom_id": "async-1",
                    "params": {
                        "model": "claude-sonnet-4-5-20250929",
                        "max_tokens": 2048,
                        "thinking": {"type": "enabled"},  # type: ignore[typeddict-item]
                        "messages": [{"role": "user", "content": "Task 1"}],
                    },
                },
                {
                    "custom_id": "async-2",
                    "params": {
                        "model": "claude-sonnet-4-5-20250929",
                        "max_tokens": 2048,
                        "web_search": {"type": "enabled"},  # type: ignore[typeddict-unknown-key]
                        "messages": [{"role": "user", "content": "Task 2"}],
                    },
                },
            ]
        )

        # Poll until complete
        while True:
            batch = await client.beta.messages.batches.retrieve(batch.id)
            if batch.processing_status == "ended":
                break
            await asyncio.sleep(TINY)

        # Get results
        results = []
        async for response in await client.beta.messages.batches.results(batch.id):
            results.append(response)

        return results

    results = await main()
    by_id = {r.custom_id: r.result for r in results}
    assert set(by_id) == {"async-1", "async-2"}
    assert by_id["async-1"].message.content[0].type == "thinking"  # type: ignore[union-attr]
    assert by_id["async-2"].message.content[0].type == "text"  # type: ignore[union-attr]


def test_beta_cancel_example(slow_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_client
    batch_abc123 = started_slow_batch(client, n=5)

    # Cancel batch in progress
    batch = client.beta.messages.batches.cancel(batch_abc123)
    print(f"Status: {batch.processing_status}")  # "canceling"

    # Wait for cancellation to complete
    while True:
        batch = client.beta.messages.batches.retrieve(batch.id)
        if batch.processing_status == "ended":
            break
        time.sleep(TINY)

    print(f"Canceled: {batch.request_counts.canceled} requests")

    out = capsys.readouterr().out
    assert "Status: canceling" in out and "Canceled: 3 requests" in out


def test_beta_delete_and_list_examples(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client
    made = [client.messages.batches.create(requests=[simple_request(f"d{i}")]).id for i in range(25)]
    batch_abc123 = made[0]
    wait_ended_sync(client, batch_abc123)

    # Delete completed batch
    deleted = client.beta.messages.batches.delete(batch_abc123)
    print(f"Deleted batch: {deleted.id}")

    # List recent batches
    for batch in client.beta.messages.batches.list(limit=10):
        print(f"{batch.id}: {batch.processing_status}")
        print(f"  Succeeded: {batch.request_counts.succeeded}")
        print(f"  Errored: {batch.request_counts.errored}")
        print(f"  Processing: {batch.request_counts.processing}")

    out = capsys.readouterr().out
    assert f"Deleted batch: {batch_abc123}" in out
    listed = [line.split(":")[0] for line in out.splitlines() if line.startswith("msgbatch_")]
    assert listed == made[1:][::-1]  # auto-pagination walked all 24 in pages of 10


def test_beta_error_handling_example(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    from anthropic import APIError

    client = sync_client
    batch = client.beta.messages.batches.create(
        requests=[simple_request("ok"), simple_request("bad", "x [[simulate error=api_error]]")]
    )
    wait_ended_sync(client, batch.id)
    good_batch = batch

    try:
        batch = client.beta.messages.batches.create(requests=[{"custom_id": "not valid!", "params": {}}])  # type: ignore[typeddict-item]
    except APIError as e:
        print(f"Failed to create batch: {e.message}")

    # Process results with error handling
    assert batch is good_batch
    for response in client.beta.messages.batches.results(batch.id):
        if response.result.type == "succeeded":
            try:
                # Process successful result
                message = response.result.message
                print(f"Processed {response.custom_id}: {message.id}")
            except Exception as e:
                print(f"Error processing {response.custom_id}: {e}")
        elif response.result.type == "errored":
            print(f"Request {response.custom_id} failed: {response.result.error.message}")  # type: ignore[attr-defined]
        elif response.result.type == "canceled":
            print(f"Request {response.custom_id} was canceled")
        elif response.result.type == "expired":
            print(f"Request {response.custom_id} expired")

    out = capsys.readouterr().out
    assert "Failed to create batch: " in out and "custom_id" in out
    assert "Processed ok: msg_" in out
    assert "Request bad failed: Simulated api_error" in out


def test_beta_best_practices(sync_client: Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_client

    def monitor_batch(batch_id: str) -> Any:
        """Monitor batch with progress updates."""
        last_progress = 0.0
        while True:
            batch = client.beta.messages.batches.retrieve(batch_id)
            total = sum(
                [
                    batch.request_counts.processing,
                    batch.request_counts.succeeded,
                    batch.request_counts.errored,
                    batch.request_counts.canceled,
                ]
            )
            completed = batch.request_counts.succeeded + batch.request_counts.errored
            progress = (completed / total * 100) if total > 0 else 0
            if progress > last_progress + 5:  # Log every 5%
                print(f"Progress: {progress:.1f}%")
                last_progress = progress
            if batch.processing_status == "ended":
                break
            time.sleep(TINY)
        return batch

    def create_batches_chunked(requests: list[Any], chunk_size: int = 5000) -> list[Any]:
        """Split large request list into multiple batches."""
        batches = []
        for i in range(0, len(requests), chunk_size):
            chunk = requests[i : i + chunk_size]
            batch = client.beta.messages.batches.create(requests=chunk)
            batches.append(batch)
        return batches

    # 1. Use Meaningful Custom IDs; 2. Batch Similar Requests
    all_requests = [
        simple_request(f"user-{i % 97}-task-{i}-{1700000000 + i}", f"Task {i}", thinking={"type": "enabled"})
        for i in range(20_000)
    ]
    batches = create_batches_chunked(all_requests)
    assert [b.request_counts.processing for b in batches] == [5000] * 4

    # 3. Monitor Progress
    batch = monitor_batch(batches[0].id)

    # 4. Handle All Result Types
    success_count = 0
    error_count = 0
    canceled_count = 0
    expired_count = 0

    for response in client.beta.messages.batches.results(batch.id):
        if response.result.type == "succeeded":
            success_count += 1
        elif response.result.type == "errored":
            error_count += 1
        elif response.result.type == "canceled":
            canceled_count += 1
        elif response.result.type == "expired":
            expired_count += 1

    print(f"Results: {success_count} success, {error_count} errors, {canceled_count} canceled, {expired_count} expired")
    out = capsys.readouterr().out
    assert "Results: 5000 success, 0 errors, 0 canceled, 0 expired" in out
    assert batch.processing_status == "ended" and batch.request_counts.succeeded == 5000
    shown = [float(line.split()[1].rstrip("%")) for line in out.splitlines() if line.startswith("Progress: ")]
    assert shown == sorted(shown) and all(0 < p <= 100 for p in shown)
