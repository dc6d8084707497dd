"""The only place generated code is executed: one operating-system sandbox per program, and pass@k.

Isolation (isolation="bwrap", the default; README "Code execution"). Each program runs under bubblewrap
in new PID, mount, IPC, UTS, network (and cgroup) namespaces, with --die-with-parent and --new-session.
The file system is read-only: /usr (and the /bin, /lib* links), /etc/ld.so.cache and /etc/localtime only,
the Python installation and its site-packages; /proc is private to the PID namespace (no host process is
visible), /dev is bwrap's minimal one, and the only writable places are a 64 MiB tmpfs /tmp (the working
directory, holding a read-only program.py) and a 16 MiB tmpfs /dev/shm, so total disk written is bounded.
setpriv then drops to uid/gid 65534 with no capabilities, an empty bounding set and no_new_privs (no
setuid binary gains anything). bwrap is not given a user namespace: started by root it would map the
sandbox uid to host root, for which RLIMIT_NPROC is not enforced and root-owned files stay readable.
rlimits: address space (memory_mb), CPU time, file size, open files and RLIMIT_NPROC (64 processes of
uid 65534, which also bounds fork bombs: note that parallel sandboxes share this count). The time budget
timeout_s is CPU time (RLIMIT_CPU), so a verdict does not depend on how busy the machine is; a wall-clock
limit of WALL_CLOCK_FACTOR times the budget catches programs that wait without computing (sleep, blocking
reads): it SIGKILLs bwrap's process group and the namespace's init, which kills every process of the run.
Not done: no seccomp filter (every system call is reachable by the uid-65534 process: the kernel is the
attack surface; nested user namespaces can be created), no cgroup limits (memory is bounded per process
by RLIMIT_AS only). isolation="none" is the explicit opt-out: a plain subprocess (unshare -n where
permitted) with only the in-process layer below. Where bwrap cannot run, check_isolation raises a
ConfigError naming task.execution.isolation=none; there is no silent fallback.

How a pass is decided. The parent draws a 128-bit token per run and hands it to the interpreter through
a pipe that is read and closed before the program starts (never in the program text, argv, environment
or a file). Only after the program (asserts included) has run to its end without raising does the runner
write the token as the last stdout line and exit 0; a run passes only if bwrap reports exit status 0 *and*
stdout ends with that line. So exiting early with status 0 (sys.exit, os._exit, atexit), swallowing or
patching exceptions or printing a guessed token all fail. The token is in the runner's frame while the
program runs, so the verdict rests on the program not reaching that frame or memory. The parent's
memory is out of reach (other PID namespace, other uid). In-process, an audit hook (PEP 578: Python code
cannot remove it) refuses every route plain Python has to frames or raw memory: sys._getframe (as a
ValueError, which namedtuple/typing/enum/logging tolerate), sys._current_frames, tb_frame/gi_frame/
cr_frame/ag_frame/f_back, settrace/setprofile, gc.get_objects/get_referrers/get_referents, every
ctypes event and import of _ctypes/_testcapi/subinterpreters, code objects built by hand (code.__new__,
code.replace, marshal.loads; imports therefore compile from source, no .pyc), re-importing or re-creating
the builtin modules the guard patched (posix, _io, _signal, ...), and opening anything under /proc or
through '..' (/proc/self/mem). signal.signal is refused (a handler receives the interrupted frame).
Remaining hole: a program that corrupts interpreter memory through a CPython memory-safety bug (the
crashers in CPython's test suite) can read the token and forge a pass; so can any route to frames or
memory missing from the list above. And the tests run in the program's own interpreter, so a program
can always make its tests vacuous (objects whose __eq__ is always True, rebinding names the tests use):
a pass means "the appended tests ran to their end without raising", not "the solution is correct".

The in-process guard is a second layer only (it is bypassable, e.g. through the originals kept in its
closures): it refuses process creation, signalling, deletion/renaming and writes outside the working
directory, and sockets; its purpose is clear error messages and the isolation="none" case.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lopa.errors import ConfigError, check_choice
from lopa.schema import ISOLATIONS, SANDBOX_MIN_MEMORY_MB, SANDBOX_MIN_OUTPUT_BYTES

STATUSES = ("passed", "failed", "timeout", "error")
TAIL_BYTES = 4096  # how much of each output stream an ExecutionResult keeps
# RLIMIT_NPROC counts every process and thread of the user (and is not enforced for root), so a
# non-root user who already runs this many cannot start threads in the sandbox; the guard's fork ban
# and the group kill are the main fork-bomb defence.
PROCESS_LIMIT = 64
OPEN_FILES_LIMIT = 256
# Wall clock allowed per CPU second of budget. A CPU-bound program that shares its core waits for it: MBPP's
# reference of task 123 needs 4.5 s of CPU but took over 10 s of wall clock on a 2-core machine running two
# sandboxes beside another job, and a wall-clock budget of 10 s scored it "timeout".
WALL_CLOCK_FACTOR = 2
SETUP_ERROR_EXIT = 125  # the runner's exit status when the sandbox itself could not be set up
SETUP_ERROR_MARK = b"lopa-sandbox-setup-error"
# Imports compile from source: .pyc files load through marshal.loads, which the audit hook refuses
# (hand-made bytecode reads and writes arbitrary memory). A directory that cannot exist.
NO_PYCACHE = "/dev/null/lopa-no-pycache"


@dataclass
class ExecutionResult:
    """Outcome of one sandboxed program.

    status is "passed" (ran to its end, verified by the token), "failed" (raised, exited early, was killed
    by a signal or a limit other than time), "timeout" (CPU-time or wall-clock limit) or "error" (the
    sandbox could not run it at all: nothing is known about the program).
    """

    passed: bool
    status: str
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    returncode: int | None = None


def _child_install_guard(sandbox_dir: str) -> None:  # pragma: no cover - runs only inside the sandboxed interpreter
    """The in-process second layer (module docstring): patched os/io/socket/signal functions, then the audit hook.
    Runs inside the sandbox before the program; its source travels with _child_main's."""
    import _io
    import builtins
    import io
    import os
    import resource
    import sys

    base_exception = BaseException
    sandbox_prefix = os.path.realpath(sandbox_dir) + os.sep
    realpath, fspath = os.path.realpath, os.fspath
    real_open, real_os_open, real_mkdir, real_file_io = _io.open, os.open, os.mkdir, _io.FileIO
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def refused(name: str):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled inside the sandbox")

        refuse.__name__ = name.rsplit(".", 1)[-1]
        return refuse

    def check_inside(path, what: str) -> None:
        if isinstance(path, int):  # an already open descriptor: nothing new is reached
            return
        try:
            resolved = realpath(fspath(path))
        except base_exception:
            resolved = ""
        if not isinstance(resolved, str):
            resolved = os.fsdecode(resolved)
        if not (resolved + os.sep).startswith(sandbox_prefix):
            raise PermissionError(f"{what} outside the sandbox directory is disabled: {path!r}")

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in str(mode) for flag in "wax+"):
            check_inside(file, "writing")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            if dir_fd is not None:
                raise PermissionError("writing through dir_fd is disabled inside the sandbox")
            check_inside(path, "writing")
        return real_os_open(path, flags, mode)

    def guarded_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:
            raise PermissionError("mkdir through dir_fd is disabled inside the sandbox")
        check_inside(path, "creating directories")
        return real_mkdir(path, mode)

    def path_guarded(name: str, function, num_paths: int = 1):
        """`function` confined to paths inside the sandbox directory (deleting there is harmless)."""

        def guarded(*args, **kwargs):
            if any(kwargs.get(key) is not None for key in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise PermissionError(f"os.{name} through dir_fd is disabled inside the sandbox")
            for path in args[:num_paths]:
                check_inside(path, f"os.{name}")
            return function(*args, **kwargs)

        guarded.__name__ = name
        return guarded

    class GuardedFileIO(real_file_io):
        def __init__(self, file, mode="r", closefd=True, opener=None):
            if any(flag in str(mode) for flag in "wax+"):
                check_inside(file, "writing")
            super().__init__(file, mode, closefd, opener)

    import _posixsubprocess
    import _signal
    import _socket
    import posix

    class RefusedSocket(_socket.socket):
        __slots__ = ()  # socket.socket subclasses this and adds its own __weakref__ slot

        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled inside the sandbox")

    os_refused = (
        "system popen fork forkpty kill killpg pidfd_open execv execve execl execle execlp execlpe execvp "
        "execvpe _execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn "
        "posix_spawnp link symlink chmod fchmod lchmod chown fchown lchown chroot mknod mkfifo setsid "
        "setpgid setpgrp setuid setgid seteuid setegid setreuid setregid setresuid setresgid setgroups "
        "initgroups setpriority sched_setscheduler setxattr removexattr"
    ).split()
    for name in os_refused:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refused(f"os.{name}"))
    path_functions = {
        name: path_guarded(name, getattr(os, name), num_paths)
        for name, num_paths in (
            ("remove", 1),
            ("unlink", 1),
            ("rmdir", 1),
            ("truncate", 1),
            ("rename", 2),
            ("replace", 2),
        )
    }
    for module in (os, posix):
        module.open, module.mkdir = guarded_os_open, guarded_mkdir
        for name, function in path_functions.items():
            setattr(module, name, function)
    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = GuardedFileIO
    _posixsubprocess.fork_exec = refused("subprocess")
    _signal.pidfd_send_signal = refused("signal.pidfd_send_signal")
    _socket.socket = _socket.SocketType = RefusedSocket
    resource.setrlimit = refused("resource.setrlimit")
    resource.prlimit = refused("resource.prlimit")
    # A trace function may set frame.f_lineno and so jump over the asserts.
    sys.settrace, sys.setprofile = refused("sys.settrace"), refused("sys.setprofile")
    for name in ("ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"):
        sys.modules[name] = None

    # Second layer, part two: an audit hook (PEP 578; Python code cannot remove one) that refuses the ways
    # plain Python reaches this runner's frame (and so the token) or arbitrary memory: frames, gc
    # introspection, ctypes, hand-built bytecode, re-imports of the patched builtin modules, /proc.
    frame_attributes = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"))
    refused_events = frozenset(
        "sys._current_frames sys._current_exceptions sys.settrace sys.setprofile gc.get_objects "
        "gc.get_referrers gc.get_referents code.__new__ marshal.loads marshal.load "
        "function.__new__ cpython.run_interactivehook".split()
    )
    refused_imports = frozenset(
        "ctypes _ctypes _testcapi _testinternalcapi _testbuffer _testmultiphase _xxsubinterpreters "
        "_xxinterpchannels posix _posixsubprocess _signal _socket _io resource _imp".split()
    )
    permission_error, value_error, str_type, getcwd = PermissionError, ValueError, str, os.getcwd

    def audit(event, args):
        if event == "sys._getframe":  # ValueError: namedtuple, typing, enum and logging fall back on it
            raise value_error("frame introspection is disabled inside the sandbox")
        if event in refused_events or event.startswith("ctypes."):
            raise permission_error(f"{event} is disabled inside the sandbox")
        if event == "object.__getattr__" and type(args[1]) is str_type and args[1] in frame_attributes:
            raise permission_error(f"{args[1]} is disabled inside the sandbox")
        if event == "import" and type(args[0]) is str_type and args[0].rpartition(".")[2] in refused_imports:
            raise permission_error(f"importing {args[0]} again is disabled inside the sandbox")
        if event in ("open", "os.chdir", "os.listdir", "os.scandir") and args:
            path = args[0]
            if type(path) is bytes:
                path = path.decode(errors="replace")
            if type(path) is str_type:  # no realpath: its helpers are Python the program could patch
                path = path if path.startswith("/") else getcwd() + "/" + path
                if "/proc" in path or ".." in path or path.startswith(("/dev/fd", "/dev/std")):
                    raise permission_error(f"{event} of {path!r} is disabled inside the sandbox")

    import _imp
    import _signal
    import signal

    real_create_builtin = _imp.create_builtin

    def guarded_create_builtin(spec):
        if getattr(spec, "name", None) in refused_imports:
            raise PermissionError("re-creating a patched builtin module is disabled inside the sandbox")
        return real_create_builtin(spec)

    _imp.create_builtin = guarded_create_builtin
    # A signal handler receives the interrupted frame, whose f_back chain reaches this runner.
    _signal.signal = signal.signal = refused("signal.signal")
    sys.addaudithook(audit)


