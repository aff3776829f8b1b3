"""Commands that serve models, show them and look after caches: serve, card, app, cache."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ._base import app, BACKEND_HELP, console, fail, print_notes, UserErrors







@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="with --backend onnx or auto: the folder `oncolens export` "
                                                 "wrote (default: exported in memory at start-up)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="upload size limit in MiB")] = 20.0,
    token: Annotated[Optional[str], typer.Option(envvar="ONCOLENS_API_TOKEN", show_envvar=True,
                                                 help="bearer token required by /model, /predict, /explain")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow a non-loopback address without a token")] = False,
    allowed_host: Annotated[Optional[list[str]], typer.Option(help="Host header to accept (repeatable; default: "
                                                              "loopback names, plus --host)")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(help="origin allowed by CORS (repeatable; default: "
                                                             "none)")] = None,
    max_running: Annotated[int, typer.Option(help="predictions/explanations computed at once")] = 2,
    max_waiting: Annotated[int, typer.Option(help="requests waiting in line before 503")] = 16,
    explain_timeout: Annotated[float, typer.Option(help="seconds before an explanation answers 504")] = 120.0,
    slide_root: Annotated[Optional[Path], typer.Option(help="folder of slides that POST /slides jobs may read "
                                                       "(default: slide jobs off)")] = None,
    slide_output: Annotated[Optional[Path], typer.Option(help="folder slide jobs write to (default: a "
                                                         "temporary folder)")] = None,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: none, flip, dihedral (default: the "
                                               "bundle's)")] = None,
) -> None:
    """Serve the REST API (FastAPI): /health, /model, /predict, /explain; OpenAPI docs at /docs.

    See SECURITY.md: bind to 127.0.0.1 (the default) or put it behind a reverse proxy with TLS.
    """
    import ipaddress

    import uvicorn

    from oncolens.apps.api import LOOPBACK_HOSTS, ApiSettings, create_app
    from oncolens.predictor import Predictor

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        if not insecure:
            fail(f"refusing to serve on {host} without a token: anyone who can reach it could use the model. "
                 "Set --token (or ONCOLENS_API_TOKEN), or pass --insecure if the network is trusted.")
        console.print(Text.assemble(("warning:", "bold yellow"), f" serving on {host} without a token (--insecure)"))
    hosts = tuple(allowed_host or (*LOOPBACK_HOSTS, *(() if loopback else (host,))))
    if host in ("0.0.0.0", "::") and not allowed_host:
        console.print(Text.assemble(("note:", "yellow"), " listening on every interface: pass --allowed-host with "
                                    "the name clients use, or requests with other Host headers get 400"))
    if slide_root is not None and not slide_root.is_dir():
        fail(f"--slide-root {slide_root} is not a folder")
    settings = ApiSettings(max_upload_bytes=int(max_upload_mb * 2**20), token=token, max_running=max_running,
                           max_waiting=max_waiting, explain_timeout=explain_timeout, allowed_hosts=hosts,
                           cors_origins=tuple(cors_origin or ()), slide_root=slide_root,
                           slide_output=slide_output.resolve() if slide_output is not None else None)  # fixed at start
    predictor = Predictor.from_bundle(bundle, backend=backend, onnx_path=onnx, tta=tta)
    uvicorn.run(create_app(predictor, settings), host=host, port=port)


@app.command()
def card(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the card's fields as JSON")] = False,
    intended_use: Annotated[Optional[str], typer.Option(help="set what the model is for (kept in the card)")] = None,
) -> None:
    """Print a bundle's model card: intended use, training data, metrics with CIs, calibration, robustness,
    licences and provenance (MODEL_CARD.md and model_card.json, brought up to date with the bundle's files)."""
    from oncolens.models.card import model_card, render_model_card, update_model_card

    try:
        made = update_model_card(bundle, intended_use=intended_use)
    except PermissionError:  # a read-only bundle: shown as its files say, not rewritten
        if intended_use:
            fail(f"{bundle} is read-only: the intended use cannot be kept in its card")
        made = model_card(bundle)
    if as_json:
        print(json.dumps(made, indent=2, default=str))
    else:
        console.print(render_model_card(made), markup=False, highlight=False)


@app.command("app")
def app_command(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    port: Annotated[int, typer.Option(help="port")] = 8501,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    slides: Annotated[Optional[Path], typer.Option(help="an `oncolens slide --out` folder whose slides the app "
                                                   "shows (heatmap, scores, top tiles)")] = None,
) -> None:
    """Start the Streamlit app: upload images, see prediction, probabilities, heatmap and contours."""
    if not (bundle / "bundle.json").exists():
        fail(f"{bundle} is not a bundle folder (no bundle.json)")
    if slides is not None:
        if not slides.is_dir():
            fail(f"--slides {slides} is not a folder")
        os.environ["ONCOLENS_SLIDES"] = str(slides.resolve())  # read by the app process execv starts
    script = Path(__file__).parents[1] / "streamlit_app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", host, "--server.port",
               str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false", "--",
               "--bundle", str(bundle.resolve())]
    # the CLI process becomes the Streamlit server: a signal sent to `oncolens app` (SIGTERM from a
    # service manager, Ctrl-C) reaches the server itself, and no child is left serving the port
    sys.stdout.flush()
    os.execv(sys.executable, command)


cache_app = typer.Typer(help="See and clear the feature and decoded-image caches.", no_args_is_help=True,
                        cls=UserErrors)
