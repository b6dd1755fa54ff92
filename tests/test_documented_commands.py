"""The `python -m jetjax.main` commands of README.md and docs/ (efficiency, reuse, regression) parse as written: every
--config.* override exists and has the right type on the config it names (as jetjax.main parses them: a locked
config), and the run or study plan builds (each stage's model). Running them is the other tests' job; this
catches a documented override that fails before any work (an AttributeError, a misspelt key)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/efficiency.md", "docs/reuse.md", "docs/regression.md")

PLAN = """
import sys
from absl import flags
from ml_collections import config_flags
from jetjax import build, efficiency, scaling, study
config = config_flags.DEFINE_config_file("config", lock_config=True)
flags.DEFINE_string("workdir", "runs/x", "")
flags.FLAGS(sys.argv)
c = config.value
studies = {"study": study, "efficiency": efficiency, "scaling": scaling}
if c.mode in studies:
    plan = studies[c.mode].stages(c, flags.FLAGS.workdir)
    for _, _, stage in plan:
        build.build_model(stage)
    print(c.mode, len(plan), "stages")
elif c.mode != "predict":
    build.build_model(c)
    print(c.mode)
else:
    print(c.mode)
"""


def documented_commands():
    """(document, argument list) of every `python -m jetjax.main` command of the documents: each line of their
    bash blocks, and each inline `...` span that is a whole command (templates with <...>, [...] or ... left out)."""
    found = []
    for name in DOCUMENTS:
        text = (ROOT / name).read_text()
        lines = [line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                 for line in block.replace("\\\n", " ").splitlines()]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]*python -m jetjax\.main[^`]*)`", prose)]
        for command in lines + spans:
            if "python -m jetjax.main" not in command:
                continue
            args = shlex.split(command.split("python -m jetjax.main", 1)[1])
            own = any(arg.startswith("configs/my_") for arg in args)  # the README's example of a config of your own
            if args and not own and not any(mark in arg for arg in args for mark in ("<", "[", "...")):
                found.append(pytest.param(args, id=f"{name}:{' '.join(args)[:80]}"))
    return found


COMMANDS = documented_commands()


def test_the_documents_have_commands():
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("args", COMMANDS)
def test_documented_command_parses_and_plans(args):
    done = subprocess.run([sys.executable, "-c", PLAN, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
