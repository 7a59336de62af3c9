"""``ketch find`` and ``image``: the images ketch can launch, builds and caches."""

from __future__ import annotations

import argparse
import sys

from ketch.api import routes
from ketch.cli import client, stream
from ketch.errors import InvalidArgument

BUILDABLE = ("tiny", "debian-12")  # images 'ketch image build' makes


def cmd_find(args: argparse.Namespace) -> int:
    from ketch.cli import output

    query = {"query": args.query} if args.query else {}
    if args.show_unsupported:
        query["show_unsupported"] = "true"
    if args.force_update:
        query["force_update"] = "true"
    # --only-images changes nothing: ketch has no blueprints, every result is an image.
    doc = client().call(routes.FIND, query=query or None)
    sys.stdout.write(output.find_output(doc, args.format))
    for error in dict.fromkeys(output.find_errors(doc)):  # each warning once, on stderr
        print(f"warning: {error}", file=sys.stderr)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import output

    if args.image_command == "build":
        if args.name not in BUILDABLE:
            raise InvalidArgument(
                f"unknown image '{args.name}'", hint="ketch can build: " + ", ".join(BUILDABLE)
            )
        result = stream(routes.BUILD, m.BuildBody(name=args.name, force=args.force))
        print(f"Built: {result.id} ({result.disk})")
        return 0
    if args.image_command == "prune":
        pruned = client().call(routes.PRUNE, m.PruneBody(days=args.days))
        for e in pruned.removed:
            print(f"Removed {e.digest[:12]} ({output.human(e.size)})")
        for t in pruned.templates:
            print(f"Removed template {t.key} ({output.human(t.size)})")
        return 0
    if args.image_command == "warm":
        body = m.WarmBody(
            image=args.name, cpus=args.cpus, memory=args.memory, firmware=args.firmware
        )
        t = stream(routes.WARM, body)
        print(f"Template: {t.key} ({output.human(t.size)}, made in {t.build_seconds:g} s)")
        return 0
    doc = client().call(routes.IMAGES)
    if args.format != "table":
        fmt = output.to_json if args.format == "json" else output.to_yaml
        sys.stdout.write(fmt(output.plain(doc)))
        return 0
    rows = [
        [
            e.digest if e.source == "built" else e.digest[:12],
            output.human(e.size),
            ",".join(e.owners) or "--",
            e.source or "--",
        ]
        for e in doc.images
    ]
    sys.stdout.write(output.table(["Image", "Size", "Used by", "Source"], rows))
    if doc.templates:
        trows = [
            [
                t.key,
                t.image,
                f"{t.cpus} CPU, {output.human(t.memory)}"
                + (", UEFI" if t.firmware == "uefi" else ""),
                output.human(t.size),
                "ready" if t.current else "stale",
            ]
            for t in doc.templates
        ]
        sys.stdout.write("\n" + output.table(["Template", "Image", "For", "Size", "State"], trows))
    return 0
