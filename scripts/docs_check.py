#!/usr/bin/env python3
"""Runs the ```sh blocks of the given Markdown files (scripts/docs-check.sh
sets up the server and the environment first).

A block runs with `bash -e -o pipefail` in the current directory, with the
environment it is given, and must exit 0. An HTML comment on the line before
the fence (blank lines between are allowed) says otherwise:

  <!-- docs-check: exit N -->          the block must exit with status N
  <!-- docs-check: timeout S -->       a command that does not end by itself
                                       (`logs -f`): killed after S seconds, it
                                       must not have failed before that
  <!-- docs-check: parse -->           only `bash -n` (a synopsis, or a
                                       command that must not run here)
  <!-- docs-check: host REASON -->     needs a real host (systemd, Docker):
                                       `bash -n`, and REASON is printed

Blocks fenced ```text (or anything but sh/bash/shell) are not commands.

  docs_check.py [--list] FILE.md...
"""

import os
import re
import signal
import subprocess
import sys
import time

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-check:\s*(exit|timeout|parse|host)\b\s*(.*?)\s*-->\s*$")
SHELLS = {"sh", "bash", "shell"}


def blocks(path):
    """(line number, mode, argument, code) of every shell block."""
    lines = open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang not in SHELLS:
            continue
        mode, arg = "run", ""
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0:
            mm = MARKER.match(lines[j])
            if mm:
                mode, arg = mm.group(1), mm.group(2)
            elif "docs-check" in lines[j]:
                sys.exit(f"{path}:{j + 1}: malformed docs-check marker: {lines[j]}")
        yield start + 1, mode, arg, "\n".join(body) + "\n"


def run(path, line, mode, arg, code):
    where = f"{path}:{line}"
    if mode in ("parse", "host"):
        r = subprocess.run(["bash", "-n"], input=code, text=True, capture_output=True)
        note = f" (needs a real host: {arg})" if mode == "host" else ""
        if r.returncode != 0:
            return f"{where}: does not parse: {r.stderr.strip()}"
        print(f"docs-check: {where}: parses{note}")
        return None
    script = "set -eo pipefail\n" + code
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    limit = float(arg) if mode == "timeout" else 60.0
    try:
        out, _ = proc.communicate(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
        timed_out = True
    took = time.monotonic() - start
    shown = "\n".join("    | " + l for l in out.splitlines()[-15:])
    if mode == "timeout":
        if not timed_out and proc.returncode != 0:
            return f"{where}: exited {proc.returncode} within {arg}s:\n{shown}"
    elif timed_out:
        return f"{where}: still running after {limit:.0f}s:\n{shown}"
    else:
        want = int(arg) if mode == "exit" else 0
        if proc.returncode != want:
            return f"{where}: exit status {proc.returncode}, expected {want}:\n{shown}"
    print(f"docs-check: {where}: ok ({mode}{' ' + arg if arg else ''}, {took:.1f}s)")
    if os.environ.get("DOCS_CHECK_VERBOSE"):
        print("\n".join("    | " + l for l in out.splitlines()))
    return None


def main(argv):
    listing = argv[:1] == ["--list"]
    files = argv[1:] if listing else argv
    failures, count = [], 0
    for path in files:
        for line, mode, arg, code in blocks(path):
            count += 1
            if listing:
                print(f"{path}:{line}: {mode} {arg}".rstrip())
                continue
            err = run(path, line, mode, arg, code)
            if err:
                failures.append(err)
                print(f"docs-check: FAILED {err}", file=sys.stderr)
    if not listing:
        print(f"docs-check: {count - len(failures)} of {count} blocks pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
