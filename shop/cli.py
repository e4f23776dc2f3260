"""``shopctl``: the shop from the command line, on top of ``shop.client``.

    shopctl [--cluster URL,URL,...] [--json] status
    shopctl products list [--category C] [--q TEXT] [--in-stock true|false] [--limit N]
    shopctl products get ID
    shopctl products create --name N --price-cents P --stock S [--category C] [--sku K]
    shopctl products update ID [--stock S] [...] [--if-match VERSION]
    shopctl products delete ID
    shopctl customers list|get|create|update|delete ...   (--name, --email, --address)
    shopctl orders create --customer-id C --item PRODUCT:QTY [--item ...]
    shopctl orders update ID --status paid|shipped|cancelled   (or --item ... to replace)
    shopctl orders list [--customer-id C] [--status S] | get ID | delete ID
    shopctl members list
    shopctl members add ID --address HOST:PORT [--http-url URL] [--uuid HEX]
                        [--expect-config-index N]
    shopctl members promote ID | remove ID [--expect-config-index N]
    shopctl leader transfer [ID]

Membership changes and leadership transfers need the cluster secret: ``--secret-file
FILE`` or $TXRAFT_SECRET.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, TextIO
from urllib.parse import quote

from twisted.internet import defer

from shop.client import DEFAULT_URL, ShopClient, ShopError

FIELDS = {
    "products": (("name", str), ("description", str), ("category", str), ("sku", str),
                 ("price_cents", int), ("stock", int)),
    "customers": (("name", str), ("email", str), ("address", str)),
}
REQUIRED = {"products": ("name", "price_cents", "stock"), "customers": ("name", "email")}
FILTERS = {
    "products": (("category", str), ("q", str), ("min_price_cents", int),
                 ("max_price_cents", int), ("in_stock", ("true", "false"))),
    "customers": (("q", str), ("email", str)),
    "orders": (("customer_id", str), ("status", ("pending", "paid", "shipped", "cancelled"))),
}
COLUMNS = {
    "products": (("ID", "id"), ("NAME", "name"), ("PRICE", "price_cents"), ("STOCK", "stock"),
                 ("CATEGORY", "category"), ("SKU", "sku"), ("VERSION", "version")),
    "customers": (("ID", "id"), ("NAME", "name"), ("EMAIL", "email"), ("VERSION", "version")),
    "orders": (("ID", "id"), ("CUSTOMER", "customer_id"), ("STATUS", "status"),
               ("TOTAL", "total_cents"), ("LINES", "items"), ("VERSION", "version")),
}
MEMBER_COLUMNS = (("ID", "id"), ("ROLE", "role"), ("ADDRESS", "address"),
                  ("HTTP", "http_url"), ("MATCH", "match_index"), ("LAG", "lag"),
                  ("STATE", "state"), ("LOST LOG", "lost_log"))
STATUS_COLUMNS = (("NODE", "id"), ("ROLE", "role"), ("TERM", "term"), ("LEADER", "leader_id"),
                  ("COMMIT", "commit_index"), ("APPLIED", "applied_index"),
                  ("LAST LOG", "last_log_index"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _item(text: str):
    product_id, sep, quantity = text.rpartition(":")
    if not sep or not product_id or not quantity.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError("an item is PRODUCT_ID:QUANTITY, got %r" % (text,))
    return product_id, int(quantity)


def _json_object(text: str):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError("--data is not JSON: %s" % (e,))
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--data must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shopctl", description="Use a txraft shop cluster.")
    top.add_argument("--cluster", default=DEFAULT_URL,
                     help="comma-separated node URLs (default %(default)s)")
    top.add_argument("--json", action="store_true", help="print JSON instead of tables")
    top.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="per-attempt timeout (default %(default)s)")
    commands = top.add_subparsers(dest="resource", required=True, metavar="COMMAND")
    commands.add_parser("status", help="roles, terms and indexes of every node")
    for resource in ("products", "customers", "orders"):
        sub = commands.add_parser(resource, help="%s: list, get, create, update, delete" % (resource,))
        actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list")
        for name, kind in FILTERS[resource]:
            if isinstance(kind, tuple):
                listing.add_argument(_flag(name), dest=name, choices=kind)
            else:
                listing.add_argument(_flag(name), dest=name, type=kind)
        listing.add_argument("--limit", type=int)
        listing.add_argument("--offset", type=int)
        listing.add_argument("--stale", action="store_true",
                             help="read this node's replica (may lag the leader)")
        get = actions.add_parser("get")
        get.add_argument("id")
        get.add_argument("--stale", action="store_true")
        create = actions.add_parser("create")
        update = actions.add_parser("update", help="change fields (PATCH); for orders "
                                    "--status moves the order, --item replaces its items")
        update.add_argument("id")
        update.add_argument("--if-match", type=int, metavar="VERSION")
        delete = actions.add_parser("delete")
        delete.add_argument("id")
        delete.add_argument("--if-match", type=int, metavar="VERSION")
        for action in (create, update, delete):
            action.add_argument("--idempotency-key")
        if resource == "orders":
            create.add_argument("--customer-id", required=True)
            create.add_argument("--item", type=_item, action="append", required=True,
                                metavar="PRODUCT:QTY")
            update.add_argument("--status", choices=("paid", "shipped", "cancelled"))
            update.add_argument("--item", type=_item, action="append", metavar="PRODUCT:QTY")
            update.add_argument("--customer-id")
        else:
            for action in (create, update):
                for name, kind in FIELDS[resource]:
                    action.add_argument(_flag(name), dest=name, type=kind)
                action.add_argument("--data", type=_json_object, metavar="JSON",
                                    help="fields as a JSON object (flags win)")
            update.add_argument("--clear", action="append", default=[], metavar="FIELD",
                                help="set an optional field to null")
    members = commands.add_parser("members", help="the cluster's members: list, add, "
                                  "promote, remove (docs/operations.md)")
    member_actions = members.add_subparsers(dest="action", required=True, metavar="ACTION")
    member_actions.add_parser("list")
    add = member_actions.add_parser("add", help="add a learner (promoted once caught up)")
    add.add_argument("id")
    add.add_argument("--address", required=True, metavar="HOST:PORT",
                     help="its Raft address (UDP)")
    add.add_argument("--http-url", metavar="URL")
    add.add_argument("--uuid", metavar="HEX",
                     help="bind it to this data directory's uuid (its /raft/status "
                          "node_uuid); default: the first one the leader hears")
    promote = member_actions.add_parser("promote", help="make a caught-up learner a voter")
    promote.add_argument("id")
    remove = member_actions.add_parser("remove", help="remove a voter or a learner")
    remove.add_argument("id")
    for action in (add, promote, remove):
        action.add_argument("--expect-config-index", type=int, metavar="N",
                            help="refuse unless the configuration is still the one at N")
    leader = commands.add_parser("leader", help="hand the leadership over "
                                 "(docs/operations.md)")
    leader_actions = leader.add_subparsers(dest="action", required=True, metavar="ACTION")
    transfer = leader_actions.add_parser(
        "transfer", help="make ID (default: the most caught-up voter) the leader; "
        "returns once it leads")
    transfer.add_argument("id", nargs="?")
    for action in (add, promote, remove, transfer):
        action.add_argument("--secret-file", metavar="FILE",
                            help="the cluster secret (default: $TXRAFT_SECRET)")
    return top


def _secret(args) -> str:
    if args.secret_file:
        try:
            with open(args.secret_file) as f:
                secret = f.read().strip()
        except OSError as e:
            raise SystemExit("shopctl: cannot read --secret-file %s: %s"
                             % (args.secret_file, e.strerror))
    else:
        secret = os.environ.get("TXRAFT_SECRET", "").strip()
    if not secret:
        raise SystemExit("shopctl: membership changes and leadership transfers need the "
                         "cluster secret: "
                         "--secret-file FILE or TXRAFT_SECRET")
    return secret


async def _members(args, client: ShopClient) -> Any:
    if args.action == "list":
        return await client.members()
    secret = _secret(args)
    if args.action == "add":
        body = {"id": args.id, "address": args.address}
        if args.http_url:
            body["http_url"] = args.http_url
        if args.uuid:
            body["uuid"] = args.uuid
        return await client.change_members("POST", "/raft/members", secret, body,
                                           args.expect_config_index)
    path = "/raft/members/" + quote(args.id, safe="")
    if args.action == "promote":
        path += "/promote"
    return await client.change_members("POST" if args.action == "promote" else "DELETE",
                                       path, secret, None, args.expect_config_index)


def _fields(args, resource: str) -> dict:
    fields = dict(args.data or {})
    for name, _ in FIELDS[resource]:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    for name in getattr(args, "clear", ()):
        fields[name] = None
    return fields


async def execute(args, client: ShopClient) -> Any:
    """Run the parsed command; the result to print."""
    resource = args.resource
    if resource == "status":
        return await client.cluster_status()
    if resource == "members":
        return await _members(args, client)
    if resource == "leader":
        body = {"id": args.id} if args.id else {}
        return await client.change_members("POST", "/raft/leader", _secret(args), body)
    action = args.action
    if action == "list":
        params = {name: getattr(args, name) for name, _ in FILTERS[resource]}
        params.update(limit=args.limit, offset=args.offset,
                      consistency="stale" if args.stale else None)
        return await client.list(resource, **params)
    if action == "get":
        return await client.get(resource, args.id, "stale" if args.stale else None)
    if action == "delete":
        await client.delete(resource, args.id, args.if_match, args.idempotency_key)
        return {"deleted": args.id}
    if resource == "orders":
        items = [{"product_id": p, "quantity": q} for p, q in (args.item or ())]
        if action == "create":
            return await client.create("orders", {"customer_id": args.customer_id, "items": items},
                                       args.idempotency_key)
        if args.item:
            body = {"items": items}
            if args.customer_id:
                body["customer_id"] = args.customer_id
            return await client.replace("orders", args.id, body, args.if_match,
                                        args.idempotency_key)
        if not args.status:
            raise SystemExit("shopctl: orders update needs --status or --item")
        return await client.update("orders", args.id, {"status": args.status}, args.if_match,
                                   args.idempotency_key)
    fields = _fields(args, resource)
    if action == "create":
        missing = [f for f in REQUIRED[resource] if f not in fields]
        if missing:
            raise SystemExit("shopctl: %s create needs %s" % (
                resource, ", ".join(_flag(f) for f in missing)))
        return await client.create(resource, fields, args.idempotency_key)
    return await client.update(resource, args.id, fields, args.if_match, args.idempotency_key)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join("%s:%s" % (line["product_id"], line["quantity"]) for line in value)
    return str(value)


def table(headers: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def render(args, result: Any) -> str:
    """Human-readable output of a command's result."""
    if args.resource == "status":
        rows, problems = [], []
        for url, status in result:
            if isinstance(status, dict):
                rows.append([url] + [_cell(status.get(key)) for _, key in STATUS_COLUMNS])
            else:
                rows.append([url, "-", "unreachable"] + ["-"] * (len(STATUS_COLUMNS) - 2))
                problems.append("%s: %s" % (url, getattr(status, "message", status)))
        return "\n".join([table(["URL"] + [h for h, _ in STATUS_COLUMNS], rows)] + problems)
    if args.resource == "leader":
        return "%s leads term %d (was %s)" % (result["leader"], result["term"],
                                              result["previous_leader"])
    if args.resource == "members":
        if args.action != "list":
            return "%s %s: configuration at index %d" % (args.action, args.id,
                                                         result["config_index"])
        rows = [[_cell(m.get(key)) for _, key in MEMBER_COLUMNS] for m in result["members"]]
        return "\n".join([
            table([h for h, _ in MEMBER_COLUMNS], rows),
            "configuration at index %d, leader %s%s" % (
                result["config_index"], result["leader_id"] or "unknown",
                "" if result["from_leader"] else " (asked a follower: no progress)")])
    if args.action == "list":
        columns = COLUMNS[args.resource]
        rows = [[_cell(item.get(key)) for _, key in columns] for item in result["items"]]
        shown = "%d of %d (offset %d)" % (len(rows), result["total"], result["offset"])
        return table([h for h, _ in columns], rows) + "\n" + shown
    if args.action == "delete":
        return "deleted %s" % (result["deleted"],)
    width = max(len(k) for k in result)
    return "\n".join("%s  %s" % (k.ljust(width), _cell(v)) for k, v in result.items())


