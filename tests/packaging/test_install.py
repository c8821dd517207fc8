"""slimfx works without any import hook, from a regular and from an editable install.

Each install kind gets its own copy of the source tree (the files ``git ls-files`` lists,
as they are in the working tree, plus new files ``.gitignore`` does not exclude; no build
outputs) and its own fresh virtual environment, made with ``python -m venv --without-pip``.
The new environment sees the running interpreter's third-party packages (torch,
torchvision, setuptools, wheel, pip ...) through a ``.pth`` file listing a *view* of this
interpreter's ``site-packages``: a directory of symbolic links to every entry there except
slimfx's own (its package, dist-info and editable hooks). ``.pth`` files inside a directory
added that way are not processed, and the view leaves slimfx's metadata out, so before the
install slimfx can be neither imported nor found by ``importlib.metadata`` (checked). The
running interpreter's pip installs the copy into the new environment with ``--no-deps
--no-build-isolation --no-index --no-cache-dir --check-build-dependencies``: nothing is
downloaded, the build requirements of ``pyproject.toml`` must be installed in the test
environment (the ``test`` extra lists them), and the checkout and its virtual environment
stay untouched (checked for the test environment's slimfx install).

Then ``python -m slimfx --help``, the ``slimfx`` console script, two benchmark scripts'
``--help`` and a small user script run in the new environment, once with the copy's root as
the current directory and once from an unrelated directory. The user script lies in the
current directory, as a user's script would, and reports where every ``slimfx`` module and
slimfx's distribution metadata came from. Child processes get a private ``HOME``, cache
directories and ``TMPDIR`` below the test's temporary directory and do not write bytecode
outside it (the copy is byte-compiled once after the install instead).

Both installs run at the same time, then the checks run two processes at a time (they are
dominated by importing torch); only the install kinds and checks of the selected tests run.
Each check is its own test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()
INSTALL_KINDS = ("regular", "editable")
LOCATIONS = ("copy_root", "elsewhere")
HELP_CHECKS = {
    # name: (command after the interpreter, or None for the console script; expected words)
    "python_m_slimfx": (["-m", "slimfx", "--help"], ["usage: slimfx", "COMMAND"]),
    "console_script": (None, ["usage: slimfx", "COMMAND"]),
    "pass_time": (["benchmarks/pass_time.py", "--help"], ["usage: pass_time.py", "--runs"]),
    "round_to": (["benchmarks/round_to.py", "--help"], ["usage: round_to.py", "--round-to"]),
}
USER_CHECK = "user_script"
USER_SCRIPT_NAME = "slimfx_user_script.py"
USER_SCRIPT = '''\
"""A user's script: imports the installed slimfx and says where it came from."""

import importlib.metadata
import json
import sys

import slimfx
import slimfx.passes
import slimfx.train

