"""Our package `code` shadows the standard library's `code` module from the repository root."""
import subprocess
import sys

from conftest import ROOT


def run_in_root(script: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_pdb_interact_command():
    # pdb's `interact` command is what imports code.InteractiveConsole
    r = run_in_root("import pdb; pdb.Pdb().runcall(lambda: 1)", stdin="interact\nprint(40 + 2)\n")
    assert "42" in r.stdout, r.stdout + r.stderr


def test_python_dash_i_starts():
    r = subprocess.run([sys.executable, "-i", "-c", "import code"], cwd=ROOT, input="print(6 * 7)\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "42" in r.stdout, r.stderr


def test_codevar_imports_the_decoder_after_the_standard_module(tmp_path):
    """A notebook or pdb session imports the standard `code` before the repository is on sys.path."""
    script = (f"import pdb, code, sys; sys.path.insert(0, {str(ROOT)!r}); "
              "from codevar import CollaborativeDecoder, collaborative_generate; import code as c; import code.fast; "
              "assert c.collaborative_generate is collaborative_generate and c.InteractiveConsole is not None; "
              "print(CollaborativeDecoder.__module__)")
    plain = subprocess.run([sys.executable, "-c", script.replace("from codevar", "from code")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "cannot import name 'CollaborativeDecoder'" in plain.stderr  # the problem
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "code.decoder", r.stderr


def test_import_code_does_not_import_torch_and_pdb_and_the_console_work_from_the_root():
    """torch 2.4 imports pdb, hence `code`, from inside `import torch`: our package must not need torch then."""
    r = run_in_root("import sys, code; assert 'torch' not in sys.modules, 'torch imported'; import pdb; "
                    "c = code.InteractiveConsole({}); c.push('x = 6 * 7'); c.push('print(x)'); "
                    "from code import CollaborativeDecoder, collaborative_generate; assert 'torch' in sys.modules; "
                    "assert sorted(code.__all__) == sorted(n for n in dir(code) if n in code.__all__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"
