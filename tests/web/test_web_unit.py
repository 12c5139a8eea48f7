"""The web app's preprocessing arithmetic against device/ (node's test runner on web/test/)."""
from __future__ import annotations

import json

from tests.web.conftest import run_node
from tests.web.parity_golden import GOLDEN, build_golden


def test_golden_file_is_current():
    # Regenerate with: .venv/bin/python -m tests.web.parity_golden
    assert json.loads(GOLDEN.read_text()) == json.loads(json.dumps(build_golden())), \
        "web/test/parity.json is stale: device/ preprocessing changed"


def test_node_parity_tests_pass(web_deps):
    done = run_node("node", "--test", "--test-reporter=tap", *sorted(str(p) for p in GOLDEN.parent.glob("*.test.js")))
    assert "# fail 0" in done.stdout and "# pass " in done.stdout, done.stdout