distribution = importlib.metadata.distribution("slimfx")
print(
    json.dumps(
        {
            "modules": {
                name: getattr(module, "__file__", None)
                for name, module in dict(sys.modules).items()
                if name == "slimfx" or name.startswith("slimfx.")
            },
            "slim_module": slimfx.slim.__module__,
            "trace_is_shared": slimfx.trace is slimfx.passes.trace,
            "top_level_passes": sorted(
                name for name in sys.modules if name.split(".")[0] == "passes"
            ),
            "sys_path": sys.path,
            "distribution_root": str(distribution.locate_file("")),
            "direct_url": distribution.read_text("direct_url.json"),
        }
    )
)
'''
PROBE_SCRIPT = """\
import importlib.metadata, importlib.util, json
report = {
    name: importlib.util.find_spec(name) is not None
    for name in ("torch", "torchvision", "setuptools", "wheel", "pip")
}
try:
    importlib.metadata.distribution("slimfx")
except importlib.metadata.PackageNotFoundError:
    report["slimfx_distribution"] = False
else:
    report["slimfx_distribution"] = True
try:
    import slimfx
except ModuleNotFoundError as error:
    report["import_slimfx"] = str(error)
else:
    report["import_slimfx"] = slimfx.__file__
print(json.dumps(report))
"""
PROBE_EXPECTED = {
    "torch": True,
    "torchvision": True,
    "setuptools": True,
    "wheel": True,
    "pip": True,
    "slimfx_distribution": False,
    "import_slimfx": "No module named 'slimfx'",
}
RUN_TIMEOUT_S = 180
INSTALL_TIMEOUT_S = 300
PARALLEL_RUNS = 2


@dataclasses.dataclass(frozen=True)
class InstalledEnv:
    """A fresh virtual environment that slimfx is (to be) installed into from a copy.

    Attributes
    ----------
    kind : str
        ``"regular"`` (``pip install COPY``) or ``"editable"`` (``pip install -e COPY``).
    base : Path
        The temporary directory holding everything below.
    copy_root : Path
        The copy of the source tree.
    copied : tuple of str
        The copied files, relative to ``copy_root``.
    venv : Path
        The virtual environment's directory.
    python : Path
        The environment's interpreter.
    site_packages : Path
        The environment's own ``site-packages`` (its ``purelib``).
    elsewhere : Path
        An empty directory unrelated to the copy, used as a second working directory.
    hidden : tuple of str
        The entries of the test environment's ``site-packages`` left out of the view.
    """

    kind: str
    base: Path
    copy_root: Path
    copied: tuple[str, ...]
    venv: Path
    python: Path
    site_packages: Path
    elsewhere: Path
    hidden: tuple[str, ...]

    def cwd(self, location: str) -> Path:
        """Return the working directory that ``location`` names.

        Parameters
        ----------
        location : str
            ``"copy_root"`` or ``"elsewhere"``.

        Returns
        -------
        Path
            The copy's root or the unrelated directory.
        """
        return self.copy_root if location == "copy_root" else self.elsewhere


@dataclasses.dataclass(frozen=True)
class Installation:
    """An environment, what it saw before the install and how the install went.

    Attributes
    ----------
    env : InstalledEnv
        The environment.
    probe : subprocess.CompletedProcess
        :data:`PROBE_SCRIPT` run in the environment before the install.
    install : subprocess.CompletedProcess
        The ``pip install`` run.
    compiled : subprocess.CompletedProcess or None
        The byte-compilation of the copy after a successful install, else ``None``.
    """

    env: InstalledEnv
    probe: subprocess.CompletedProcess
    install: subprocess.CompletedProcess
    compiled: subprocess.CompletedProcess | None

    @property
    def succeeded(self) -> bool:
        """Whether pip installed slimfx (and the copy was byte-compiled)."""
        return (
            self.install.returncode == 0
            and self.compiled is not None
            and self.compiled.returncode == 0
        )

    def failure(self) -> str:
        """Return why the environment cannot be used for the checks."""
        if self.install.returncode != 0:
            return "pip could not install slimfx:\n" + describe(self.install)
        assert self.compiled is not None
        return "the copy could not be byte-compiled:\n" + describe(self.compiled)


@dataclasses.dataclass(frozen=True)
class Installations:
    """The installations of one session and the test environment's slimfx around them.

    Attributes
    ----------
    by_kind : dict of str to Installation
        The installation of each selected install kind.
    developer_before, developer_after : dict of str to bytes
        :func:`slimfx_distribution_snapshot` before the first and after the last install.
    """

    by_kind: dict[str, Installation]
    developer_before: dict[str, bytes]
    developer_after: dict[str, bytes]


def child_env(base: Path) -> dict[str, str]:
    """Return the environment for child processes working below ``base``.

    Parameters
    ----------
    base : Path
        The install kind's temporary directory; ``HOME``, the XDG directories and
        ``TMPDIR`` point below it.

    Returns
    -------
    dict of str to str
        A copy of ``os.environ`` without variables that could add import paths, select
        another environment or name directories outside ``base``, with
        ``PYTHONNOUSERSITE=1`` and ``PYTHONDONTWRITEBYTECODE=1``.
    """
    env = dict(os.environ)
    for name in (
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONSAFEPATH",
        "PYTHONPYCACHEPREFIX",
        "PYTHONUSERBASE",
        "VIRTUAL_ENV",
        "MPLCONFIGDIR",
        "TORCH_HOME",
        "PIP_CACHE_DIR",
    ):
        env.pop(name, None)
    home = base / "home"
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        TMPDIR=str(base / "tmp"),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        OMP_NUM_THREADS="1",
    )
    return env


def run(command: list, cwd: Path, base: Path, timeout: float = RUN_TIMEOUT_S):
    """Run ``command`` in ``cwd`` with :func:`child_env`, capturing its output as text.

    Parameters
    ----------
    command : list of str or Path
        The program and its arguments.
    cwd : Path
        The working directory.
    base : Path
        The install kind's temporary directory (see :func:`child_env`).
    timeout : float
        Seconds before the run is killed.

    Returns
    -------
    subprocess.CompletedProcess
        The finished process, with ``stdout`` and ``stderr`` as strings. A run that times
        out is returned with exit code ``None`` and what it had written.
    """
    command = [str(part) for part in command]
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=child_env(base),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:

        def text(data) -> str:
            return data.decode(errors="replace") if isinstance(data, bytes) else data or ""

        return subprocess.CompletedProcess(
            command,
            None,
            text(expired.stdout),
            text(expired.stderr) + f"\n[killed after {timeout} s]",
        )


def describe(result: subprocess.CompletedProcess) -> str:
    """Return a readable account of a finished process for assertion messages.

    Parameters
    ----------
    result : subprocess.CompletedProcess
        The finished process.

    Returns
    -------
    str
        Its command, exit code, stdout and stderr.
    """
    return (
        f"command: {' '.join(result.args)}\nexit code: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def source_files(root: Path) -> list[str]:
    """List the files of the source tree: tracked ones and new ones not ignored.

    These are the tracked files as they are in the working tree (minus files deleted from
    it) plus untracked files that ``.gitignore`` does not exclude (new modules not added
    yet). Build outputs (``build/``, ``*.egg-info``, ``__pycache__``) are ignored, so they
    are not listed.

    Parameters
    ----------
    root : Path
        The repository root.

    Returns
    -------
    list of str
        Paths relative to ``root``.
    """
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = sorted({name for name in listing.split("\0") if name})
    return [name for name in names if (root / name).is_file()]


def copy_source_tree(root: Path, destination: Path) -> tuple[str, ...]:
    """Copy the files of :func:`source_files` from ``root`` into ``destination``.

    Parameters
    ----------
    root : Path
        The repository root.
    destination : Path
        A new directory to create.

    Returns
    -------
    tuple of str
        The copied files, relative to ``destination``.
    """
    names = source_files(root)
    for name in names:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return tuple(names)


def developer_site_dirs() -> list[Path]:
    """Return the running interpreter's ``site-packages`` directories.

    Returns
    -------
    list of Path
        ``purelib``, ``platlib`` and :func:`site.getsitepackages`, existing ones, each once.
    """
    candidates = [
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        *site.getsitepackages(),
    ]
    unique = {Path(path).resolve(): None for path in candidates}
    return [path for path in unique if path.is_dir()]


def is_slimfx_entry(name: str) -> bool:
    """Whether a ``site-packages`` entry belongs to slimfx's own install.

    Parameters
    ----------
    name : str
        A file or directory name in ``site-packages``.

    Returns
    -------
    bool
        True for ``slimfx``, ``slimfx-*.dist-info``, ``__editable__*slimfx*`` and the like.
    """
    return "slimfx" in name.lower()


def make_site_view(site_dir: Path, view: Path) -> list[str]:
    """Fill ``view`` with symbolic links to the entries of ``site_dir`` except slimfx's.

    Parameters
    ----------
    site_dir : Path
        A ``site-packages`` directory.
    view : Path
        A new directory to create.

    Returns
    -------
    list of str
        The names left out.
    """
    view.mkdir(parents=True)
    hidden = []
    for entry in sorted(site_dir.iterdir()):
        if is_slimfx_entry(entry.name):
            hidden.append(entry.name)
        else:
            (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return hidden


def purelib_of(python: Path, base: Path) -> Path:
    """Return the ``site-packages`` directory (``purelib``) of the interpreter ``python``.

    Parameters
    ----------
    python : Path
        An interpreter.
    base : Path
        The install kind's temporary directory.

    Returns
    -------
    Path
        Its ``sysconfig.get_paths()["purelib"]``.
    """
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    result = run([python, "-c", code], cwd=base, base=base, timeout=60)
    assert result.returncode == 0, describe(result)
    return Path(result.stdout.strip())


def pip_install_command(python: Path, *args: str) -> list[str]:
    """Return the command that installs into the environment of ``python`` with our pip.

    Parameters
    ----------
    python : Path
        The target environment's interpreter.
    *args : str
        Arguments after ``install``.

    Returns
    -------
    list of str
        ``sys.executable -m pip --python PYTHON install ARGS`` where pip supports
        ``--python`` (22.3 and later); otherwise ``PYTHON -m pip install ARGS``, which runs
        the same pip (visible through the view) inside the target environment.
    """
    # read from the metadata: importing pip would make setuptools' distutils shim step
    # aside for the rest of this process (it does so under pip), and inductor's later
    # ``import setuptools`` would fail
    pip_version = importlib.metadata.version("pip")
    version = tuple(int(part) for part in pip_version.split(".")[:2] if part.isdigit())
    if version >= (22, 3):
        return [sys.executable, "-m", "pip", "--python", str(python), "install", *args]
    return [str(python), "-m", "pip", "install", *args]


def slimfx_distribution_snapshot() -> dict[str, bytes]:
    """Return the contents of the test environment's slimfx install metadata and hooks.

    Used to show that installing into a new environment leaves the test environment alone.

    Returns
    -------
    dict of str to bytes
        File path to contents, for every file of a slimfx entry (see
        :func:`is_slimfx_entry`) in the running interpreter's ``site-packages``, compiled
        bytecode excepted.
    """
    snapshot = {}
    for site_dir in developer_site_dirs():
        for entry in sorted(site_dir.iterdir()):
            if not is_slimfx_entry(entry.name):
                continue
            files = sorted(entry.rglob("*")) if entry.is_dir() else [entry]
            for path in files:
                if path.is_file() and path.suffix != ".pyc":
                    snapshot[str(path)] = path.read_bytes()
    return snapshot


def make_env(kind: str, base: Path) -> InstalledEnv:
    """Copy the source tree and make a fresh venv that sees the test environment's packages.

    Parameters
    ----------
    kind : str
        ``"regular"`` or ``"editable"``.
    base : Path
        An empty temporary directory to work in.

    Returns
    -------
    InstalledEnv
        The new environment, slimfx not installed yet.
    """
    for name in ("home", "tmp"):
        (base / name).mkdir()
    copy_root = base / "copy"
    copied = copy_source_tree(REPO_ROOT, copy_root)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], base, base, timeout=120)
    assert made.returncode == 0, describe(made)
    python = venv / "bin" / "python"
    site_packages = purelib_of(python, base)
    views, hidden = [], []
    for index, site_dir in enumerate(developer_site_dirs()):
        view = base / f"test-env-site-{index}"
        hidden += make_site_view(site_dir, view)
        views.append(view)
    (site_packages / "zz_test_env_site_packages.pth").write_text(
        "".join(f"{view}\n" for view in views)
    )
    return InstalledEnv(
        kind, base, copy_root, copied, venv, python, site_packages, elsewhere, tuple(hidden)
    )


def install(kind: str, base: Path) -> Installation:
    """Make the environment of ``kind``, probe it, install the copy and byte-compile it.

    Parameters
    ----------
    kind : str
        ``"regular"`` or ``"editable"``.
    base : Path
        An empty temporary directory to work in.

    Returns
    -------
    Installation
        The environment and the results of its steps.
    """
    env = make_env(kind, base)
    probe = run([env.python, "-c", PROBE_SCRIPT], env.elsewhere, base, timeout=60)
    editable = ["-e"] if kind == "editable" else []
    args = [
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--no-cache-dir",
        "--check-build-dependencies",
        *editable,
        str(env.copy_root),
    ]
    installed = run(pip_install_command(env.python, *args), base, base, INSTALL_TIMEOUT_S)
    compiled = None
    if installed.returncode == 0:
        # The child processes do not write bytecode; compile the copy's modules once here.
        directories = [env.copy_root / name for name in ("src", "passes", "benchmarks")]
        compiled = run(
            [env.python, "-m", "compileall", "-q", *[d for d in directories if d.is_dir()]],
            base,
            base,
            timeout=120,
        )
    return Installation(env, probe, installed, compiled)


def command_for(env: InstalledEnv, check: str, location: str) -> list[str]:
    """Return the command line of ``check`` for ``env`` run from ``location``.

    Parameters
    ----------
    env : InstalledEnv
        The environment.
    check : str
        A key of :data:`HELP_CHECKS` or :data:`USER_CHECK`.
    location : str
        ``"copy_root"`` (benchmark scripts named relative to it) or ``"elsewhere"``
        (benchmark scripts named by absolute path).

    Returns
    -------
    list of str
        The program and its arguments.
    """
    if check == USER_CHECK:
        return [str(env.python), USER_SCRIPT_NAME]
    arguments, _ = HELP_CHECKS[check]
    if arguments is None:
        return [str(env.venv / "bin" / "slimfx"), "--help"]
    if location == "elsewhere" and arguments[0].endswith(".py"):
        arguments = [str(env.copy_root / arguments[0]), *arguments[1:]]
    return [str(env.python), *arguments]


def selected(session: pytest.Session, name: str, default: tuple[str, ...]) -> list[str]:
    """Return the values of the parameter ``name`` among the selected tests of this module.

    Parameters
    ----------
    session : pytest.Session
        The test session.
    name : str
        A parameter name.
    default : tuple of str
        The values, in order; returned whole if no selected test has the parameter.

    Returns
    -------
    list of str
        The values in the order of ``default``.
    """
    values = {
        item.callspec.params[name]
        for item in session.items
        if Path(str(item.path)).resolve() == THIS_FILE
        and name in getattr(getattr(item, "callspec", None), "params", {})
    }
    return [value for value in default if value in values] or list(default)


def selected_jobs(session: pytest.Session, kinds: list[str]) -> list[tuple[str, str, str]]:
    """Return the ``(kind, check, location)`` runs that the selected tests need.

    Parameters
    ----------
    session : pytest.Session
        The test session.
    kinds : list of str
        The installed kinds.

    Returns
    -------
    list of (str, str, str)
        The runs, each once.
    """
    jobs = {}
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if Path(str(item.path)).resolve() != THIS_FILE or "location" not in params:
            continue
        check = params.get("check", USER_CHECK)
        if params.get("kind") in kinds:
            jobs[params["kind"], check, params["location"]] = None
    return list(jobs)


@pytest.fixture(scope="session")
def installations(request, tmp_path_factory) -> Installations:
    """The selected install kinds, each in its own fresh venv, installed at the same time."""
    kinds = selected(request.session, "kind", INSTALL_KINDS)
    bases = {kind: tmp_path_factory.mktemp(f"install-{kind}-") for kind in kinds}
    before = slimfx_distribution_snapshot()
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        futures = {kind: pool.submit(install, kind, bases[kind]) for kind in kinds}
        by_kind = {kind: future.result() for kind, future in futures.items()}
    return Installations(by_kind, before, slimfx_distribution_snapshot())


@pytest.fixture(scope="session")
def outcomes(request, installations) -> dict[tuple[str, str, str], subprocess.CompletedProcess]:
    """The selected checks run in the installed environments, two processes at a time.

    Returns
    -------
    dict of (str, str, str) to subprocess.CompletedProcess
        ``(kind, check, location)`` to the finished process, for environments installed
        successfully.
    """
    usable = {kind: inst.env for kind, inst in installations.by_kind.items() if inst.succeeded}
    for env in usable.values():
        for location in LOCATIONS:
            (env.cwd(location) / USER_SCRIPT_NAME).write_text(USER_SCRIPT)
    jobs = selected_jobs(request.session, list(usable))
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        futures = {
            (kind, check, location): pool.submit(
                run,
                command_for(usable[kind], check, location),
                usable[kind].cwd(location),
                usable[kind].base,
            )
            for kind, check, location in jobs
        }
        return {job: future.result() for job, future in futures.items()}


def installed(installations: Installations, kind: str) -> Installation:
    """Return the installation of ``kind``, failing the test if pip did not install it."""
    installation = installations.by_kind[kind]
    if not installation.succeeded:
        pytest.fail(installation.failure(), pytrace=False)
    return installation


@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_new_environment_sees_dependencies_but_not_slimfx(installations, kind):
    """Before the install the new venv finds torch & co. but no slimfx, nor its metadata."""
    installation = installations.by_kind[kind]
    probe = installation.probe
    assert probe.returncode == 0, describe(probe)
    report = json.loads(probe.stdout)
    assert report == PROBE_EXPECTED, (
        f"left out of the view of the test environment: {installation.env.hidden}\n"
        + describe(probe)
    )


@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_pip_installs_the_copy_offline(installations, kind):
    """pip builds and installs the copy without index, cache, build isolation or deps."""
    installation = installations.by_kind[kind]
    result = installation.install
    assert result.returncode == 0, describe(result)
    assert "Successfully installed slimfx-0" in result.stdout, describe(result)
    script = installation.env.venv / "bin" / "slimfx"
    assert script.is_file(), f"no console script {script}\n" + describe(result)
    shebang = script.read_text().splitlines()[0]
    assert shebang == f"#!{installation.env.python}", f"{script} starts with {shebang!r}"
    assert installation.compiled is not None
    assert installation.compiled.returncode == 0, describe(installation.compiled)


@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_install_leaves_the_test_environment_alone(installations, kind):
    """The test environment's own slimfx install (files and hooks) is unchanged."""
    assert kind in installations.by_kind
    before, after = installations.developer_before, installations.developer_after
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"the test environment's slimfx install changed: {changed}"


@pytest.mark.parametrize("kind", ["regular"])
def test_regular_install_holds_every_package_file(installations, kind):
    """Every file of ``src/slimfx`` and ``passes`` is installed, and nothing else.

    ``passes/X`` is installed as ``slimfx/passes/X``. Compiled bytecode and the
    ``__pycache__`` directories are left out of the comparison.
    """
    env = installed(installations, kind).env
    expected = set()
    for name in env.copied:
        path = Path(name)
        if path.parts[:2] == ("src", "slimfx"):
            expected.add(Path(*path.parts[1:]).as_posix())
        elif path.parts[0] == "passes":
            expected.add(Path("slimfx", *path.parts).as_posix())
    package = env.site_packages / "slimfx"
    found = {
        path.relative_to(env.site_packages).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert found == expected, (
        f"missing from the install: {sorted(expected - found)}\n"
        f"installed but not in the source tree: {sorted(found - expected)}"
    )


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("check", list(HELP_CHECKS))
@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_help_runs_without_import_hook(installations, outcomes, kind, check, location):
    """``--help`` of the command line and of benchmark scripts exits 0 with its usage text."""
    installed(installations, kind)
    result = outcomes[kind, check, location]
    assert result.returncode == 0, describe(result)
    missing = [word for word in HELP_CHECKS[check][1] if word not in result.stdout]
    assert not missing, f"{missing} not in the output\n" + describe(result)
    assert "Traceback" not in result.stderr, describe(result)


def expected_module_files(env: InstalledEnv, name: str) -> set[Path]:
    """Return where the module ``name`` (``slimfx`` or a submodule) must come from.

    Parameters
    ----------
    env : InstalledEnv
        The environment.
    name : str
        A module name.

    Returns
    -------
    set of Path
        ``PACKAGE/__init__.py`` and, for a submodule, ``MODULE.py`` below the installed
        package (regular install) or below the copy's ``src/slimfx`` and, for
        ``slimfx.passes``, the copy's ``passes`` (editable install).
    """
    parts = name.split(".")
    if env.kind == "regular":
        root, rest = env.site_packages / "slimfx", parts[1:]
    elif parts[:2] == ["slimfx", "passes"]:
        root, rest = env.copy_root / "passes", parts[2:]
    else:
        root, rest = env.copy_root / "src" / "slimfx", parts[1:]
    module = root.joinpath(*rest).resolve()
    files = {module / "__init__.py"}
    if rest:
        files.add(module.with_name(module.name + ".py"))
    return files


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("kind", INSTALL_KINDS)
def test_user_script_imports_installed_slimfx(installations, outcomes, kind, location):
    """A user script imports slimfx, slimfx.passes and slimfx.train from the install.

    Regular install: every ``slimfx`` module comes from the new venv's ``site-packages``,
    never from the copy or the checkout. Editable install: from the copy's ``src/slimfx``
    and ``passes/``. Either way slimfx's metadata is the new install's, the passes are never
    imported as a top-level ``passes`` package, and the copy's ``src/`` and ``passes/`` are
    not on ``sys.path``.
    """
    env = installed(installations, kind).env
    result = outcomes[kind, USER_CHECK, location]
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    modules = report["modules"]
    assert {"slimfx", "slimfx.passes", "slimfx.train"} <= modules.keys(), describe(result)
    wrong = {
        name: file
        for name, file in sorted(modules.items())
        if file is None or Path(file).resolve() not in expected_module_files(env, name)
    }
    assert not wrong, f"modules from the wrong place: {wrong}\n" + describe(result)
    assert report["slim_module"] == "slimfx.api", describe(result)
    assert report["trace_is_shared"] is True, describe(result)
    assert report["top_level_passes"] == [], describe(result)
    copy_dirs = {(env.copy_root / name).resolve() for name in ("src", "passes")}
    on_path = {Path(entry).resolve() for entry in report["sys_path"] if entry}
    assert not on_path & copy_dirs, describe(result)

    distribution_root = Path(report["distribution_root"]).resolve()
    assert distribution_root == env.site_packages.resolve(), describe(result)
    direct_url = json.loads(report["direct_url"] or "{}")
    url = urllib.parse.urlsplit(direct_url.get("url", ""))
    assert url.scheme == "file", describe(result)
    source = Path(urllib.request.url2pathname(url.path)).resolve()
    assert source == env.copy_root.resolve(), describe(result)
    editable = direct_url.get("dir_info", {}).get("editable", False)
    assert editable is (kind == "editable"), describe(result)