def _child_main() -> None:  # pragma: no cover - runs only inside the sandboxed interpreter
    """Runner inside the sandbox: limits, token, guard, then the program; its source is passed with -c."""
    import builtins
    import os
    import resource
    import sys
    import types

    write, exit_now, base_exception = os.write, os._exit, BaseException
    excepthook, exc_info = sys.__excepthook__, sys.exc_info
    token_fd, program_path, sandbox_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    guarded = sys.argv[4] == "guard"

    def fail_setup(message: str) -> None:
        write(2, b"lopa-sandbox-setup-error: " + message.encode(errors="replace") + b"\n")
        exit_now(125)

    # Limits first: nothing untrusted has run yet, and everything after inherits them.
    try:
        for spec in sys.argv[5:]:
            name, soft, hard = spec.split(":")
            limit_id = getattr(resource, name)
            soft, hard = int(soft), int(hard)
            _, current_hard = resource.getrlimit(limit_id)
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(limit_id, (soft, hard))
        token = b""
        while chunk := os.read(token_fd, 256):
            token += chunk
        os.close(token_fd)
        with open(program_path, encoding="utf-8") as handle:
            source = handle.read()
    except base_exception as error:
        fail_setup(repr(error))
    if len(token) < 16:
        fail_setup("no token received")

    try:
        code = compile(source, program_path, "exec", dont_inherit=True, optimize=0)
    except base_exception:
        excepthook(*exc_info())
        exit_now(1)

    if guarded:  # False only in tests of the operating-system layer alone
        _child_install_guard(sandbox_dir)

    main_module = types.ModuleType("__main__")
    main_module.__dict__.update({"__file__": program_path, "__builtins__": builtins})
    sys.modules["__main__"] = main_module
    real_stdout, real_stderr = sys.stdout, sys.stderr

    def flush_output() -> None:
        try:
            streams = (sys.stdout, sys.stderr, real_stdout, real_stderr)
        except base_exception:
            streams = (real_stdout, real_stderr)
        for stream in streams:
            try:
                stream.flush()
            except base_exception:
                pass

    try:
        exec(code, main_module.__dict__)
    except base_exception:
        flush_output()
        try:
            excepthook(*exc_info())
        except base_exception:
            pass
        exit_now(1)
    flush_output()  # the program's own buffered output goes before the token
    write(1, b"\n" + token + b"\n")
    exit_now(0)


