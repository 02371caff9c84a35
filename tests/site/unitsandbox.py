# SPDX-License-Identifier: Apache-2.0
"""Run a command the way packaging/systemd/scitagd.service would, without systemd as PID 1.

The unit file is the source of truth: its user, capabilities, NoNewPrivileges,
MemoryDenyWriteExecute and file-system directives are read from it and emulated with
`unshare --mount` (a private mount namespace, so nothing is left on the host), bind mounts and
`setpriv`. What is emulated:

- the host as systemd leaves it: bpffs on /sys/fs/bpf with mode 0700 (systemd's mount_setup),
  here a fresh private bpffs instance; the unit's ExecStartPre=+ (pin directory made and handed
  to the user) is run as written;
- RuntimeDirectory=, StateDirectory=, CacheDirectory=: directories owned by the user (on tmpfs);
- PrivateTmp=, ProtectHome=: empty tmpfs over /tmp, /var/tmp, /home, /root, /run/user;
- TemporaryFileSystem= + BindPaths=: a tmpfs over the path, the bound paths put back;
- ProtectSystem=strict (with ProtectKernelTunables=, ProtectControlGroups=): every mount
  read-only except /dev, /proc and the writable paths (ReadWritePaths= and the directories
  above), as systemd does;
- User=/Group= as a numeric uid/gid that no account uses (a dedicated user with no
  supplementary groups; /etc/passwd is not touched), AmbientCapabilities= /
  CapabilityBoundingSet= through setpriv, NoNewPrivileges= (--no-new-privs);
- SystemCallFilter= (allow list, groups expanded by systemd-analyze, SystemCallErrorNumber=)
  and RestrictAddressFamilies= as seccomp filters (python3-seccomp; skipped, and said so by
  `Sandbox.seccomp_why`, when it is missing), and MemoryDenyWriteExecute= as
  prctl(PR_SET_MDWE): unitexec.py, the last step before exec, as in systemd.

Not emulated: the other seccomp-based settings (RestrictNamespaces=, LockPersonality=, ...),
PrivateDevices=, ProtectKernel*= beyond the read-only /sys; systemd-analyze verify checks
their syntax.

The code runs as installed: the package and its dependencies bind-mounted read-only to a
world-readable place, started by the system interpreter (/usr/bin/python3).
"""

from __future__ import annotations

import os
import shlex
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "scitagd.service"
CODE = "/run/scitagd-code"  # where the package appears inside the sandbox (read-only)
SYSTEM_PYTHON = "/usr/bin/python3"
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def syscall_group(items: List[str]) -> List[str]:
    """System call names of a SystemCallFilter= allow list, @groups expanded as systemd does."""
    import subprocess

    out: List[str] = []
    for item in items:
        if not item.startswith("@"):
            out.append(item)
            continue
        r = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True)
        body = [line.strip() for line in r.stdout.splitlines()[1:]]
        out += syscall_group([b for b in body if b and not b.startswith("#")])
    return sorted(set(out))


def seccomp_missing() -> Optional[str]:
    import shutil
    import subprocess

    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze missing"
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    return "python3-seccomp missing" if r.returncode else None


def parse_unit(path: Path = UNIT) -> Dict[str, List[str]]:
    """systemd's ini syntax as far as our units use it: repeated keys accumulate, an empty
    assignment resets, backslash continues a line."""
    out: Dict[str, List[str]] = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        k = f"{section}.{key.strip()}"
        value = value.strip()
        if value == "":
            out[k] = []
        else:
            out.setdefault(k, []).append(value)
    return out


def unit_caps(unit: Optional[Dict[str, List[str]]] = None) -> List[str]:
    """The unit's ambient capabilities, lower case without CAP_ (setpriv's names)."""
    u = unit or parse_unit()
    caps: List[str] = []
    for v in u.get("Service.AmbientCapabilities", []):
        caps += [c.lower().removeprefix("cap_") for c in v.split()]
    return caps


def _words(u: Dict[str, List[str]], key: str) -> List[str]:
    return [w for v in u.get(f"Service.{key}", []) for w in shlex.split(v)]


def _yes(u: Dict[str, List[str]], key: str) -> bool:
    v = u.get(f"Service.{key}", [])
    return bool(v) and v[-1].lower() in ("yes", "true", "1", "on", "strict", "full", "read-only")


