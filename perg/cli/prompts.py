"""``perg prompts render``: show the exact messages a protocol sends for one row."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

import orjson

from perg.config import Settings
from perg.dataset import DATASET_FILE, Item, load_dataset, select_rows
from perg.errors import InputError
from perg.protocol import (
    METHODS,
    SETTINGS,
    CallKind,
    ChatMessage,
    Method,
    Protocol,
    RoleLayout,
    Setting,
    load_protocol,
)

BASELINE: Literal["baseline"] = "baseline"
EXTRACTOR: Literal["extractor"] = "extractor"
EXTRACTOR_LORA: Literal["extractor_lora"] = "extractor_lora"
CallName = Method | Literal["baseline", "extractor"]
LAYOUTS = ("system", "merged", "inst")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("prompts", help="inspect the prompts of a protocol")
    commands = parser.add_subparsers(dest="prompts_command", required=True)
    render = commands.add_parser("render", help="render the messages of one call for one row")
    render.add_argument("--row", type=int, default=0, help="0-based row id (default 0)")
    render.add_argument("--setting", choices=SETTINGS, default="relevant")
    render.add_argument(
        "--method",
        choices=(*METHODS, BASELINE, EXTRACTOR, EXTRACTOR_LORA),
        required=True,
        help="a method, the no-preference baseline, or an answer extractor "
        "(extractor: the LLM extractor's messages; extractor_lora: the 1-token completion prompt; "
        "both map --response to an option letter)",
    )
    render.add_argument("--protocol", default="paper", help="paper, strict, or a protocol file")
    render.add_argument(
        "--layout", choices=LAYOUTS, default="system", help="inst: one raw [INST] prompt"
    )
    render.add_argument("--stage", type=int, choices=(1, 2), default=1)
    render.add_argument(
        "--response",
        default="<RESPONSE>",
        help="earlier response used by stage 2, or the response an extractor reads",
    )
    render.add_argument("--data", type=Path, help="data folder (default: PERG_DATA_DIR)")
    render.add_argument("--json", action="store_true", help="print JSON")
    render.set_defaults(func=run)


def render_messages(
    protocol: Protocol,
    item: Item,
    method: CallName,
    setting: Setting,
    *,
    stage: int = 1,
    response: str = "<RESPONSE>",
    layout: RoleLayout = "system",
) -> list[ChatMessage]:
    """The messages of one call: a method's stage 1 or 2, the no-preference baseline, or the
    LLM answer extractor reading ``response``."""
    if method == EXTRACTOR:
        return protocol.extractor_llm_messages(item, response, layout)
    if stage == 2 and method == "self_critic":
        return protocol.critic_messages(item, setting, response, layout)
    if stage == 2 and method == "pref_aligner":
        return protocol.aligner_messages(item, setting, response)
    if stage == 2:
        raise InputError(f"method {method} has no stage 2")
    if method == BASELINE:
        return protocol.baseline_messages(item, layout)
    return protocol.answer_messages(item, setting, method, layout)


def run(args: argparse.Namespace, settings: Settings) -> int:
    data = args.data or settings.data_dir
    try:
        protocol = load_protocol(args.protocol, data)
        dataset = load_dataset(data / DATASET_FILE)
        (item,) = select_rows(dataset, f"{args.row}-{args.row}")
        if args.method == EXTRACTOR_LORA:
            prompt = protocol.extractor_prompt(item, args.response)
            out = orjson.dumps({"prompt": prompt}).decode() if args.json else prompt
            sys.stdout.write(out + "\n")
            return 0
        messages = render_messages(
            protocol,
            item,
            args.method,
            args.setting,
            stage=args.stage,
            response=args.response,
            layout=args.layout,
        )
    except InputError:
        raise
    except ValueError as exc:  # the protocol file or a call that does not exist: input
        raise InputError(str(exc)) from exc
    if args.layout == "inst":  # paper's Pref-Aligner stage 2: the published Janus call
        aligner = args.method == "pref_aligner" and args.stage == 2
        prompt = protocol.raw_prompt(messages, CallKind.ALIGN if aligner else CallKind.ANSWER)
        out = orjson.dumps({"prompt": prompt}).decode() if args.json else prompt
    elif args.json:
        out = orjson.dumps({"messages": messages}, option=orjson.OPT_INDENT_2).decode()
    else:
        out = "\n".join(f"--- {m['role']} ---\n{m['content']}" for m in messages)
    sys.stdout.write(out + "\n")
    return 0
