"""Hang-ups through softswitches' own control interfaces, for calls whose account ran
dry before the next accounting packet comes.

Three clients, each a short connection per action (enforcement is rare next
to calls, and a fresh connection never carries a stale login):

* FreeSWITCH event socket (mod_event_socket): read ``auth/request``, send
  ``auth <password>``, then ``api uuid_kill <uuid> [cause]``; the
  ``api/response`` body is ``+OK`` or ``-ERR <reason>``.
* Asterisk Manager Interface: banner, ``Action: Login`` then
  ``Action: Hangup`` (``Channel`` is the channel name or its unique id), each
  with an ``ActionID`` so the response is told apart from events the manager
  interleaves; then ``Action: Logoff``.
* Kamailio JSON-RPC 2.0 over HTTP (jsonrpcs + xhttp): ``dlg.dlg_list`` with
  the Call-ID finds the dialog's ``h_entry``/``h_id``, then ``dlg.end_dlg``
  sends BYE both ways.

Where each softswitch is, and its credentials, are in the NAS record's
``control`` (passwords there are never logged, never answered by the API)::

    {"freeswitch": {"host": "10.0.0.5", "port": 8021, "password": "...",
                    "cause": "NORMAL_CLEARING", "uuid_attr": "Acct-Session-Id"},
     "asterisk":   {"host": "10.0.0.6", "port": 5038, "username": "ocs",
                    "secret": "...", "channel_attr": "Asterisk-Unique-ID"},
     "kamailio":   {"url": "http://10.0.0.7:5060/RPC"}}

``host`` defaults to the NAS address. The call is found by the attribute
named (kept on the session from its accounting), else the session's
Acct-Session-Id: FreeSWITCH's channel UUID, Asterisk's unique id, SIP's
Call-ID. A call the softswitch no longer has counts as done (``gone``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import replace
from typing import Any

import aiohttp

from ocs.model import Nas

from .model import ASTERISK, DISCONNECT, FREESWITCH, KAMAILIO, Action, ActuatorError, Attempt

log = logging.getLogger("ocs.policy")

_ids = itertools.count(1)


def _endpoint(nas: Nas | None, backend: str) -> dict[str, Any]:
    if nas is None:
        raise ActuatorError("the session's NAS is not registered", retry=False)
    conf = (nas.control or {}).get(backend)
    if not isinstance(conf, dict):
        raise ActuatorError(f"NAS {nas.name} has no control.{backend} endpoint", retry=False)
    return conf


def _host(nas: Nas, conf: dict[str, Any]) -> str:
    host = conf.get("host") or nas.address
    if "/" in str(host):
        raise ActuatorError(f"NAS {nas.name}: set control host (its address is a prefix)",
                            retry=False)
    return str(host)


def _call_id(action: Action, conf: dict[str, Any], key: str, defaults: tuple[str, ...]) -> str:
    target = action.target
    names = (conf[key],) if conf.get(key) else defaults
    for name in names:
        if name == "Acct-Session-Id":
            value = target.nas_session_id
        else:
            value = target.attrs.get(name)
        if value:
            return str(value)
    raise ActuatorError(f"session {action.session} has none of {', '.join(names)} to find "
                        f"the call", retry=False)


class _Base:
    backend = ""

    def __init__(self, timeout: float):
        self.timeout = timeout

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def execute(self, action: Action, nas: Nas | None) -> Attempt:
        if action.action != DISCONNECT:
            raise ActuatorError(f"{self.backend} can only hang up, not {action.action}",
                                retry=False)
        conf = _endpoint(nas, self.backend)
        started = time.perf_counter()
        try:
            attempt = await asyncio.wait_for(self._hangup(action, nas, conf), self.timeout)
        except asyncio.TimeoutError:
            attempt = Attempt.failed(f"{self.backend} did not answer within {self.timeout:g}s",
                                     result="timeout")
        except (OSError, asyncio.IncompleteReadError, aiohttp.ClientError) as exc:
            attempt = Attempt.failed(f"{self.backend}: {exc.__class__.__name__}: {exc}")
        if not attempt.latency_ms:
            attempt = replace(attempt, latency_ms=(time.perf_counter() - started) * 1000)
        return attempt

    async def _hangup(self, action, nas, conf) -> Attempt:
        raise NotImplementedError


# ---------------------------------------------------------------------- FreeSWITCH
async def _esl_read(reader: asyncio.StreamReader) -> tuple[dict[str, str], str]:
    """One event-socket message: headers up to a blank line, then Content-Length octets."""
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readuntil(b"\n")).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if headers:
                break
            continue
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    body = b""
    if "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    return headers, body.decode("utf-8", "replace")


class FreeswitchActuator(_Base):
    backend = FREESWITCH

    async def _hangup(self, action, nas, conf) -> Attempt:
        host, port = _host(nas, conf), int(conf.get("port", 8021))
        uuid = _call_id(action, conf, "uuid_attr", ("Acct-Session-Id",))
        command = f"api uuid_kill {uuid}" + (f" {conf['cause']}" if conf.get("cause") else "")
        request = {"to": f"{host}:{port}", "command": command}
        reader, writer = await asyncio.open_connection(host, port)
        try:
            headers, _ = await _esl_read(reader)
            if headers.get("Content-Type") != "auth/request":
                return Attempt.failed(f"not an event socket: {headers}", request=request)
            writer.write(f"auth {conf.get('password', '')}\n\n".encode())
            await writer.drain()
            headers, _ = await _esl_read(reader)
            reply = headers.get("Reply-Text", "")
            if not reply.startswith("+OK"):
                return Attempt.failed(f"event socket refused the login: {reply}",
                                      request=request, retry=False, result="refused")
            writer.write(f"{command}\n\n".encode())
            await writer.drain()
            while True:
                headers, body = await _esl_read(reader)
                if headers.get("Content-Type") == "api/response":
                    break
            answer = {"body": body.strip()}
            writer.write(b"exit\n\n")
            await writer.drain()
        finally:
            writer.close()
        text = body.strip()
        if text.startswith("+OK"):
            return Attempt(True, "ok", request=request, answer=answer)
        if "No such channel" in text:
            return Attempt(True, "gone", request=request, answer=answer)
        return Attempt(False, "refused", request=request, answer=answer, retry=False,
                       error=f"uuid_kill: {text}")


# ---------------------------------------------------------------------- Asterisk
async def _ami_read(reader: asyncio.StreamReader) -> dict[str, str]:
    """One manager message: "Key: value" lines up to an empty line."""
    message: dict[str, str] = {}
    while True:
        line = (await reader.readuntil(b"\n")).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if message:
                return message
            continue
        key, _, value = line.partition(":")
        message[key.strip()] = value.strip()


async def _ami_action(reader, writer, action: str, **fields) -> dict[str, str]:
    action_id = f"ocs-{next(_ids)}"
    lines = [f"Action: {action}", f"ActionID: {action_id}"] + [f"{k}: {v}" for k, v in
                                                               fields.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    while True:  # events the manager sends meanwhile are not our answer
        message = await _ami_read(reader)
        if message.get("ActionID") == action_id and "Response" in message:
            return message


class AsteriskActuator(_Base):
    backend = ASTERISK

    async def _hangup(self, action, nas, conf) -> Attempt:
        host, port = _host(nas, conf), int(conf.get("port", 5038))
        channel = _call_id(action, conf, "channel_attr",
                           ("Asterisk-Chan", "Asterisk-Unique-ID", "Acct-Session-Id"))
        fields = {"Channel": channel}
        if conf.get("cause") is not None:
            fields["Cause"] = str(conf["cause"])
        request = {"to": f"{host}:{port}", "action": "Hangup", **fields}
        reader, writer = await asyncio.open_connection(host, port)
        try:
            banner = (await reader.readuntil(b"\n")).decode("utf-8", "replace").strip()
            if "Call Manager" not in banner:
                return Attempt.failed(f"not an Asterisk manager: {banner[:80]!r}",
                                      request=request)
            login = await _ami_action(reader, writer, "Login",
                                      Username=conf.get("username", ""),
                                      Secret=conf.get("secret", ""))
            if login.get("Response") != "Success":
                return Attempt.failed(f"manager refused the login: {login.get('Message')}",
                                      request=request, retry=False, result="refused")
            answer = await _ami_action(reader, writer, "Hangup", **fields)
            try:
                await _ami_action(reader, writer, "Logoff")
            except (OSError, asyncio.IncompleteReadError):
                pass  # the manager may close first; the hang-up is what counts
        finally:
            writer.close()
        reply = {"Response": answer.get("Response"), "Message": answer.get("Message")}
        if answer.get("Response") == "Success":
            return Attempt(True, "ok", request=request, answer=reply)
        if "No such channel" in (answer.get("Message") or ""):
            return Attempt(True, "gone", request=request, answer=reply)
        return Attempt(False, "refused", request=request, answer=reply, retry=False,
                       error=f"Hangup: {answer.get('Message')}")


# ---------------------------------------------------------------------- Kamailio
class KamailioActuator(_Base):
    backend = KAMAILIO

    def __init__(self, timeout: float):
        super().__init__(timeout)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _rpc(self, url: str, method: str, params: list) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": next(_ids)}
        assert self.session is not None
        async with self.session.post(url, json=body) as resp:
            text = await resp.text()
            if resp.status >= 500 and not text.strip().startswith("{"):
                raise ActuatorError(f"JSON-RPC {method}: HTTP {resp.status}")
        try:
            reply = json.loads(text)
        except ValueError:
            raise ActuatorError(f"JSON-RPC {method}: not JSON: {text[:80]!r}") from None
        if not isinstance(reply, dict) or reply.get("id") != body["id"]:
            raise ActuatorError(f"JSON-RPC {method}: answer does not match the request")
        return reply

    async def _hangup(self, action, nas, conf) -> Attempt:
        url = conf.get("url") or (f"http://{_host(nas, conf)}:{int(conf.get('port', 5060))}"
                                  f"{conf.get('path', '/RPC')}")
        callid = _call_id(action, conf, "callid_attr", ("Acct-Session-Id",))
        request = {"to": url, "method": "dlg.dlg_list", "callid": callid}
        found = await self._rpc(url, "dlg.dlg_list", [callid])
        if "error" in found:
            error = found["error"] or {}
            answer = {"error": error}
            if error.get("code") == 404 or "not found" in str(error.get("message", "")).lower():
                return Attempt(True, "gone", request=request, answer=answer)
            return Attempt(False, "refused", request=request, answer=answer, retry=False,
                           error=f"dlg.dlg_list: {error.get('message')}")
        dialog = found.get("result")
        if isinstance(dialog, list):
            dialog = dialog[0] if dialog else None
        if not isinstance(dialog, dict) or "h_entry" not in dialog or "h_id" not in dialog:
            return Attempt(True, "gone", request=request, answer={"result": dialog})
        entry, hid = dialog["h_entry"], dialog["h_id"]
        request = {**request, "method": "dlg.end_dlg", "params": [entry, hid]}
        ended = await self._rpc(url, "dlg.end_dlg", [entry, hid])
        if "error" in ended:
            error = ended["error"] or {}
            return Attempt(False, "refused", request=request, answer={"error": error},
                           retry=False, error=f"dlg.end_dlg: {error.get('message')}")
        return Attempt(True, "ok", request=request, answer={"result": ended.get("result")})


__all__ = ["FreeswitchActuator", "AsteriskActuator", "KamailioActuator"]
