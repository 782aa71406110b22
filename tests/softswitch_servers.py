"""Test servers speaking the real control protocols of softswitches, on real sockets:
FreeSWITCH's event socket (ESL), Asterisk's manager interface (AMI) and
Kamailio's JSON-RPC 2.0 over HTTP. Each keeps a set of live calls, kills them
when asked the way the real one does, and records what it was sent."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class EslServer:
    """mod_event_socket: auth/request, auth, api uuid_kill, exit."""

    password: str = "ClueCon"
    calls: set[str] = field(default_factory=set)
    received: list[str] = field(default_factory=list)
    port: int = 0

    async def start(self) -> "EslServer":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader, writer):
        def send(headers: dict[str, str], body: str = ""):
            if body:
                headers = {**headers, "Content-Length": str(len(body.encode()))}
            text = "".join(f"{k}: {v}\n" for k, v in headers.items()) + "\n" + body
            writer.write(text.encode())

        send({"Content-Type": "auth/request"})
        authed = False
        try:
            while True:
                command = b""
                while not command.endswith(b"\n\n"):
                    chunk = await reader.readuntil(b"\n")
                    command += chunk
                    if command == b"\n":
                        command = b""
                line = command.decode().strip()
                self.received.append(line if not line.startswith("auth ") else "auth ***"
                                     if line == f"auth {self.password}" else "auth <wrong>")
                if line.startswith("auth "):
                    if line[5:] == self.password:
                        authed = True
                        send({"Content-Type": "command/reply", "Reply-Text": "+OK accepted"})
                    else:
                        send({"Content-Type": "command/reply", "Reply-Text": "-ERR invalid"})
                        send({"Content-Type": "text/disconnect-notice"}, "Disconnected.\n")
                        break
                elif not authed:
                    send({"Content-Type": "command/reply", "Reply-Text": "-ERR command not found"})
                elif line.startswith("api uuid_kill "):
                    uuid = line.split()[2]
                    # A heartbeat event first, as a subscribed socket may see one.
                    send({"Content-Type": "text/event-plain"}, "Event-Name: HEARTBEAT\n")
                    if uuid in self.calls:
                        self.calls.discard(uuid)
                        send({"Content-Type": "api/response"}, "+OK\n")
                    else:
                        send({"Content-Type": "api/response"}, "-ERR No such channel!\n")
                elif line == "exit":
                    send({"Content-Type": "command/reply", "Reply-Text": "+OK bye"})
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await writer.drain()
            writer.close()


@dataclass
class AmiServer:
    """Asterisk manager: banner, Login, Hangup, Logoff; every response carries the
    ActionID it answers, and events are interleaved before it."""

    username: str = "ocs"
    secret: str = "ami-secret"
    channels: set[str] = field(default_factory=set)
    received: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    async def start(self) -> "AmiServer":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader, writer):
        def send(**fields):
            writer.write(("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n")
                         .encode())

        writer.write(b"Asterisk Call Manager/7.0.3\r\n")
        logged_in = False
        try:
            while True:
                message: dict[str, str] = {}
                while True:
                    line = (await reader.readuntil(b"\n")).decode().rstrip("\r\n")
                    if not line:
                        break
                    k, _, v = line.partition(":")
                    message[k.strip()] = v.strip()
                if not message:
                    continue
                shown = dict(message)
                if "Secret" in shown:
                    shown["Secret"] = "***" if shown["Secret"] == self.secret else "<wrong>"
                self.received.append(shown)
                aid = message.get("ActionID", "")
                action = message.get("Action", "").lower()
                # An unrelated event the manager happens to send first.
                send(Event="Newexten", Privilege="dialplan,all", Channel="SIP/other-0001")
                if action == "login":
                    if message.get("Username") == self.username and \
                            message.get("Secret") == self.secret:
                        logged_in = True
                        send(Response="Success", ActionID=aid,
                             Message="Authentication accepted")
                        send(Event="FullyBooted", Privilege="system,all", Status="Fully Booted")
                    else:
                        send(Response="Error", ActionID=aid, Message="Authentication failed")
                elif not logged_in:
                    send(Response="Error", ActionID=aid, Message="Permission denied")
                elif action == "hangup":
                    channel = message.get("Channel", "")
                    if channel in self.channels:
                        self.channels.discard(channel)
                        send(Event="Hangup", Channel=channel, Cause=message.get("Cause", "16"))
                        send(Response="Success", ActionID=aid, Message="Channel Hungup")
                    else:
                        send(Response="Error", ActionID=aid, Message="No such channel")
                elif action == "logoff":
                    send(Response="Goodbye", ActionID=aid, Message="Thanks for all the fish.")
                    await writer.drain()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class KamailioRpc:
    """jsonrpcs over xhttp: dlg.dlg_list by Call-ID, dlg.end_dlg by h_entry/h_id."""

    dialogs: dict[str, tuple[int, int]] = field(default_factory=dict)   # callid -> (entry, id)
    received: list[dict] = field(default_factory=list)
    port: int = 0

    async def start(self) -> "KamailioRpc":
        app = web.Application()
        app.router.add_post("/RPC", self._rpc)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _rpc(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32700, "message": "Parse error"}})
        self.received.append(body)
        rid, method, params = body.get("id"), body.get("method"), body.get("params") or []

        def answer(**kw):
            return web.json_response({"jsonrpc": "2.0", "id": rid, **kw})
        if method == "dlg.dlg_list":
            found = self.dialogs.get(params[0]) if params else None
            if found is None:
                return answer(error={"code": 404, "message": "Not found"})
            return answer(result=[{"h_entry": found[0], "h_id": found[1], "call-id": params[0],
                                   "state": 4}])
        if method == "dlg.end_dlg":
            for callid, ids in list(self.dialogs.items()):
                if list(ids) == list(params[:2]):
                    del self.dialogs[callid]
                    return answer(result={})
            return answer(error={"code": 404, "message": "Dialog not found"})
        return answer(error={"code": -32601, "message": "Method Not Found"})
