"""A tiny local stand-in for Discord's HTTP API, answering two operations of the real document
(`tests/fakes/openapi/real/discord-openapi.json`) with bodies that match its schemas:

- `GET /api/v10/users/@me` (`get_my_user`): the bot's own user (`UserPIIResponse`);
- `POST /api/v10/channels/{channel_id}/messages` (`create_message`): the created message
  (`MessageResponse`), its `content` taken from the JSON request body.

Both require the bot token the way Discord does (`BotToken`, an `apiKey` in the
`Authorization` header: `Bot <token>`); a wrong or missing one is answered 401 with Discord's
error body, an unknown route 404. Every request is recorded in `requests`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.http_fake import FakeHttpServer

BASE_PATH = "/api/v10"
"""Where the API's paths are (the document's server is `https://discord.com/api/v10`)."""

BOT_USER: dict[str, Any] = {
    "id": "1100000000000000001",
    "username": "ferryman-bot",
    "avatar": None,
    "discriminator": "0",
    "public_flags": 0,
    "flags": 0,
    "bot": True,
    "banner": None,
    "accent_color": None,
    "global_name": None,
    "primary_guild": None,
    "mfa_enabled": False,
    "locale": "en-US",
    "premium_type": 0,
    "email": None,
    "verified": True,
}
"""`GET /users/@me`'s body: every property `UserPIIResponse` requires (and `UserResponse`,
a message's `author`), and a few more."""


@dataclass
class DiscordRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class DiscordOptions:
    """The fake's scenario: the bot token requests must send (`Authorization: Bot <token>`)."""

    token: str = "bot-token"


class DiscordApi(FakeHttpServer):
    """The fake API on 127.0.0.1 (a free port).

    Args:
        token: the bot token; requests must send `Authorization: Bot <token>`.
    """

    scenario_type = DiscordOptions

    def __init__(self, token: str) -> None:
        super().__init__(DiscordOptions(token))
        self.token = token
        self.requests: list[DiscordRequest]
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The API's base URL (the registry entry's `base_url`)."""
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    async def _dispatch(self, request: web.Request) -> web.Response:
        record = DiscordRequest(
            method=request.method,
            path=request.raw_path,
            headers=dict(request.headers),
            body=await request.read(),
        )
        self.requests.append(record)
        response = self._answer(request.method, request.raw_path.split("?", 1)[0], record)
        record.status = response.status
        return response

    def _answer(self, method: str, path: str, record: DiscordRequest) -> web.Response:
        if record.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, "401: Unauthorized")
        segments = path.removeprefix(BASE_PATH).split("/")[1:]
        if method == "GET" and segments == ["users", "@me"]:
            return web.json_response(BOT_USER)
        if method == "POST" and len(segments) == 3 and segments[::2] == ["channels", "messages"]:
            return self._create_message(segments[1], record.body)
        return _error(404, "404: Not Found")

    def _create_message(self, channel_id: str, body: bytes) -> web.Response:
        try:
            sent = json.loads(body)
        except ValueError:
            return _error(400, "400: Bad Request", code=50109)
        if not isinstance(sent, dict) or not isinstance(sent.get("content"), str):
            return _error(400, "Cannot send an empty message", code=50006)
        content: str = sent["content"]  # pyright: ignore[reportUnknownVariableType]
        message = {
            "type": 0,
            "content": content,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "flags": 0,
            "components": [],
            "id": str(1200000000000000000 + next(self._ids)),
            "channel_id": channel_id,
            "author": {k: BOT_USER[k] for k in _AUTHOR_FIELDS},
            "pinned": False,
            "mention_everyone": False,
            "tts": bool(sent.get("tts", False)),  # pyright: ignore[reportUnknownArgumentType]
        }
        return web.json_response(message)


_AUTHOR_FIELDS = (
    "id",
    "username",
    "avatar",
    "discriminator",
    "public_flags",
    "flags",
    "bot",
    "banner",
    "accent_color",
    "global_name",
    "primary_guild",
)
"""The `UserResponse` part of the bot user (a message's `author`)."""


def _error(status: int, message: str, code: int = 0) -> web.Response:
    """Discord's error body (`{"message", "code"}`)."""
    return web.json_response({"message": message, "code": code}, status=status)
