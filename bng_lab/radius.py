"""A real FreeRADIUS 3.2 for tests and the lab: unprivileged, on loopback (of a namespace),
from a configuration directory written here (never /etc/freeradius), readiness-probed with
``radclient ... status``.

FreeRADIUS 3.2.1 does not sign its replies; bng requires a Message-Authenticator in every
reply (BlastRADIUS), so the server adds one in post-auth and in the reject section.

    with FreeRadius(workdir, port=18120, users=USERS, namespace="bng-...") as fr:
        fr.log_lines("Login incorrect")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SECRET = "bng-test-secret"

RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {dir}
raddbdir = {dir}
radacctdir = {dir}/acct
name = freeradius
confdir = {dir}
modconfdir = {dir}
certdir = {dir}
cadir = {dir}
run_dir = {dir}
db_dir = {dir}
libdir = /usr/lib/freeradius
pidfile = {dir}/radiusd.pid
max_request_time = 30
cleanup_delay = 0
max_requests = 16384
hostname_lookups = no
log {{
    destination = files
    file = {dir}/radius.log
    colourise = no
    stripped_names = no
    auth = yes
    auth_badpass = no
    auth_goodpass = no
    msg_denied = "You are already logged in - access denied"
}}
checkconfig = no
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = yes
}}
client loopback {{
    ipaddr = 127.0.0.1
    secret = {secret}
    require_message_authenticator = yes
}}
thread pool {{
    start_servers = 2
    max_servers = 4
    min_spare_servers = 1
    max_spare_servers = 3
    max_requests_per_server = 0
}}
modules {{
    files {{
        filename = {dir}/users
    }}
    pap {{
        normalise = yes
    }}
    always ok {{
        rcode = ok
    }}
    detail {{
        filename = {dir}/acct/detail
        escape_filenames = no
        permissions = 0644
        header = "%t"
        locking = no
    }}
}}
server default {{
    listen {{
        type = auth
        ipaddr = {address}
        port = {port}
    }}
{acct}
    authorize {{
        files
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
    }}
    post-auth {{
        update reply {{
            &Message-Authenticator := 0x00
        }}
        Post-Auth-Type REJECT {{
            update reply {{
                &Message-Authenticator := 0x00
            }}
        }}
    }}
}}
"""


ACCT = """\
    listen {{
        type = acct
        ipaddr = {address}
        port = {port}
    }}
    accounting {{
        detail
    }}
"""


class FreeRadius:
    def __init__(self, port: int, users: str, namespace: str | None = None,
                 address: str = "127.0.0.1", secret: str = SECRET,
                 acct_port: int | None = None) -> None:
        """``acct_port``: also an accounting listener, whose records go to the detail file
        (``detail()``)."""
        self.port, self.users, self.namespace = port, users, namespace
        self.acct_port = acct_port
        self.address, self.secret = address, secret
        # Readable by the unprivileged server: its own directory, not a test's 0700 tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="bng-freeradius-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def _ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv] if self.namespace else list(argv)

    def write(self) -> None:
        d = self.dir
        (d / "radiusd.conf").write_text(RADIUSD_CONF.format(
            dir=d, address=self.address, port=self.port, secret=self.secret,
            acct=ACCT.format(address=self.address, port=self.acct_port)
            if self.acct_port else ""))
        (d / "dictionary").write_text("$INCLUDE /usr/share/freeradius/dictionary\n")
        (d / "users").write_text(self.users)
        (d / "acct").mkdir(exist_ok=True)
        for p in [d, *d.iterdir()]:  # the server's own: it refuses a writable config
            shutil.chown(p, "nobody", "nogroup")
            os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def start(self, timeout: float = 20) -> FreeRadius:
        self.write()
        argv = self._ns("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "freeradius", "-f", "-d", str(self.dir), "-n", "radiusd")
        out = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"freeradius exited with {self.proc.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            if self.ready():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"freeradius not ready after {timeout}s:\n{self.output()[-3000:]}")

    def ready(self) -> bool:
        r = subprocess.run(self._ns("radclient", "-r", "1", "-t", "1", "-q",
                                    f"{self.address}:{self.port}", "status", self.secret),
                           input="Message-Authenticator = 0x00\n", capture_output=True,
                           text=True, check=False)
        return r.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def output(self) -> str:
        p = self.dir / "stdout.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def log(self) -> str:
        p = self.dir / "radius.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def detail(self) -> list[dict[str, str]]:
        """The accounting records the server acknowledged, in the order it wrote them
        (its detail file): attribute name -> value as FreeRADIUS prints it (strings
        unquoted)."""
        p = self.dir / "acct" / "detail"
        if not p.exists():
            return []
        out = []
        for block in p.read_text(errors="replace").split("\n\n"):
            rec: dict[str, str] = {}
            for line in block.splitlines():
                if line.startswith("\t") and " = " in line:
                    k, v = line.strip().split(" = ", 1)
                    rec[k] = v.strip('"')
            if rec:
                out.append(rec)
        return out

    def radclient(self, port: int, command: str, attrs: dict[str, str | int],
                  secret: str | None = None, address: str = "127.0.0.1",
                  timeout: float = 1, retries: int = 1) -> subprocess.CompletedProcess[str]:
        """``radclient`` (from this server's namespace) sends one request, ``command``
        (coa, disconnect, ...), to ``address:port`` and prints the reply (-x)."""
        text = "".join(f"{k} = {v}\n" for k, v in attrs.items())
        return subprocess.run(self._ns("radclient", "-x", "-r", str(retries), "-t",
                                       str(timeout), f"{address}:{port}", command,
                                       secret if secret is not None else self.secret),
                              input=text, capture_output=True, text=True, check=False)

    def log_lines(self, *words: str) -> list[str]:
        """Lines of the server's log (auth = yes: one per Access-Request answered) that
        contain every one of ``words``."""
        return [line for line in self.log().splitlines() if all(w in line for w in words)]

    def __enter__(self) -> FreeRadius:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
