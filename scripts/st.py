"""Runs the schemathesis CLI (`python3 scripts/st.py run ...`).

Hypothesis describes filter lambdas by parsing their module's source with
`ast`; on CPython 3.11.7 (this machine's Python) that parse can fail with
"AST constructor recursion depth mismatch" (a CPython bug fixed in later
3.11 releases), which schemathesis reports as a runtime error of the
operation being tested. The descriptions only decorate reprs, so they are
replaced by hypothesis's own "unknown body" form.
"""

import sys

import hypothesis.internal.lambda_sources as lambda_sources


def _plain_description(f, *args, **kwargs):
    return "lambda *args: <unknown>"


lambda_sources._lambda_description = _plain_description

from schemathesis.cli import schemathesis  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "st"
    sys.exit(schemathesis())
