"""Every `recsys ...` command in docs/ope.md runs as written (from the repository root, on
the committed fixture under tests/fixtures/ope/). Commands on the synthetic world get
smaller sizes appended; the log-file commands run exactly as written (plus the run
directory and fewer bootstrap resamples). All eleven take ~25 s on an idle 2-core machine."""
from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.helpers import ROOT, run

DOC = ROOT / "docs" / "ope.md"


def documented_commands() -> list[str]:
    """The `recsys` commands of the bash blocks of docs/ope.md (continuations joined, comments dropped)."""
    text = DOC.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("recsys "):
                cmds.append(line)
    return cmds


COMMANDS = documented_commands()
# sizes appended to the synthetic-world commands (the defaults are the full studies)
SMALL = ["data.n_users=150", "data.n_items=60", "data.loader.n_requests=400"]
EXTRA = {"bench": ["bench.n_seeds=2", "bench.n_requests=300", "ope.n_bootstrap=10", *SMALL],
         "regret": ["regret.n_requests=300", *SMALL], "align": ["ope.n_bootstrap=10", *SMALL]}


def _params() -> list:
    return [pytest.param(c, id=c[:70]) for c in COMMANDS]


def test_docs_list_the_log_commands():
    assert len(COMMANDS) >= 8 and sum("logs=tests/fixtures/ope/" in c for c in COMMANDS) >= 5, COMMANDS
    assert not any("data.path=" in c for c in COMMANDS)  # the key is data.loader.path


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs(command, tmp_path):
    args = shlex.split(command)[1:]
    extra = [f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    if "logs=" in command:
        extra.append("ope.n_bootstrap=20")
    else:
        sub = args[1] if len(args) > 1 and "=" not in args[1] else None
        extra += EXTRA.get(sub or "", ["ope.n_bootstrap=10", *SMALL])
    res = run(*args, *extra, cwd=ROOT)
    assert res.returncode == 0, (command, res.stderr[-2000:])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    if "logs=" in command:
        assert summary["estimates"]["SNIPS"]["estimate"] >= 0
        if "data=" not in command:  # the log alone: never the synthetic catalogue
            assert summary["data"] is None and summary["n_actions"] == 40, summary.get("catalogue")