@dataclass
class Sandbox:
    """One run as the unit: build `argv()` and start it with `env()` from the test."""

    uid: int
    gid: int
    caps: Sequence[str]  # setpriv names, e.g. ["bpf", "net_admin"]
    bpffs: str = "0700"  # mode of the emulated host bpffs; "missing": none mounted
    code_src: Path = REPO / "src"
    code_site: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["purelib"]))
    files: Dict[str, Path] = field(default_factory=dict)  # name in CODE -> host file (configs)
    setup: List[str] = field(default_factory=list)  # shell lines, as root, before ExecStartPre=
    mdwe: Optional[bool] = None  # None: as the unit says
    seccomp: Optional[bool] = None  # None: as the unit says, where python3-seccomp is installed
    unit: Dict[str, List[str]] = field(default_factory=parse_unit)

    def _user_dirs(self) -> List[str]:
        u = self.unit
        out = []
        for key, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib"),
                          ("CacheDirectory", "/var/cache")):
            out += [f"{base}/{d}" for d in _words(u, key)]
        return out

    def writable(self) -> List[str]:
        rw = [p.lstrip("-") for p in _words(self.unit, "ReadWritePaths")]
        if _yes(self.unit, "PrivateTmp"):
            rw += ["/tmp", "/var/tmp"]
        return [*self._user_dirs(), *rw]

    def script(self, cmd: Sequence[str]) -> str:
        u = self.unit
        q = shlex.quote
        owner = f"{self.uid}:{self.gid}"
        lines = ["set -eu"]
        # The host as systemd leaves it.
        if self.bpffs == "missing":
            lines.append("umount -l /sys/fs/bpf 2>/dev/null || true")
        else:
            lines.append(f"mount -t bpf -o mode={self.bpffs} bpf /sys/fs/bpf")
        # What systemd itself does before ExecStart: its directories, owned by the user.
        for base in ("/run", "/var/lib", "/var/cache"):
            lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {base}")
        for d in self._user_dirs():
            lines.append(f"install -d -m 0755 -o {self.uid} -g {self.gid} {q(d)}")
        lines += self.setup  # what the host holds before the unit starts
        # ExecStartPre=+ lines run as root, outside the sandbox, with the user substituted.
        user = (u.get("Service.User") or ["root"])[-1]
        for pre in u.get("Service.ExecStartPre", []):
            if pre.startswith("+"):
                text = pre[1:].replace(f"{user}:{user}", owner).replace(f"-o {user} -g {user}",
                                                                         f"-o {self.uid} -g {self.gid}")
                if self.bpffs == "missing" and "/sys/fs/bpf" in text:
                    continue
                lines.append(text)
        # The installed package (read-only, world-readable) and the files the test hands in.
        lines.append(f"install -d -m 0755 {CODE} {CODE}/src {CODE}/site")
        lines.append(f"mount --bind {q(str(self.code_src))} {CODE}/src")
        lines.append(f"mount --bind {q(str(self.code_site))} {CODE}/site")
        for name, host in self.files.items():
            lines.append(f"install -m 0644 {q(str(host))} {CODE}/{q(name)}")
        # What systemd applies last (seccomp, W^X) is done by unitexec.py; its inputs go in now.
        lines.append(f"install -m 0644 {q(str(Path(__file__).with_name('unitexec.py')))} {CODE}/unitexec.py")
        ux = [SYSTEM_PYTHON, f"{CODE}/unitexec.py"]
        use_seccomp = self.seccomp if self.seccomp is not None else seccomp_missing() is None
        if use_seccomp:
            words = _words(u, "SystemCallFilter")
            assert not any(w.startswith("~") for w in words), "deny lists are not emulated"
            calls = syscall_group(words)
            if calls:
                lines.append(f"printf '%s\\n' {' '.join(calls)} > {CODE}/syscalls.txt")
                ux += ["--syscalls", f"{CODE}/syscalls.txt", "--errno",
                       (u.get("Service.SystemCallErrorNumber") or ["EPERM"])[-1]]
            fams = _words(u, "RestrictAddressFamilies")
            if fams:
                ux += ["--families", ",".join(str(FAMILIES[f]) for f in fams)]
        # PrivateTmp=, ProtectHome=.
        if _yes(u, "PrivateTmp"):
            lines += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=1777 tmpfs /var/tmp"]
        if _yes(u, "ProtectHome"):
            lines += [f"[ -d {d} ] && mount -t tmpfs -o mode=0755 tmpfs {d} || true"
                      for d in ("/home", "/root", "/run/user")]
        # TemporaryFileSystem= with BindPaths= under it: keep the bound paths out first.
        binds = [b.lstrip("-") for b in _words(u, "BindPaths")
                 if not (self.bpffs == "missing" and b.lstrip("-").startswith("/sys/fs/bpf"))]
        for i, b in enumerate(binds):
            lines += [f"install -d /run/.bind{i}", f"mount --bind {q(b)} /run/.bind{i}"]
        for t in _words(u, "TemporaryFileSystem"):
            path, _, opts = t.partition(":")
            if self.bpffs == "missing" and path.startswith("/sys/fs/bpf"):
                continue
            lines.append(f"mount -t tmpfs -o {q(opts or 'mode=0755')} tmpfs {q(path)}")
        for i, b in enumerate(binds):
            lines += [f"install -d {q(b)}", f"mount --move /run/.bind{i} {q(b)}"]
        # ProtectSystem=strict + ReadWritePaths=: writable paths become mounts of their own, then
        # every other mount goes read-only (/dev and /proc stay as they are).
        strict = (u.get("Service.ProtectSystem") or ["no"])[-1] == "strict"
        if strict:
            rw = [p for p in self.writable() if not (self.bpffs == "missing" and p.startswith("/sys/fs/bpf"))]
            for p in rw:
                lines.append(f"mount --bind {q(p)} {q(p)}")
            keep = " ".join(rw)
            lines.append(
                "awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do "
                "mp=$(printf '%b' \"$mp\"); "
                "case \"$mp\" in /proc|/proc/*|/dev|/dev/*) continue;; esac; "
                f"case ' {keep} ' in *\" $mp \"*) continue;; esac; "
                "mount -o remount,bind,ro \"$mp\" 2>/dev/null || true; done")
        # The drop: user, capabilities, no new privileges; then seccomp and W^X (unitexec.py).
        capset = ",".join(f"+{c}" for c in self.caps)
        sp = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
              f"--inh-caps=-all{',' + capset if capset else ''}",
              f"--ambient-caps=-all{',' + capset if capset else ''}",
              f"--bounding-set=-all{',' + capset if capset else ''}"]
        if _yes(u, "NoNewPrivileges"):
            sp.append("--no-new-privs")
        if _yes(u, "MemoryDenyWriteExecute") if self.mdwe is None else self.mdwe:
            ux.append("--mdwe")
        lines.append("exec " + " ".join(q(a) for a in [*sp, "--", *ux, *cmd]))
        return "\n".join(lines)

    def argv(self, netns: Optional[str], cmd: Sequence[str]) -> List[str]:
        """nsenter (network only, so the host's cgroups stay visible) -> private mount namespace
        -> the sandbox script -> setpriv -> cmd."""
        pre = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        return [*pre, "unshare", "--mount", "--propagation", "private", "sh", "-c", self.script(cmd)]

    def env(self) -> Dict[str, str]:
        """systemd's clean environment plus what the unit's directories export."""
        e = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "PYTHONPATH": f"{CODE}/src:{CODE}/site", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        for key, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib"),
                          ("CacheDirectory", "/var/cache")):
            dirs = _words(self.unit, key)
            if dirs:
                e[key.upper().replace("DIRECTORY", "_DIRECTORY")] = ":".join(f"{base}/{d}" for d in dirs)
        return e


def free_id() -> int:
    """A uid/gid that no account or group uses: the dedicated user, without touching /etc/passwd."""
    import grp
    import pwd

    used = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    for n in range(61900, 62900):
        if n not in used:
            return n
    raise RuntimeError("no free uid in 61900..62899")


def system_python_matches() -> Optional[str]:
    """Why the system interpreter cannot run this venv's compiled dependencies, or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} missing"
    import subprocess
    import sys

    r = subprocess.run([SYSTEM_PYTHON, "-c", "import sys;print(sys.version_info[:2])"], capture_output=True,
                       text=True)
    if r.stdout.strip() != str(sys.version_info[:2]):
        return (f"{SYSTEM_PYTHON} is {r.stdout.strip()}, the venv is {sys.version_info[:2]}: its compiled "
                "dependencies would not load")
    return None
