"""Smoke test against a real, running ComfyUI (a script, not collected by pytest).

Checks that ``/object_info`` lists the given node ids, optionally that ``/workflow_templates``
lists a pack's workflows, then queues prompts through ``/prompt`` and polls ``/history`` until each
finishes. A UI workflow is converted with this repo's converter, using the server's own
``/object_info``. It can also start (and afterwards stop) the server itself.

    # against a server that is already running
    python tests/comfyui_smoke.py --url http://127.0.0.1:8199 --core-demo
    # start ComfyUI, check our nodes and templates, run a workflow, stop it
    python tests/comfyui_smoke.py --start /work/comfyui --python /work/comfyui-venv/bin/python \\
        --port 8199 --nodes ExpPortraitLoadHead --templates ComfyUI-ExpPortrait \\
        --workflow workflows/x.json --core-demo

Exit status 0 when every check passed; each failure is printed as one line starting ``FAIL``.
Only the standard library is used (plus this repo's ``expportrait_core.workflow`` for
``--workflow``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

#: A core-node-only prompt: a 64x64 red image saved by SaveImage.
CORE_DEMO_PROMPT: Dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF0000}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "expportrait_smoke"}},
}


def http_json(url: str, data: Optional[Dict[str, Any]] = None, timeout: float = 30.0) -> Any:
    """GET (or POST ``data`` as JSON) and decode the JSON answer. HTTP errors return their body."""
    body = None if data is None else json.dumps(data).encode("utf-8")
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode("utf-8")
            return json.loads(text) if text.strip() else {}
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            return {"http_error": e.code, **json.loads(text)}
        except json.JSONDecodeError:
            return {"http_error": e.code, "body": text[:2000]}


def wait_for_server(url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            http_json(f"{url}/system_stats", timeout=5)
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1.0)
    return False


def queue_and_wait(url: str, prompt: Dict[str, Any], timeout: float, label: str) -> List[str]:
    """Queue ``prompt``; poll ``/history/<id>`` until it is done. Returns failure lines."""
    client_id = uuid.uuid4().hex
    res = http_json(f"{url}/prompt", {"prompt": prompt, "client_id": client_id})
    if "prompt_id" not in res:
        lines = [f"FAIL {label}: /prompt refused it: {json.dumps(res.get('error', res))[:500]}"]
        for nid, err in (res.get("node_errors") or {}).items():
            for e in err.get("errors", []):
                lines.append(f"FAIL {label}: node {nid} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        return lines
    pid = res["prompt_id"]
    print(f"{label}: queued as {pid}")
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = http_json(f"{url}/history/{urllib.parse.quote(pid)}")
        entry = hist.get(pid) if isinstance(hist, dict) else None
        if entry:
            status = entry.get("status") or {}
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                if status.get("status_str") != "success":
                    msgs = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
                    detail = msgs[0][1].get("exception_message", "") if msgs else json.dumps(status)[:500]
                    return [f"FAIL {label}: execution failed: {detail.strip()}"]
                outs = entry.get("outputs") or {}
                files = [f"{i.get('subfolder', '')}/{i.get('filename')}".lstrip("/")
                         for o in outs.values() for k in ("images", "gifs", "videos", "audio")
                         for i in (o.get(k) or []) if isinstance(i, dict)]
                print(f"{label}: finished in {time.time() - t0:.1f} s; outputs from nodes "
                      f"{sorted(outs)}; files {files}")
                return []
        time.sleep(0.5)
    return [f"FAIL {label}: not finished after {timeout:.0f} s"]


def _canon(x: Any) -> Any:
    """JSON value with sorted keys and floats that equal ints as ints (JS has one number type)."""
    if isinstance(x, dict):
        return {k: _canon(v) for k, v in sorted(x.items())}
    if isinstance(x, list):
        return [_canon(v) for v in x]
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def prompt_diff(theirs: Dict[str, Any], ours: Dict[str, Any], limit: int = 12) -> List[str]:
    """Short description of how two API prompts differ (frontend's first, ours second)."""
    out: List[str] = []
    for nid in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(nid), ours.get(nid)
        if a is None or b is None:
            out.append(f"node {nid} only in {'ours' if a is None else 'frontend'} "
                       f"({(a or b).get('class_type')})")
            continue
        for key in ("class_type", "_meta"):
            if a.get(key) != b.get(key):
                out.append(f"node {nid} {key}: frontend {a.get(key)!r} ours {b.get(key)!r}")
        ia, ib = a.get("inputs", {}), b.get("inputs", {})
        for k in sorted(set(ia) | set(ib)):
            if ia.get(k, "<absent>") != ib.get(k, "<absent>"):
                out.append(f"node {nid} ({a.get('class_type')}) input {k}: frontend "
                           f"{json.dumps(ia.get(k, '<absent>'))[:80]} ours {json.dumps(ib.get(k, '<absent>'))[:80]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def frontend_check(url: str, workflows: List[Path], info: Dict[str, Any], shots: Optional[Path],
                   browser: Optional[str]) -> List[str]:
    """Load each UI workflow in the real frontend (headless Chromium through Playwright), compare
    the frontend's own ``app.graphToPrompt()`` with ``ui_to_api``, and optionally screenshot it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return ["FAIL --frontend-check needs playwright (pip install playwright) and a Chromium"]
    from expportrait_core.workflow import ui_to_api

    failures: List[str] = []
    # skip the first-run tutorial so screenshots show the graph
    http_json(f"{url}/settings", {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": False,
                                  "Comfy.Workflow.ShowMissingModelsWarning": False,
                                  "Comfy.Minimap.Visible": False,
                                  "LiteGraph.Canvas.MinFontSizeForLOD": 1})  # keep text when zoomed out
    with sync_playwright() as p:
        kw = {"executable_path": browser} if browser else {}
        b = p.chromium.launch(**kw)
        page = b.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(url)
        page.wait_for_function("window.app && window.app.rootGraph", timeout=120_000)
        for wf in workflows:
            ui = json.loads(wf.read_text(encoding="utf-8"))
            out = page.evaluate("""async (wf) => {
                await window.app.loadGraphData(wf, true, true, null,
                    {showMissingNodesDialog: false, showMissingModelsDialog: false});
                const r = await window.app.graphToPrompt();
                return r.output;
            }""", ui)
            mine = ui_to_api(ui, info)
            if _canon(out) != _canon(mine):
                failures.append(f"FAIL {wf}: ui_to_api differs from the frontend's graphToPrompt: "
                                + "; ".join(prompt_diff(_canon(out), _canon(mine))))
            else:
                print(f"{wf}: ui_to_api == frontend graphToPrompt ({len(out)} nodes)")
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                page.evaluate("() => { window.app.canvas.deselectAll?.(); "
                              "window.app.canvas.fitViewToSelectionAnimated({duration: 100}); }")
                page.wait_for_timeout(1500)
                target = shots / (wf.stem + ".png")
                page.screenshot(path=str(target))
                print(f"screenshot {target}")
        b.close()
    return failures


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="server URL (default http://127.0.0.1:PORT)")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--start", metavar="COMFYUI_DIR", help="start ComfyUI from this folder (and stop it at the end)")
    ap.add_argument("--python", default=sys.executable, help="python of ComfyUI's venv (with --start)")
    ap.add_argument("--log", default=None, help="server log file (with --start; default: COMFYUI_DIR/smoke_server.log)")
    ap.add_argument("--nodes", nargs="*", default=[], help="node ids that /object_info must list")
    ap.add_argument("--all-pack-nodes", action="store_true",
                    help="require every id of this repo's nodes.NODE_CLASS_MAPPINGS")
    ap.add_argument("--templates", metavar="FOLDER", help="custom_nodes folder name whose workflows "
                                                          "/workflow_templates must list")
    ap.add_argument("--prompt", nargs="*", default=[], help="API-format prompt JSON files to queue")
    ap.add_argument("--workflow", nargs="*", default=[], help="UI workflow JSON files to convert and queue")
    ap.add_argument("--core-demo", action="store_true", help="queue EmptyImage -> SaveImage")
    ap.add_argument("--frontend-check", action="store_true",
                    help="also load each --workflow in the real frontend (headless Chromium via playwright) "
                         "and compare its graphToPrompt() with ui_to_api")
    ap.add_argument("--screenshots", metavar="DIR", help="with --frontend-check: save a PNG of each workflow")
    ap.add_argument("--browser", metavar="EXE", help="Chromium executable for --frontend-check")
    ap.add_argument("--no-queue", action="store_true", help="do not queue the --workflow files")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per prompt")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    url = (args.url or f"http://127.0.0.1:{args.port}").rstrip("/")

    proc = None
    log_f = None
    if args.start:
        log_path = Path(args.log or Path(args.start) / "smoke_server.log")
        log_f = open(log_path, "w")
        proc = subprocess.Popen([args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
                                 "--disable-auto-launch"], cwd=args.start, stdout=log_f, stderr=subprocess.STDOUT)
        print(f"started ComfyUI pid {proc.pid}, log {log_path}")
    failures: List[str] = []
    try:
        t0 = time.time()
        if not wait_for_server(url, args.startup_timeout, proc):
            print(f"FAIL server at {url} did not answer" + (f" (exit code {proc.poll()})" if proc else ""))
            return 1
        print(f"server up at {url} after {time.time() - t0:.1f} s")
        info = http_json(f"{url}/object_info", timeout=120)
        print(f"/object_info: {len(info)} node types")
        want = list(args.nodes)
        if args.all_pack_nodes:
            sys.path.insert(0, str(REPO))
            from expportrait_core.workflow.cli import load_pack_nodes

            want += sorted(load_pack_nodes()[0])
        for nid in want:
            if nid not in info:
                failures.append(f"FAIL node {nid} is not in /object_info")
        if want:
            print(f"checked {len(want)} node ids in /object_info")
        if args.templates:
            tpl = http_json(f"{url}/workflow_templates")
            names = tpl.get(args.templates) if isinstance(tpl, dict) else None
            if not names:
                failures.append(f"FAIL /workflow_templates lists nothing for '{args.templates}' (has {sorted(tpl)})")
            else:
                print(f"/workflow_templates['{args.templates}'] = {sorted(names)}")
                one = sorted(names)[0]
                got = http_json(f"{url}/api/workflow_templates/{urllib.parse.quote(args.templates)}/"
                                f"{urllib.parse.quote(one)}.json")
                if not isinstance(got, dict) or "nodes" not in got:
                    failures.append(f"FAIL template '{one}' is not served as a UI workflow")
        jobs = []
        if args.core_demo:
            jobs.append(("core-demo", CORE_DEMO_PROMPT))
        for f in args.prompt:
            jobs.append((f, json.loads(Path(f).read_text(encoding="utf-8"))))
        for f in args.workflow:
            sys.path.insert(0, str(REPO))
            from expportrait_core.workflow import ui_to_api, validate_workflow

            ui = json.loads(Path(f).read_text(encoding="utf-8"))
            for p in validate_workflow(ui, info):
                print(f"{f}: {p}")
            if not args.no_queue:
                jobs.append((f, ui_to_api(ui, info)))
        if args.frontend_check and args.workflow:
            failures += frontend_check(url, [Path(f) for f in args.workflow], info,
                                       Path(args.screenshots) if args.screenshots else None, args.browser)
        for label, prompt in jobs:
            failures += queue_and_wait(url, prompt, args.timeout, label)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"stopped ComfyUI (exit code {proc.returncode})")
        if log_f is not None:
            log_f.close()
    for line in failures:
        print(line)
    print("smoke: " + ("OK" if not failures else f"{len(failures)} failure(s)"))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
