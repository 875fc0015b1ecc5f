"""A real one-node SLURM cluster for the test suite: munged, MariaDB, slurmdbd, slurmctld and slurmd from
Debian's packages, started as root in seconds without systemd or cgroups, and stopped by PID.

Every file it writes (configs, databases, spool, logs) lives in one state folder, removed on stop; the
client commands find the cluster through SLURM_CONF (`LocalSlurm.env`)."""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from string import Template

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
COMMANDS = ("munged", "munge", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sacctmgr", "sbatch", "sacct", "squeue", "sinfo", "scancel")
SEARCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MUNGE_RUN = Path("/run/munge")
MUNGE_PID = MUNGE_RUN / "munged.pid"
SITE_CONF = Path("/etc/slurm/slurm.conf")
CONF_CACHE = Path("/run/slurm/conf")  # where a configless slurmd caches the config for the job steps
GPUS = 2  # gres.conf lists gpu[0-1]
DAEMON_NAMES = {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd"}


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster starts daemons as root (run the suite as root, as .ci/run does)"
    if SITE_CONF.exists():
        return f"{SITE_CONF} exists: this machine has its own SLURM cluster, which jobs' steps would talk to"
    missing = [cmd for cmd in COMMANDS if shutil.which(cmd, path=SEARCH_PATH) is None]
    if missing:
        return (f"the local SLURM cluster needs the Debian packages {' '.join(PACKAGES)} "
                f"(tests/cluster/install.sh installs them); missing commands: {', '.join(missing)}")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_named(names: set[str]) -> dict[int, str]:
    """pid -> name of the live processes whose command name is in `names`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:  # exited while we looked
                continue
            if name in names:
                found[int(entry.name)] = name
    return found


class ClusterError(RuntimeError):
    pass


class LocalSlurm:
    """`with LocalSlurm(state_dir) as cluster:` starts the cluster, registers `cluster.account` for root
    with accounting, and on exit cancels the jobs, stops every daemon it started and removes its state."""

    cluster = "editharm-test"
    partition = "debug"
    account = "editharm"

    def __init__(self, state: Path, *, mem_mb: int = 64000, timeout: float = 60.0):
        self.state = Path(state)
        self.mem_mb = mem_mb
        self.timeout = timeout
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[int, str] = {}  # pid -> name of every daemon this cluster started
        self.ports = {name: free_port() for name in ("db_port", "dbd_port", "ctld_port", "slurmd_port")}
        self.db_password = secrets.token_hex(12)
        self.env = {**os.environ, "SLURM_CONF": str(self.state / "slurm.conf"),
                    "PATH": f"{os.environ.get('PATH', '')}:{SEARCH_PATH}"}
        self.up_seconds = self.down_seconds = 0.0

    def __enter__(self) -> "LocalSlurm":
        start = time.monotonic()
        try:
            for folder in ("slurmctld", "slurmd"):
                (self.state / folder).mkdir(parents=True)
            self._start_munge()
            self._start_mariadb()
            self._write_configs()
            self._start_daemon("slurmdbd", "slurmdbd", "-D")
            self._wait("slurmdbd to answer",
                       lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
            self.run("sacctmgr", "-i", "add", "cluster", self.cluster)
            self.run("sacctmgr", "-i", "add", "account", self.account, f"cluster={self.cluster}")
            self.run("sacctmgr", "-i", "add", "user", "root", f"account={self.account}", f"cluster={self.cluster}")
            self._start_daemon("slurmctld", "slurmctld", "-D")
            self._start_daemon("slurmd", "slurmd", "-D", f"--conf-server=127.0.0.1:{self.ports['ctld_port']}",
                               configless=True)
            self._wait("the node to be idle",
                       lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle")
        except BaseException:
            self.__exit__()
            raise
        self.up_seconds = time.monotonic() - start
        log.info("SLURM cluster up in %.1f s", self.up_seconds)
        return self

    def __exit__(self, *exc) -> None:
        start = time.monotonic()
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", f"--account={self.account}", check=False)
            self._wait("the jobs' processes to end", lambda: not processes_named({"slurmstepd"}), raise_=False)
        for name in reversed(list(self.procs)):
            self._stop(name, self.procs[name])
        self.procs.clear()
        shutil.rmtree(self.state, ignore_errors=True)
        if CONF_CACHE.is_symlink() and not CONF_CACHE.exists():  # slurmd's link into the removed spool
            CONF_CACHE.unlink()
        if CONF_CACHE.parent.exists() and not any(CONF_CACHE.parent.iterdir()):
            CONF_CACHE.parent.rmdir()
        if MUNGE_PID.exists() and not running(int(MUNGE_PID.read_text().split()[0] or 0)):
            MUNGE_PID.unlink()
        self.down_seconds = time.monotonic() - start
        log.info("SLURM cluster down in %.1f s", self.down_seconds)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=self.timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def leftover_processes(self) -> dict[int, str]:
        """Daemons this cluster started, and job step daemons, that are still alive."""
        return {pid: name for pid, name in processes_named(DAEMON_NAMES).items()
                if self.started.get(pid) == name or name == "slurmstepd"}

    def logs(self, lines: int = 15) -> str:
        tails = []
        for path in sorted(self.state.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(tails)

    def _start_munge(self) -> None:
        if MUNGE_PID.exists():
            pid = int(MUNGE_PID.read_text().split()[0] or 0)
            if running(pid):  # the machine's own munged: use it, leave it running
                return
            MUNGE_PID.unlink()
        MUNGE_RUN.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        # munged refuses to run as root; as its own user it reads /etc/munge/munge.key from the package.
        # --force: a socket left by a munged that died is no reason to refuse.
        self._start_daemon("munged", "munged", "--foreground", "--force", user="munge")
        self._wait("munged", lambda: self.run("munge", "-n", check=False).returncode == 0)

    def _start_mariadb(self) -> None:
        data, sock, port = self.state / "mysql", self.state / "mysql.sock", self.ports["db_port"]
        self.run("mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}",
                 "--auth-root-authentication-method=socket", "--skip-test-db")
        self._start_daemon("mariadbd", "mariadbd", "--no-defaults", "--user=root", f"--datadir={data}",
                           f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                           f"--pid-file={self.state / 'mariadbd.pid'}", f"--log-error={self.state / 'mariadbd.log'}")
        sql = ("mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e")
        self._wait("MariaDB", lambda: self.run(*sql, "SELECT 1", check=False).returncode == 0)
        self.run(*sql, f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
                       "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")

    def _write_configs(self) -> None:
        values = {
            "cluster": self.cluster, "partition": self.partition, "host": self.host, "state": self.state,
            "cpus": os.cpu_count(), "mem_mb": self.mem_mb, "db_password": self.db_password, **self.ports,
        }
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
            path = self.state / name
            path.write_text(Template((HERE / name).read_text()).substitute(values))
        for gpu in range(GPUS):
            (self.state / f"gpu{gpu}").symlink_to("/dev/null")
        # slurmdbd refuses a config (it holds the database password) readable by others.
        (self.state / "slurmdbd.conf").chmod(0o600)

    def _start_daemon(self, name: str, *cmd: str, user: str | None = None, configless: bool = False) -> None:
        env = {k: v for k, v in self.env.items() if not (configless and k == "SLURM_CONF")}
        out = open(self.state / f"{name}.out.log", "wb")
        self.procs[name] = subprocess.Popen(
            [shutil.which(cmd[0], path=SEARCH_PATH), *cmd[1:]], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, user=user, group=user,
        )
        self.started[self.procs[name].pid] = name
        out.close()

    def _stop(self, name: str, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
                proc.kill()
                proc.wait()

    def _wait(self, what: str, ready, *, raise_: bool = True) -> None:
        deadline = time.monotonic() + self.timeout
        while not ready():
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                if not raise_:
                    return
                cause = f"{', '.join(dead)} exited" if dead else f"not ready after {self.timeout:.0f} s"
                raise ClusterError(f"waiting for {what}: {cause}\n{self.logs()}")
            time.sleep(0.2)
