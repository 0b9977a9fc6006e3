"""``perg prompts render``: show the exact messages a protocol sends for one row."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from perg.config import default_data_dir
from perg.dataset import DATASET_FILE, load_dataset, select_rows
from perg.protocol import (
    METHODS,
    SETTINGS,
    ChatMessage,
    Method,
    Protocol,
    RoleLayout,
    Setting,
    load_protocol,
    render_raw_prompt,
)

BASELINE = "baseline"
LAYOUTS = ("system", "merged", "inst")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("prompts", help="inspect the prompts of a protocol")
    commands = parser.add_subparsers(dest="prompts_command", required=True)
    render = commands.add_parser("render", help="render the messages of one call for one row")
    render.add_argument("--row", type=int, required=True, help="0-based row id")
    render.add_argument("--setting", choices=SETTINGS, default="relevant")
    render.add_argument("--method", choices=(*METHODS, BASELINE), required=True)
    render.add_argument("--protocol", default="paper", help="paper, strict, or a protocol file")
    render.add_argument(
        "--layout", choices=LAYOUTS, default="system", help="inst: one raw [INST] prompt"
    )
    render.add_argument("--stage", type=int, choices=(1, 2), default=1)
    render.add_argument("--response", default="<RESPONSE>", help="earlier response used by stage 2")
    render.add_argument("--data", type=Path, help="data folder (default: PERG_DATA_DIR)")
    render.add_argument("--json", action="store_true", help="print JSON")
    render.set_defaults(func=run)


def render_messages(
    protocol: Protocol,
    args: argparse.Namespace,
    layout: RoleLayout,
) -> list[ChatMessage]:
    """The messages of the call that ``args`` names (method, setting, stage, row)."""
    dataset = load_dataset(args.data / DATASET_FILE if args.data else None)
    (item,) = select_rows(dataset, f"{args.row}-{args.row}")
    method: Method | str = args.method
    setting: Setting = args.setting
    if args.stage == 2:
        if method == "self_critic":
            return protocol.critic_messages(item, setting, args.response, layout)
        if method == "pref_aligner":
            return protocol.aligner_messages(item, setting, args.response)
        raise ValueError(f"method {method} has no stage 2")
    if method == BASELINE:
        return protocol.baseline_messages(item, layout)
    return protocol.answer_messages(item, setting, args.method, layout)


def run(args: argparse.Namespace) -> int:
    try:
        protocol = load_protocol(args.protocol, args.data or default_data_dir())
        layout: RoleLayout = "merged" if args.layout == "merged" else "system"
        messages = render_messages(protocol, args, layout)
    except ValueError as exc:
        print(f"perg prompts render: {exc}", file=sys.stderr)
        return 2
    if args.layout == "inst":
        prompt = render_raw_prompt(messages)
        out = orjson.dumps({"prompt": prompt}).decode() if args.json else prompt
    elif args.json:
        out = orjson.dumps({"messages": messages}, option=orjson.OPT_INDENT_2).decode()
    else:
        out = "\n".join(f"--- {m['role']} ---\n{m['content']}" for m in messages)
    sys.stdout.write(out + "\n")
    return 0
