"""``phpo plot ID KIND`` and ``phpo ui``: the task's plots as files, and the web view's link."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .upstream import CliError

IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")
IMAGE_TRIES = 3


def cmd_plot(args: argparse.Namespace, make_client) -> int:
    """Write the plot to ``--out`` (.html: interactive and self-contained, plotly.js inside;
    .png/.svg/.pdf: a picture, through kaleido), or print its plotly JSON with ``--json``."""
    out = Path(args.out) if args.out else Path(f"task{args.id}-{args.kind}.html")
    suffix = out.suffix.lower()
    if not args.json and suffix not in (".html", ".htm", *IMAGE_SUFFIXES):
        raise CliError(
            f"--out: '{out}' should end in .html (interactive) or one of "
            f"{', '.join(IMAGE_SUFFIXES)} (a picture)"
        )
    with make_client() as c:
        if args.json:
            print(json.dumps(c.plot_json(args.id, args.kind, args.segment)))
            return 0
        try:
            fig = c.plot(args.id, args.kind, args.segment)
        except ImportError as e:
            raise CliError(str(e)) from None
    if suffix in (".html", ".htm"):
        fig.write_html(out, include_plotlyjs=True, full_html=True)  # works offline: plotly.js is inside
    else:
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise CliError(
                f"writing {suffix} needs kaleido: pip install 'phpo[plots]' (or use --out FILE.html, "
                "which needs nothing more)"
            ) from None
        for attempt in range(IMAGE_TRIES):
            try:
                fig.write_image(out)
                break
            except Exception as e:  # noqa: BLE001 - kaleido's own errors (no Chrome, ...) are told as they are
                # on a busy machine kaleido's browser page may not have loaded its scripts yet
                # ("kaleido_scopes is not defined"): a fresh try starts a fresh page
                if attempt + 1 == IMAGE_TRIES or "is not defined" not in str(e):
                    raise CliError(
                        f"kaleido could not write {out}: {e}; --out FILE.html needs no browser"
                    ) from None
    print(out, file=sys.stdout)
    return 0


def cmd_ui(args: argparse.Namespace, make_client) -> int:
    """Print (and with --open, open) the web view's link that logs in with this token."""
    with make_client() as c:
        c.me()  # a wrong token or an unreachable server is told here, not by a blank page
        link = c.ui_link()
    print(link)
    if args.open:
        import webbrowser

        webbrowser.open(link)
    return 0
