"""One over-large stdio message is refused while it streams, and the server keeps serving.

The attack from the issue: one 150 MB line on stdin was buffered whole (949 MiB RSS) before it was
refused. Here the installed console script runs as a stdio subprocess with default settings (a
message may hold one 100 MiB file as base64: ~134 MiB); the test speaks raw JSON-RPC to it,
since the official client cannot send a message that large on purpose.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ..envs import clean_env
from ..processes import console_script

pytestmark = pytest.mark.anyio

LINE_BYTES = 150_000_000


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def send(proc: Process, message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    await proc.stdin.send(json.dumps(message).encode() + b"\n")


async def receive(stdout: BufferedByteReceiveStream) -> dict[str, Any]:
    with anyio.fail_after(30):
        reply: dict[str, Any] = json.loads(await stdout.receive_until(b"\n", 1 << 20))
    return reply


async def test_a_150_mb_stdio_message_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    proc = await anyio.open_process(
        [console_script(), "--data-dir", str(tmp_path)], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        stdout = BufferedByteReceiveStream(proc.stdout)
        await send(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"},
                },
            },
        )
        assert (await receive(stdout))["id"] == 1
        await send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        created = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
        await send(proc, {**created, "params": {"name": "container_create", "arguments": {"name": "big"}}})
        cid = (await receive(stdout))["result"]["structuredContent"]["id"]
        baseline = peak_rss_mib(proc.pid)

        arguments = {"container_id": cid, "path": "big.bin", "base64": ""}
        message = json.dumps({**created, "id": 3, "params": {"name": "file_create", "arguments": arguments}})
        head, _, tail = message.rpartition('""')  # stream the base64 string between its quotes
        await proc.stdin.send(head.encode() + b'"')
        chunk = b"A" * (1 << 20)
        for _ in range(LINE_BYTES // len(chunk)):
            await proc.stdin.send(chunk)
        await proc.stdin.send(b'"' + tail.encode() + b"\n")

        refused = await receive(stdout)
        assert refused["id"] == 3
        assert refused["error"]["code"] == -32600
        assert "Message too large" in refused["error"]["message"] and "source_path" in refused["error"]["message"]
        peak = peak_rss_mib(proc.pid)
        assert peak - baseline < 200, f"peak RSS grew {peak - baseline:.0f} MiB over {baseline:.0f} MiB"

        # still serving: the next request is answered, and nothing was stored
        await send(proc, {**created, "id": 4, "params": {"name": "file_list", "arguments": {"container_id": cid}}})
        listed = await receive(stdout)
        assert listed["id"] == 4 and listed["result"]["structuredContent"]["data"] == []
        await proc.stdin.aclose()
        with anyio.fail_after(20):
            await proc.wait()
        log = b""
        async for data in proc.stderr:
            log += data
        assert b"dropped a stdio message of" in log and b"(request id 3)" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"argu', 7),
        (b'{"id":"abc","jsonrpc":"2.0","method":"x","params":{"a', "abc"),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"id": 5, "base64": "AAAA', None),  # nested: not ours
        (b'{"jsonrpc":"2.0","method":"notifications/x","params":{"b', None),
        (b"AAAAAAAA", None),
    ],
)
def test_the_request_id_is_read_only_from_the_head_of_the_message(head: bytes, expected: int | str | None) -> None:
    from container_mcp.stdio import request_id

    assert request_id(head) == expected


async def test_requests_written_before_stdin_closes_are_all_answered(tmp_path: Path) -> None:
    """A client that writes its requests and closes stdin at once (``printf ... | container-mcp``) gets
    every answer: the SDK's loop cancelled handlers still running when the read stream ended."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    calls = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "container_create", "arguments": {"name": f"c{i}"}},
        }
        for i in range(1, 9)
    ]
    script = [initialize, {"jsonrpc": "2.0", "method": "notifications/initialized"}, *calls]
    stdin = b"".join(json.dumps(m).encode() + b"\n" for m in script)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [console_script(), "--data-dir", str(tmp_path)], input=stdin, env=clean_env(), check=False
        )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(a["id"] for a in answers) == list(range(9)), done.stderr.decode()[-2000:]
    assert all("result" in a and not a["result"].get("isError") for a in answers[1:])
    assert done.returncode == 0


async def test_requests_from_a_file_are_answered_into_a_file(tmp_path: Path) -> None:
    """``container-mcp < requests.jsonl > answers.jsonl``: a regular file cannot be waited on by the
    event loop as a pipe is, so it is read in a worker thread; every request is answered, in full."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    calls = [
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "session_usage", "arguments": {}}}
        for i in range(1, 4)
    ]
    script = [initialize, {"jsonrpc": "2.0", "method": "notifications/initialized"}, *calls]
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    requests.write_bytes(b"".join(json.dumps(m).encode() + b"\n" for m in script))
    with requests.open("rb") as stdin, answers.open("wb") as stdout, anyio.fail_after(60):
        done = await anyio.run_process(
            [console_script(), "--data-dir", str(tmp_path / "data")],
            stdin=stdin,
            stdout=stdout,
            env=clean_env(),
            check=False,
        )
    replies = [json.loads(line) for line in answers.read_text().splitlines()]
    assert sorted(r["id"] for r in replies) == [0, 1, 2, 3], done.stderr.decode()[-2000:]
    assert all("containers" in r["result"]["structuredContent"] for r in replies[1:])
    assert done.returncode == 0


async def test_a_line_the_sdk_cannot_parse_is_answered_with_its_id(tmp_path: Path) -> None:
    """Python refuses integers over 4,300 digits, so the SDK's parse of such a request fails and it was
    dropped without a word: the client waited for ever. It is answered (with its id when plainly
    visible, else null), and the server serves the next line."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    huge = '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "file_read", "arguments": '
    huge += '{"container_id": "cntr_x", "file_id": "cfile_x", "offset": ' + "9" * 5000 + "}}}"
    later = {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "session_usage", "arguments": {}}}
    lines = [json.dumps(initialize), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})]
    stdin = "\n".join([*lines, huge, "not json at all", json.dumps(later)]).encode() + b"\n"
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [console_script(), "--data-dir", str(tmp_path)], input=stdin, env=clean_env(), check=False
        )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    by_id = {a.get("id"): a for a in answers}
    assert by_id[5]["error"]["code"] == -32600 and "JSON-RPC" in by_id[5]["error"]["message"]
    assert by_id[None]["error"]["code"] == -32600  # no id to be seen in "not json at all"
    assert "result" in by_id[6]
