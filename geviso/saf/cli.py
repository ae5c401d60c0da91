"""``geviso saf list|show|retry|purge --store STORE``: the operator's view of a store and
forward store (a SQLite path or a ``postgresql://`` URL).

Output is masked as every geviso output is: PANs show their first 6 and last 4 digits,
track data and PIN blocks never. Exit 2 for a usage error or a store that cannot be
opened as it is, 1 for a runtime failure (e.g. an id that is not there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Optional

from .. import masking
from ..errors import ConfigurationError, StoreError
from .core import DEAD, PENDING, STATES, Entry
from .store import Store, Txn, open_store, sqlite_path

PROG = "geviso saf"


def add_parser(commands: Any) -> None:
    """Register ``saf`` and its subcommands in the ``geviso`` command's subparsers."""
    saf = commands.add_parser(
        "saf",
        help="inspect and manage a store and forward store",
        description="List, show, retry or purge the messages of a store and forward store.",
    )
    actions = saf.add_subparsers(dest="saf_command", metavar="ACTION")
    actions.required = True

    def action(name: str, text: str, func: Callable[[Store, argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
        parser.add_argument("--store", required=True, help="SQLite file path or postgresql:// URL")
        parser.set_defaults(func=lambda args: run(args, func))
        return parser

    listing = action("list", "list stored messages, oldest first (masked)", list_entries)
    listing.add_argument("--state", choices=[*STATES, "all"], default="all", help="(default all)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = action("show", "show one message with its fields (masked)", show_entry)
    show.add_argument("id", type=int)
    retry = action("retry", "send dead letters (or pending messages) again, at once", retry_entries)
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    purge = action("purge", "delete dead letters", purge_entries)
    purge.add_argument("ids", type=int, nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--pending", action="store_true", help="also delete the given pending messages (never sent)")


def run(args: argparse.Namespace, func: Callable[[Store, argparse.Namespace], int]) -> int:
    """Open the store, run one action, close it; errors as one line on stderr. The
    operator's commands never create a store: a missing SQLite file is a usage error
    (a typo'd path would otherwise show an empty store)."""
    path = sqlite_path(args.store)
    if path is not None and not os.path.exists(path):
        return _usage(f"store {path}: no such file")
    try:
        store = open_store(args.store)
    except ConfigurationError as exc:  # StoreRefused included: left untouched
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        return func(store, args)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def describe(entry: Entry, now: float) -> dict[str, Any]:
    """An entry as plain data for output, its message masked."""
    return {
        "id": entry.id,
        "state": entry.state,
        "mti": entry.mti,
        "stan": entry.doc.get("11", ""),
        "attempts": entry.attempts,
        "age_s": round(entry.age(now), 1),
        "next_in_s": round(max(0.0, entry.next_at - now), 1) if entry.state == PENDING else None,
        "last_code": entry.last_code,
        "reason": masking.mask_text(entry.reason),
        "message": masking.mask_doc(entry.doc),
    }


def list_entries(store: Store, args: argparse.Namespace) -> int:
    """``list``: one line per message."""
    state = None if args.state == "all" else args.state
    entries = store.call(lambda txn: txn.entries(state, max(1, args.limit)))
    now = time.time()
    if args.json:
        for entry in entries:
            print(json.dumps(describe(entry, now), sort_keys=True))
        return 0
    print(f"{'ID':>8} {'STATE':<8} {'MTI':<4} {'STAN':<6} {'TRIES':>5} {'AGE_S':>9}  REASON")
    for entry in entries:
        data = describe(entry, now)
        print(
            f"{data['id']:>8} {data['state']:<8} {data['mti']:<4} {data['stan']:<6} {data['attempts']:>5} "
            f"{data['age_s']:>9.1f}  {data['reason']}"
        )
    counts = store.call(lambda txn: txn.counts())
    print(f"pending={counts[PENDING]} dead={counts[DEAD]}")
    return 0


def show_entry(store: Store, args: argparse.Namespace) -> int:
    """``show ID``: the entry and its masked fields as JSON."""
    entry = store.call(lambda txn: txn.get(args.id))
    if entry is None:
        print(f"{PROG}: no message {args.id} in the store", file=sys.stderr)
        return 1
    print(json.dumps(describe(entry, time.time()), indent=2, sort_keys=True))
    return 0


def _ids(args: argparse.Namespace, verb: str) -> Optional[list[int]]:
    if args.all == bool(args.ids):
        raise SystemExit(_usage(f"{verb}: give message ids or --all, not both or neither"))
    return None if args.all else list(args.ids)


def _usage(text: str) -> int:
    print(f"{PROG}: {text}", file=sys.stderr)
    return 2


def retry_entries(store: Store, args: argparse.Namespace) -> int:
    """``retry``: dead letters become pending, due at once (a pending one is due at once)."""
    ids = _ids(args, "retry")
    now = time.time()

    def op(txn: Txn) -> int:
        return txn.requeue(ids, now)

    changed = store.call(op)
    print(f"{changed} message(s) due for forwarding now")
    return 0 if ids is None or changed == len(ids) else 1


def purge_entries(store: Store, args: argparse.Namespace) -> int:
    """``purge``: delete dead letters (given pending ones too with ``--pending``)."""
    ids = _ids(args, "purge")
    state = None if args.pending and ids is not None else DEAD
    deleted = store.call(lambda txn: txn.purge(ids, state))
    print(f"{deleted} message(s) deleted")
    return 0 if ids is None or deleted == len(ids) else 1


__all__ = ["add_parser"]