_CHILD_SOURCE = "".join(textwrap.dedent(inspect.getsource(function)) + "\n"
                        for function in (_child_install_guard, _child_main)) + "_child_main()\n"
_isolation_lock = threading.Lock()
_isolation_prefix: list[str] | None = None


def network_isolation_prefix() -> list[str]:
    """The command prefix that gives the sandbox its own empty network namespace ([] where not permitted)."""
    global _isolation_prefix
    with _isolation_lock:
        if _isolation_prefix is None:
            _isolation_prefix = []
            unshare = shutil.which("unshare")
            # Plain -n needs CAP_SYS_ADMIN (root); -r -n uses an unprivileged user namespace where enabled.
            for prefix in ([unshare, "-n"], [unshare, "-r", "-n"]) if unshare else ():
                try:
                    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
                except (OSError, subprocess.SubprocessError):
                    continue
                if probe.returncode == 0:
                    _isolation_prefix = prefix
                    break
        return list(_isolation_prefix)


SANDBOX_UID = 65534  # nobody
TMP_BYTES = 64 * 2**20  # the sandbox's only writable places are two size-limited tmpfs: /tmp and /dev/shm
SHM_BYTES = 16 * 2**20
_bwrap_lock = threading.Lock()
_bwrap_checked: str | None = None  # "" once a probe succeeded, else the reason it failed


