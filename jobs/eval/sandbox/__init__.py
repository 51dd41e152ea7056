"""Run untrusted, model-written Python as hostile input: every sample in its own fresh, jailed subprocess.

    from jobs.eval.sandbox import Limits, run_program, run_many
    outcome = run_program(source, timeout_s=10.0, limits=Limits())
    outcome.passed, outcome.kind, outcome.detail        # True, "passed", ""   (outcome.output: tails of stdout/err)
    outcomes = run_many(sources, timeout_s=10.0, workers=4)   # in order; a progress line on stderr every 5 s
    isolation()                                         # what this machine gives: {"netns": True, ...}

`kind` is one of "passed", "assertion" (an AssertionError: a test failed), "timeout" (wall clock or CPU limit),
"syntax" (the program does not compile), "memory" (MemoryError: the address-space limit; or the kernel killed a
process at the memory total), "crash" (any other exception, SystemExit, or an exit before the tests finished) and
"killed" (a signal, e.g. SIGSEGV). `detail` is one printable line of at most 200 characters. A pass needs exit status
0 *and* a per-run nonce (handed over on stdin) that the runner prints after the program returns, so an `os._exit(0)`
half-way is no pass. This contains damage; it does not defend the verdict against code that sets out to forge one
(it runs in the runner's interpreter: the runner's exit statuses can be faked, and so can the nonce's print).

Three processes per sample (run.py starts them; jail.py is B and I; sample.py is what S runs). The bootstrap B (the
caller's interpreter, `-I -S`, a scrubbed environment, a new session) is moved into the sample's memory cgroup,
unshares new mount, PID, network and IPC namespaces (plus a user namespace when not root, mapping the caller's uid to
itself) and forks I, PID 1 of the new PID namespace. I builds the sample's root and pivots into it, forks the sample S
and reaps until S exits; I's exit tears the namespaces down, killing whatever S left behind, before B returns. S sets
its rlimits (CPU, address space, processes, file size, open files, core 0); as root it drops to a uid of its own
(SANDBOX_UID_BASE + a counter, no passwd entry: RLIMIT_NPROC is not enforced for root, and a per-sample uid makes it
a per-sample count); it sets no_new_privs and execs a fresh `python -I -S` with PATH=/usr/bin:/bin, LANG=C.UTF-8,
HOME=/tmp and nothing else.

What the sample sees, and why:
- Its root is a new tmpfs holding only read-only binds of /usr, of /bin, /sbin and /lib* (symlinks on merged-usr
  systems), of the interpreter's prefixes (interpreter.py), /dev with null, zero, random and urandom, a new /proc (its
  own PIDs only) and /tmp; I pivot_roots into it and detaches the old root, so nothing else of the host exists inside:
  no path socket (a database's, an agent's), no $HOME, no keys or tokens, no repository. pivot_root, not chroot (the
  old root would stay reachable). Everything but /tmp is read-only (mount_setattr; on kernels before 5.12 one remount
  per mount point). Abstract Unix sockets belong to the network namespace: the host's are out of reach. No seccomp
  filter: one would need per-architecture syscall numbers and BPF, and would still leave files; this design has one
  architecture-specific number (pivot_root's, known for x86_64, aarch64, riscv64, ppc64 and s390x; elsewhere the
  mounts fail and the sandbox is unavailable).
- No network: a new network namespace with only a loopback that is down.
- SysV shared memory, message queues and semaphores live in its own IPC namespace and die with it.
- /tmp is a tmpfs of Limits.disk_bytes (plus program.py) with a cap on files, discarded with the sample;
  RLIMIT_FSIZE caps each file, and what it prints.
- Memory: a memory cgroup (cgroup.py: a child of the caller's own, v2 where the caller's cgroup gives children the
  memory controller, else v1; swap capped too) holds all its processes to Limits.total_memory_bytes together, /tmp,
  SysV segments and most kernel memory included; a kill there is kind "memory". Where no cgroup can be made (not
  root, as on a compute node, and no delegated cgroup) each process's address space is capped at total_memory_bytes
  / max_processes instead (Limits.address_space): at most max_processes processes and threads exist at once, so the
  memory mapped into them is at most total_memory_bytes in all. Not counted then: /tmp (up to disk_bytes), memory
  held but not mapped (memfd files, each at most file_bytes; SysV segments, detached; pipe buffers) and kernel memory;
  under SLURM the job's own cgroup still bounds all of it.
- CPU time is limited per process (RLIMIT_CPU) and the wall clock per sample: then B SIGKILLs I and returns once the
  namespace is empty, and the whole process group is SIGKILLed (I also has PDEATHSIG=SIGKILL).
Not root (a compute node): the user namespace maps only the caller's uid, so the sample runs as the caller, but none
of the caller's files exist in its root; RLIMIT_NPROC counts the caller's processes in the sample's user namespace
on kernels since 5.14 (before, all of the user's processes). An interpreter under $HOME (pyenv, uv) has its prefix
bound, read-only: that directory, not the rest of $HOME.

If the namespaces cannot be had (not root and no unprivileged user namespaces, a container without CAP_SYS_ADMIN, an
unknown architecture), run_program raises SandboxUnavailable unless the caller passes allow_network=True: accepting
the risk, the sample then runs with rlimits only (and, as root, a uid of its own, and the memory cgroup where one can
be made), in a work directory of its own: it has the network, the host's files (the caller's, when not root; sockets
included), /tmp, SysV IPC and disk (RLIMIT_FSIZE per file only). As root the sample's interpreter must be reachable
by an unprivileged uid: sys.executable if it is, else /usr/bin/python3 (HumanEval needs only the standard library);
pass python=... to choose. An interpreter that lives under /tmp, /proc or /dev cannot be bound: pass another.
"""

from .interpreter import SandboxUnavailable, sample_python
from .limits import Limits
from .run import SANDBOX_UID_BASE, isolation, run_many, run_program, usable_cpus
from .verdict import Kind, Outcome

__all__ = ["SANDBOX_UID_BASE", "Kind", "Limits", "Outcome", "SandboxUnavailable", "isolation", "run_many",
           "run_program", "sample_python", "usable_cpus"]