app.add_typer(cache_app, name="cache")
_CACHE_DIR = Annotated[Path, typer.Option("--cache-dir", help="the cache folder (train's --cache-dir)")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """Seconds of ``7d``, ``12h``, ``30m``, ``2w`` or a plain number of days."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "d")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0:
        fail(f"--older-than must be a duration such as 7d, 12h or 30m, got {text!r}")
    return value * _UNITS[unit]


@cache_app.command("info")
def cache_info(cache_dir: _CACHE_DIR = Path("runs/.feature_cache"),
               json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
    """Size and entries of the cache, per model, least recently used first.

    Folders the cache did not make (no mark: an older oncolens's cache) are listed, never counted nor cleared.

    Symbolic links are listed as links, never followed.
    """
    import time

    from oncolens.data.cache_marks import ROOT_MARK, is_cache_root
    from oncolens.training.feature_cache import cache_entries, default_cache_limit

    listed = cache_entries(cache_dir, unmarked=True)
    entries = [e for e in listed if e.marked]
    rows = [{"entry": e.path.name, "content": e.content, "what": e.what, "megabytes": round(e.bytes / 1e6, 1),
             "files": e.files, "days_unused": round((time.time() - e.last_used) / 86400, 1), "marked": e.marked}
            for e in listed]
    total = sum(e.bytes for e in entries)
    marked_root = is_cache_root(cache_dir)
    if json_out:
        console.print_json(json.dumps({"cache_dir": str(cache_dir), "marked": marked_root, "bytes": total,
                                       "entries": rows, "default_limit_bytes": default_cache_limit(cache_dir)}))
        return
    table = Table(title=f"{cache_dir}: {total / 1e6:.1f} MB in {len(entries)} entries")
    columns = ("entry", "content", "what", "megabytes", "files", "days_unused")
    for col in columns:
        table.add_column(col.replace("_", " "))
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    console.print(table)
    per_model: dict[str, int] = {}
    for e in entries:
        per_model[e.what] = per_model.get(e.what, 0) + e.bytes
    for what, size in sorted(per_model.items(), key=lambda kv: -kv[1]):
        console.print(f"{what}: {size / 1e6:.1f} MB", markup=False, highlight=False)
    if cache_dir.is_dir() and not marked_root:
        print_notes([f"{cache_dir} is not marked as an oncolens cache (no {ROOT_MARK} file): `oncolens cache clear` "
                     "refuses it. A cache written by an older oncolens has no mark: remove it by hand if you no "
                     "longer need it; runs recompute what they need"])
    elif len(listed) > len(entries):
        print_notes([f"{len(listed) - len(entries)} folder(s) or link(s) above were not made by the cache (no mark, "
                     "e.g. written by an older oncolens): not counted, never cleared; remove them by hand if unneeded"])


def _interactive() -> bool:
    """Whether someone at a terminal can answer a question."""
    return sys.stdin.isatty()


@cache_app.command("clear")
def cache_clear(cache_dir: _CACHE_DIR = Path("runs/.feature_cache"),
                older_than: Annotated[Optional[str], typer.Option("--older-than", help="only entries unused for "
                                                                  "longer than this (7d, 12h, 30m); without a "
                                                                  "terminal this runs without --yes (scheduled "
                                                                  "clean-ups)")] = None,
                yes: Annotated[bool, typer.Option("--yes", "-y", help="remove without asking")] = False) -> None:
    """Remove cache entries (all, or those unused for longer than --older-than); runs recompute what they need.

    Only what the cache made goes: a folder without its mark (a run folder, `.`, `~`) is refused, links never followed.

    It lists what it will remove, then asks on a terminal; --yes does not ask (scripts).

    Without a terminal, clearing every entry needs --yes; --older-than (scheduled clean-ups) does not.
    """
    import time

    from oncolens.training.feature_cache import cache_entries, remove_entries, stale_entries

    if not os.path.lexists(cache_dir):
        console.print(f"no cache at {cache_dir}: nothing removed", markup=False, highlight=False)
        return
    chosen = stale_entries(cache_dir, None if older_than is None else _duration(older_than))
    unmarked = [e for e in cache_entries(cache_dir, unmarked=True) if not e.marked]
    if chosen:
        console.print(f"will remove {len(chosen)} entries, {sum(e.bytes for e in chosen) / 1e6:.1f} MB from "
                      f"{cache_dir}:", markup=False, highlight=False)
        for e in chosen:
            console.print(f"  {e.path.name}  {e.content}  {e.what}  {e.bytes / 1e6:.1f} MB  "
                          f"{(time.time() - e.last_used) / 86400:.1f} days unused", markup=False, highlight=False)
        if not yes:
            if _interactive():
                if not typer.confirm("remove them?", default=False):
                    console.print("nothing removed", markup=False, highlight=False)
                    raise typer.Exit(1)
            elif older_than is None:
                fail(f"clearing every entry of {cache_dir} asks first, and there is no terminal to ask on: pass "
                     "--yes to remove them; nothing removed")
    removed = remove_entries(chosen)
    console.print(f"removed {len(removed)} entries, {sum(e.bytes for e in removed) / 1e6:.1f} MB from {cache_dir}",
                  markup=False, highlight=False)
    if unmarked:
        print_notes([f"left {len(unmarked)} folder(s) or link(s) the cache did not make (no mark; a cache written "
                     "by an older oncolens has none): remove them by hand if you no longer need them: "
                     + ", ".join(str(e.path) for e in unmarked[:5]) + (" ..." if len(unmarked) > 5 else "")])
