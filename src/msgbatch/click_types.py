"""Parameter types shared by the server's and the client's commands."""

from __future__ import annotations

import click

from msgbatch.config import parse_duration


class Duration(click.ParamType[float]):
    """`500ms`, `90s`, `15m`, `24h`, `29d`, or plain seconds."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
