"""`prover config`: the run configuration, every field with its default and meaning.

    prover config show [--json]             defaults, each with its description
    prover --config run.toml config show    the values that file resolves to, beside the defaults
"""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.markup import escape
from rich.table import Table

from prover.cli.common import JsonFlag, config_from_context, console, print_json

app = typer.Typer(
    help="The run configuration (--config run.toml): every field with its value, default and "
    "description (show).",
    no_args_is_help=True,
)


def _fields(model: type[BaseModel], value: BaseModel, prefix: str = "") -> list[dict[str, Any]]:
    """One row per leaf field, in declaration order: dotted key, resolved value, default, help."""
    rows: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        current = getattr(value, name)
        if isinstance(current, BaseModel):
            rows += _fields(type(current), current, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        rows.append({"key": key, "value": to_jsonable_python(current),
                     "default": to_jsonable_python(default), "description": field.description or ""})
    return rows


@app.command()
def show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Print every configuration field: its key (as in the TOML file), the value this run would
    use (defaults < --config file), its default and what it means."""
    from prover.config import ProverConfig

    config = config_from_context(ctx)
    rows = _fields(ProverConfig, config)
    if as_json:
        print_json({"config_file": str((ctx.find_root().obj or {}).get("config_file") or "") or None,
                    "fields": rows})
        return
    table = Table(show_header=True, header_style="bold", show_lines=False)
    for column in ("key", "value", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = "" if row["value"] == row["default"] else repr(row["value"])
        table.add_row(escape(row["key"]), escape(value), escape(repr(row["default"])),
                      escape(row["description"]))
    console.print(table)
