#!/usr/bin/env python3
"""An agent of copilot-data in Python, with nothing but stock nats-py and msgpack.

It signs in, starts a conversation and appends messages, runs a workflow,
opens an incident, and reads each back over HTTP with `X-Min-Position`
(the position a command's result carried), so every read shows the write.

    pip install -r requirements.txt
    python3 copilot_agent.py --email you@example.com --password-env COPILOT_PASSWORD

Settings (flags or environment): --nats (COPILOT_NATS_URL, default
nats://127.0.0.1:4222), --prefix (COPILOT_NATS_PREFIX, default copilot),
--http (COPILOT_API, default http://127.0.0.1:8080). Exits 1 when a command
is not accepted or a read does not show it.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid

import msgpack
import nats


def uuid7() -> str:
    """A time-ordered id (UUIDv7), as the service prefers for new aggregates."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


class CommandRefused(Exception):
    def __init__(self, command_type, result):
        error = result.get("error") or {}
        super().__init__(f"{command_type}: {result.get('status')}: {error.get('code')}: {error.get('message')}")
        self.result = result


class Copilot:
    """Commands over NATS request/reply (MessagePack), reads over HTTP."""

    def __init__(self, nc, prefix, http):
        self.nc, self.prefix, self.http = nc, prefix, http.rstrip("/")
        self.token = None

    async def command(self, command_type, payload, aggregate_id=None):
        """Sends one command; returns its result, or raises CommandRefused."""
        envelope = {
            "command_id": uuid7(),
            "aggregate_id": aggregate_id or uuid7(),
            "payload": payload,
        }
        headers = {"Content-Type": "application/msgpack"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        reply = await self.nc.request(
            f"{self.prefix}.rpc.{command_type}",
            msgpack.packb(envelope),
            timeout=10,
            headers=headers,
        )
        result = msgpack.unpackb(reply.data)
        if result.get("status") != "accepted":
            raise CommandRefused(command_type, result)
        return result

    def read(self, path, position=None):
        """GET from the query API, at least as new as `position`."""
        request = urllib.request.Request(f"{self.http}{path}")
        request.add_header("Authorization", f"Bearer {self.token}")
        if position:
            request.add_header("X-Min-Position", position)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    async def sign_in(self, email, password):
        result = await self.command(
            "session.start",
            {"email": email, "password": password, "device_fingerprint": "python-agent",
             "context": {"client": "copilot_agent.py"}},
        )
        self.token = result["data"]["token"]
        return result


def check(what, ok):
    print(f"{'ok ' if ok else 'FAILED'} {what}")
    if not ok:
        raise SystemExit(1)


async def run(args):
    nc = await nats.connect(args.nats, name="copilot_agent.py")
    try:
        copilot = Copilot(nc, args.prefix, args.http)
        signed_in = await copilot.sign_in(args.email, os.environ[args.password_env])
        me = copilot.read("/v1/me", signed_in["position"])
        check(f"signed in as {me['email']}", me["email"] == args.email)

        # A conversation with two messages.
        conversation = uuid7()
        await copilot.command(
            "conversation.start",
            {"title": "Why is checkout slow?", "model": "gpt-4o",
             "model_config": {"temperature": 0.2, "max_tokens": 1024}, "tags": ["perf"]},
            conversation,
        )
        await copilot.command(
            "conversation.append_message",
            {"message_id": uuid7(), "role": "user", "content": "Checkout p99 doubled since noon."},
            conversation,
        )
        answered = await copilot.command(
            "conversation.append_message",
            {"message_id": uuid7(), "role": "assistant", "content": "The payments pool is saturated.",
             "tokens_in": 12, "tokens_out": 9},
            conversation,
        )
        read = copilot.read(f"/v1/conversations/{conversation}", answered["position"])
        check(f"conversation has {read['message_count']} messages", read["message_count"] == 2)

        # A workflow, activated and run to the end.
        workflow = uuid7()
        await copilot.command(
            "workflow.create",
            {"name": "restart payments", "definition": {"steps": ["drain", "restart"]},
             "environment": {"REGION": "eu-west-1"}},
            workflow,
        )
        await copilot.command("workflow.activate", {}, workflow)
        execution = uuid7()
        await copilot.command(
            "execution.start", {"workflow_id": workflow, "trigger_source": "python-agent"}, execution
        )
        for name in ["drain", "restart"]:
            step = uuid7()
            await copilot.command("execution.start_step", {"step_id": step, "name": name}, execution)
            await copilot.command("execution.complete_step", {"step_id": step, "output": {"ok": True}}, execution)
        done = await copilot.command("execution.complete", {"outputs": {"restarted": True}}, execution)
        run_read = copilot.read(f"/v1/executions/{execution}", done["position"])
        check(f"execution {run_read['status']} with {len(run_read['steps'])} steps",
              run_read["status"] == "succeeded" and len(run_read["steps"]) == 2)

        # An incident.
        incident = uuid7()
        opened = await copilot.command(
            "incident.open",
            {"title": "Checkout latency", "description": "p99 above 2 s",
             "severity": "high", "affected_services": ["checkout", "payments"]},
            incident,
        )
        read = copilot.read(f"/v1/incidents/{incident}", opened["position"])
        check(f"incident {read['status']}: {read['title']}", read["status"] == "open")

        # A refused command says why, and changes nothing.
        try:
            await copilot.command("incident.open", {"title": "no severity"})
            check("an invalid command is refused", False)
        except CommandRefused as refused:
            check(f"an invalid command is refused ({refused.result['status']})",
                  refused.result["status"] == "invalid")
    finally:
        await nc.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-env", default="COPILOT_PASSWORD",
                        help="the variable holding the password (never a flag: flags show in ps)")
    parser.add_argument("--nats", default=os.environ.get("COPILOT_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default=os.environ.get("COPILOT_NATS_PREFIX", "copilot"))
    parser.add_argument("--http", default=os.environ.get("COPILOT_API", "http://127.0.0.1:8080"))
    try:
        asyncio.run(run(parser.parse_args()))
    except CommandRefused as refused:
        print(f"FAILED {refused}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