def _dump(result: Any) -> str:
    if isinstance(result, list):  # status: (url, dict or error)
        result = [{"url": url, "status": s} if isinstance(s, dict)
                  else {"url": url, "error": str(s)} for url, s in result]
    return json.dumps(result, indent=2, sort_keys=False)


async def run(argv: Sequence[str], make_client: Callable[..., ShopClient],
              out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Parse ``argv``, run the command, print; return the exit status."""
    args = parser().parse_args(argv)
    urls = [u.strip() for u in args.cluster.split(",") if u.strip()]
    client = make_client(urls, timeout_seconds=args.timeout)
    try:
        result = await execute(args, client)
    except ShopError as e:
        if args.json:
            out.write(json.dumps(e.body if isinstance(e.body, dict) else
                                 {"error": {"code": e.code, "message": e.message}}, indent=2) + "\n")
        err.write("shopctl: %s\n" % (e,))
        return 1
    out.write((_dump(result) if args.json else render(args, result)) + "\n")
    if args.resource == "status" and not any(isinstance(s, dict) for _, s in result):
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``shopctl`` console script."""
    from twisted.internet import task

    argv = sys.argv[1:] if argv is None else list(argv)

    def go(reactor):
        def make_client(urls, **kwargs):
            return ShopClient(urls, clock=reactor, **kwargs)

        d = defer.ensureDeferred(run(argv, make_client))

        def done(status):
            if status:
                raise SystemExit(status)

        return d.addCallback(done)

    task.react(go)


if __name__ == "__main__":
    main()
