"""Our package `code` shadows the standard library's `code` module from the repository root."""
import subprocess
import sys

from conftest import ROOT


def run_in_root(script: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_pdb_and_interactive_console_work_from_the_root():
    r = run_in_root("import pdb, code; from code import collaborative_generate; "
                    "c = code.InteractiveConsole({}); c.push('x = 6 * 7'); c.push('print(x)')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


def test_pdb_interact_command():
    # pdb's `interact` command is what imports code.InteractiveConsole
    r = run_in_root("import pdb; pdb.Pdb().runcall(lambda: 1)", stdin="interact\nprint(40 + 2)\n")
    assert "42" in r.stdout, r.stdout + r.stderr


def test_python_dash_i_starts():
    r = subprocess.run([sys.executable, "-i", "-c", "import code"], cwd=ROOT, input="print(6 * 7)\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "42" in r.stdout, r.stderr