def check_isolation(isolation: str) -> None:
    """Raise a ConfigError unless `isolation` is known and, for bwrap, usable here (probed once)."""
    global _bwrap_checked
    check_choice("task.execution.isolation", isolation, ISOLATIONS)
    if isolation == "none":
        return
    with _bwrap_lock:
        if _bwrap_checked is None:
            _bwrap_checked = ""
            if shutil.which("bwrap") is None or shutil.which("setpriv") is None:
                _bwrap_checked = "bubblewrap (bwrap) or setpriv is not installed"
            else:
                try:
                    probe = subprocess.run([*_bwrap_prefix(), "true"], capture_output=True, timeout=30)
                    if probe.returncode != 0:
                        _bwrap_checked = probe.stderr.decode(errors="replace").strip() or f"exit {probe.returncode}"
                except (OSError, subprocess.SubprocessError) as error:
                    _bwrap_checked = repr(error)
        reason = _bwrap_checked
    if reason:
        raise ConfigError(
            f"the code sandbox cannot start bwrap ({reason.splitlines()[0]}); install bubblewrap "
            "(apt-get install bubblewrap) or set task.execution.isolation=none to run generated code "
            "without operating-system isolation"
        )


def _python_roots() -> list[str]:
    """Directories the sandboxed interpreter needs besides /usr: its installation and site-packages."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    roots = {r for r in roots if not (r + "/").startswith("/usr/")}
    return sorted(r for r in roots if not any(r.startswith(o + "/") for o in roots))


def _bwrap_prefix() -> list[str]:
    """bwrap + setpriv: new PID, mount, IPC, UTS, network (and cgroup) namespaces, a read-only system,
    private /proc, /dev, and size-limited /tmp and /dev/shm; the program runs as uid/gid 65534 with
    no capabilities and no_new_privs. No user namespace: bwrap run as root would map the sandbox uid
    to host root (RLIMIT_NPROC is not enforced for it, root-owned files stay readable)."""
    prefix = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
              "--unshare-cgroup-try", "--die-with-parent", "--new-session",
              "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",  # for setpriv only, dropped by it
              "--ro-bind", "/usr", "/usr"]  # fmt: skip
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            prefix += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            prefix += ["--ro-bind", top, top]
    for name in ("ld.so.cache", "localtime"):
        prefix += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # The private mounts first, so that a Python installation or venv under /tmp (a CI checkout) is bound on top.
    prefix += ["--proc", "/proc", "--dev", "/dev",
               "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
               "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]  # fmt: skip
    for root in _python_roots():
        parents = [p for p in Path(root).parents if str(p) != "/"][::-1]
        for parent in parents:  # intermediate directories bwrap creates would be 0700: nobody could pass
            prefix += ["--perms", "0755", "--dir", str(parent)]
        prefix += ["--ro-bind", root, root]
    prefix += ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]  # fmt: skip
    return prefix


def _limit_specs(timeout_s: float, memory_mb: int, max_output_bytes: int) -> list[str]:
    cpu_seconds = math.ceil(timeout_s)  # RLIMIT_CPU counts whole seconds
    limits = {
        "RLIMIT_AS": (memory_mb * 2**20, memory_mb * 2**20),
        "RLIMIT_CPU": (cpu_seconds, cpu_seconds + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        "RLIMIT_FSIZE": (max_output_bytes, max_output_bytes),
        "RLIMIT_NPROC": (PROCESS_LIMIT, PROCESS_LIMIT),
        "RLIMIT_NOFILE": (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT),
        "RLIMIT_CORE": (0, 0),
    }
    return [f"{name}:{soft}:{hard}" for name, (soft, hard) in limits.items()]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_and_kill_group(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the leader up to timeout_s, SIGKILL its whole group, reap it; True if the time ran out."""
    try:
        try:
            pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is None:
            try:
                process.wait(timeout=timeout_s)
                return False
            except subprocess.TimeoutExpired:
                return True
        # The leader stays an unreaped zombie until process.wait() below, so its group id cannot be
        # recycled for an unrelated process before killpg.
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return not poller.poll(max(1, int(timeout_s * 1000)))
        finally:
            os.close(pidfd)
    finally:
        _kill_group(process.pid)
        process.wait()


