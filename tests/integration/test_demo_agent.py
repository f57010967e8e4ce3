"""The demo's first impression: the banner's three statements, and
``examples/agent.py`` walking the same three paths (allowed with PII tokenized, held
and approved through the API, denied) against a real ``dbgate demo``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from dbgate.demo import TRY_ALLOWED, TRY_DENIED, TRY_HELD
from dbgate.embedded import find_free_port
from tests.integration.test_demo import DemoProcess, demo_dir  # noqa: F401 (fixture)

AGENT_EXAMPLE = Path(__file__).parents[2] / "examples" / "agent.py"


def test_agent_example_walks_the_three_paths(demo_dir: Path) -> None:  # noqa: F811
    info_file = demo_dir / "info.json"
    demo = DemoProcess(demo_dir / "data", info_file, f"127.0.0.1:{find_free_port()}")
    try:
        info = demo.wait_for_info()
        banner = demo.output()
        agent = info["agent_dsn"]
        assert f"psql '{agent}' -c '{TRY_ALLOWED}'   # allowed, PII tokenized" in banner
        assert f"psql '{agent}' -c '{TRY_HELD}'   # held: approve it in the web page" in banner
        assert f"psql '{agent}' -c \"{TRY_DENIED}\"   # denied" in banner
        assert f"web / API: {info['web_url']}   user approver   password " in banner
        assert f"examples/agent.py --info {info_file}" in banner

        run = subprocess.run(
            [sys.executable, str(AGENT_EXAMPLE), "--info", str(info_file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        out = run.stdout
        assert run.returncode == 0, out + run.stderr
        allowed, held, denied = re.split(r"\n== \d\. ", out)[1:]
        # 1: the row arrives, every PII column a token, the id as it is
        assert "   id         42" in allowed
        for column, kind in (("full_name", "name"), ("email", "email"), ("phone", "phone")):
            assert re.search(rf"   {column:10} tok_{kind}_h\w+", allowed), allowed
        # 2: the NOTICE names the request, the example approves it, the rows come
        request = re.search(r"NOTICE:  dbgate: statement held for approval \(request (\d+)\)", held)
        assert request, held
        assert f"DETAIL:  Decide at {info['web_url']}/approvals/{request.group(1)}" in held
        assert f"[approver approver] approved request {request.group(1)}" in held
        assert "ran after approval: 5000 rows" in held
        assert "@" not in held.split("ran after approval")[1]  # no raw e-mail address
        # 3: refused at once, why in the message, the rule in the HINT
        assert "ERROR 42501:  dbgate: denied:" in denied
        assert "HINT:  rule: deny-server-admin" in denied
        assert demo.stop(signal.SIGINT) == 0, demo.output()
    finally:
        demo.kill()