def _read_tail(handle, num_bytes: int) -> bytes:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - num_bytes))
    return handle.read()


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            function(failed_path)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def _wait_for_exit(pid: int | None, timeout_s: float) -> None:
    """SIGKILL the sandbox's PID-namespace init (this kills every process in the namespace) and wait."""
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # already gone
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(int(timeout_s * 1000))
    finally:
        os.close(pidfd)


def run_program(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
    isolation: str = "bwrap",
    _in_process_guard: bool = True,
) -> ExecutionResult:
    """Run one Python program in the sandbox; passed only if it ran to its end (see the module docstring).

    timeout_s is CPU seconds (rounded up to whole ones); the program is also killed after WALL_CLOCK_FACTOR
    times as many seconds of wall clock.

    isolation="bwrap" (the default) runs it under bubblewrap as uid 65534 and raises a ConfigError where
    that is impossible; "none" is the explicit opt-out: a plain subprocess with only the in-process guard.
    _in_process_guard=False drops the guard and audit hook: only for tests of the bwrap layer alone.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if memory_mb < SANDBOX_MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be at least {SANDBOX_MIN_MEMORY_MB} (the interpreter needs it), got {memory_mb!r}")
    if max_output_bytes < SANDBOX_MIN_OUTPUT_BYTES:
        raise ValueError(f"max_output_bytes must be at least {SANDBOX_MIN_OUTPUT_BYTES}, got {max_output_bytes!r}")
    check_isolation(isolation)
    token = secrets.token_hex(16).encode()
    token_line = b"\n" + token + b"\n"
    host_dir = tempfile.mkdtemp(prefix="lopa-sandbox-")
    fds: list[int] = []
    try:
        host_program = os.path.join(host_dir, "program.py")
        with open(host_program, "w", encoding="utf-8") as handle:
            handle.write(program)
        token_read, token_write = os.pipe()
        fds.append(token_read)
        try:
            os.write(token_write, token)
        finally:
            os.close(token_write)
        if isolation == "bwrap":
            sandbox_dir, program_path = "/tmp", "/tmp/program.py"
            program_fd = os.open(host_program, os.O_RDONLY)
            info_read, info_write = os.pipe()
            fds += [program_fd, info_read, info_write]
            prefix = _bwrap_prefix()
            # bwrap options go before its trailing setpriv command.
            at = prefix.index("setpriv")
            prefix[at:at] = ["--perms", "0444", "--ro-bind-data", str(program_fd), program_path,
                             "--chdir", sandbox_dir, "--info-fd", str(info_write)]  # fmt: skip
        else:
            sandbox_dir, program_path, info_read, info_write = host_dir, host_program, None, None
            prefix = network_isolation_prefix()
        environment = {
            "PATH": "/usr/bin:/bin",
            "HOME": sandbox_dir,
            "TMPDIR": sandbox_dir,
            "LANG": "C.UTF-8",
            # One BLAS/OpenMP thread: numpy would otherwise spawn a thread per core under the limits.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        with tempfile.TemporaryFile() as stdout_file, tempfile.TemporaryFile() as stderr_file:
            command = [
                *prefix,
                sys.executable, "-I", "-B", "-X", "utf8", "-X", f"pycache_prefix={NO_PYCACHE}", "-c", _CHILD_SOURCE,
                str(token_read), program_path, sandbox_dir, "guard" if _in_process_guard else "noguard",
                *_limit_specs(timeout_s, memory_mb, max_output_bytes),
            ]  # fmt: skip
            start = time.monotonic()
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout_file,
                    stderr=stderr_file,
                    cwd=host_dir,
                    env=environment,
                    start_new_session=True,
                    pass_fds=tuple(fds),
                )
            except OSError as error:
                return ExecutionResult(False, "error", "", f"could not start the sandbox: {error!r}", 0.0)
            finally:
                for fd in fds:
                    if fd != info_read:
                        os.close(fd)
                fds = [info_read] if info_read is not None else []
            init_pid = None
            if info_read is not None:  # bwrap writes {"child-pid": N} (the namespace's init) and closes it
                with os.fdopen(info_read, "rb") as info:
                    fds = []
                    match = re.search(rb'"child-pid": *([0-9]+)', info.read())
                init_pid = int(match.group(1)) if match else None
            timed_out = _wait_and_kill_group(process, WALL_CLOCK_FACTOR * timeout_s)
            _wait_for_exit(init_pid, 5.0)
            duration_s = time.monotonic() - start
            stdout = _read_tail(stdout_file, TAIL_BYTES + len(token_line))
            stderr = _read_tail(stderr_file, TAIL_BYTES)
    finally:
        for fd in fds:
            os.close(fd)
        _remove_tree(host_dir)

    returncode = process.returncode
    if isolation == "bwrap" and returncode is not None and returncode > 128:
        returncode = 128 - returncode  # bwrap reports a child killed by signal N as 128 + N
    passed = not timed_out and returncode == 0 and stdout.endswith(token_line)
    if passed:
        status, stdout = "passed", stdout[: -len(token_line)]
    elif timed_out or returncode == -signal.SIGXCPU:
        status = "timeout"
    elif returncode == SETUP_ERROR_EXIT and stderr.startswith(SETUP_ERROR_MARK) or stderr.startswith(b"bwrap:"):
        status = "error"
    else:
        status = "failed"
    return ExecutionResult(
        passed=passed,
        status=status,
        stdout_tail=stdout[-TAIL_BYTES:].decode("utf-8", errors="replace"),
        stderr_tail=stderr[-TAIL_BYTES:].decode("utf-8", errors="replace"),
        duration_s=duration_s,
        returncode=returncode,
    )


def run_programs(
    programs: Sequence[str], workers: int = 4, progress: bool = False, **limits
) -> list[ExecutionResult]:
    """Run programs in parallel sandboxes, results in input order; `limits` go to run_program."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    results: list[ExecutionResult | None] = [None] * len(programs)
    report_every = max(1, len(programs) // 20)
    num_passed = 0
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = {executor.submit(run_program, program, **limits): i for i, program in enumerate(programs)}
        for num_done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results[futures[future]] = result
            num_passed += result.passed
            if progress and (num_done % report_every == 0 or num_done == len(programs)):
                print(
                    f"sandbox: {num_done}/{len(programs)} run, {num_passed} passed",
                    file=sys.stderr,
                    flush=True,
                )
    return results  # type: ignore[return-value]


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k, 1 - C(n-c, k) / C(n, k), as a fraction (Chen et al. 2021, product form)."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct={num_correct} must be between 0 and num_samples={num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"k={k} must be between 1 and num_samples={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), without huge binomials.
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))


def mean_pass_at_k(
    correct_counts: Sequence[int], num_samples: int | Sequence[int], ks: Sequence[int] = (1,)
) -> dict[str, float]:
    """Mean pass@k over problems, keyed "pass@1", ...; num_samples is one count or one per problem."""
    if not correct_counts:
        raise ValueError("no problems to score")
    samples = [num_samples] * len(correct_counts) if isinstance(num_samples, int) else list(num_samples)
    if len(samples) != len(correct_counts):
        raise ValueError(f"{len(samples)} sample counts for {len(correct_counts)} problems")
    return {
        f"pass@{k}": float(
            np.mean([pass_at_k(n, c, k) for n, c in zip(samples, correct_counts, strict=True)])
        )
        for k in ks
    }
