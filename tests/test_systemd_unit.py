"""systemd/ocsd.service: systemd itself checks it, and the directives that matter are there.

`systemd-analyze verify` loads the unit the way systemd would and reports
unknown or misspelt directives, bad values and missing executables. Two
things in the shipped unit only make sense on a production host:

* ExecStart names /usr/bin/ocsd. The copy under test points it at the `ocsd`
  installed in the running interpreter's environment, which really exists, so
  the executable check stays meaningful.
* User=/Group= name the dedicated `ocsd` account, which a test machine does
  not have (and which a test must not create system-wide). Depending on its
  version, verify may or may not check that the user exists. The copy under
  test names the account running the tests instead; every other line is
  verified exactly as shipped, and a separate assertion holds the shipped
  file to User=ocsd / Group=ocsd (and to no DynamicUser, since the state
  lives in /var/lib/ocsd).

A missing `systemd-analyze` is a failure that names the Debian package to
install, never a skip.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ocsd.service"
OCSD = Path(sys.executable).with_name("ocsd")


def analyze() -> str:
    path = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze") else None)
    if path is None:
        pytest.fail("systemd-analyze not found: install the Debian package 'systemd' "
                    "(apt-get install systemd)", pytrace=False)
    return path


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_under_test(text: str, directory: Path) -> Path:
    """The unit with ExecStart on the installed ocsd and User/Group on the current account."""
    assert OCSD.exists(), f"{OCSD} missing: install the project (pip install -e .)"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = text.replace("/usr/bin/ocsd", str(OCSD))
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.MULTILINE)
    text = re.sub(r"^Group=.*$", f"Group={group}", text, flags=re.MULTILINE)
    path = directory / "ocsd.service"
    path.write_text(text)
    return path


def verify(path: Path) -> tuple[int, str]:
    """Exit code and the findings about our unit. verify also loads the units ours
    is ordered after (postgresql, redis, ...) and repeats their own packages'
    warnings (e.g. a Debian unit still using MemoryLimit=): those lines name
    their own files and are not findings about ocsd."""
    r = subprocess.run([analyze(), "verify", "--man=no", str(path)], capture_output=True,
                       text=True, timeout=60, cwd=path.parent)
    lines = [line for line in (r.stdout + r.stderr).splitlines()
             if line.strip() and not _about_another_unit(line, path)]
    return r.returncode, "\n".join(lines).strip()


def _about_another_unit(line: str, ours: Path) -> bool:
    m = re.match(r"^(/\S+\.(?:service|socket|target|timer|mount|slice)):\d+:", line)
    return m is not None and Path(m.group(1)).name != ours.name


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    code, output = verify(unit_under_test(UNIT.read_text(), tmp_path))
    # verify exits 0 on mere warnings (an unknown directive is "ignored"):
    # any output at all is a finding.
    assert code == 0 and output == "", f"systemd-analyze verify:\n{output}"


def test_verify_would_catch_a_misspelt_directive(tmp_path):
    """The check above can fail: a typo systemd would silently ignore is reported."""
    broken = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    code, output = verify(unit_under_test(broken, tmp_path))
    assert "Unknown key 'WatchdogSecs'" in output


def test_the_directives_that_matter(tmp_path):
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/usr/bin/ocsd --config /etc/ocsd/ocs.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["User"] == "ocsd" and one["Group"] == "ocsd"
    assert "DynamicUser" not in one
    assert one["StateDirectory"] == "ocsd" and one["ConfigurationDirectory"] == "ocsd"
    assert int(one["WatchdogSec"]) == 30
    # Longer than the defaults of api.shutdown_timeout + daemon.drain_timeout (5 + 10).
    assert int(one["TimeoutStopSec"]) > 15
    assert int(one["LimitNOFILE"]) >= 65536
    caps = {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(one["AmbientCapabilities"].split()) == caps
    assert set(one["CapabilityBoundingSet"].split()) == caps
    assert set(one["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    for key, value in {
            "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
            "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
            "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
            "SystemCallArchitectures": "native"}.items():
        assert one.get(key) == value, f"{key}={one.get(key)} (want {value})"
    assert re.search(r"^#\s*LoadCredential=", UNIT.read_text(), re.MULTILINE), \
        "the commented LoadCredential= example is gone"


def test_security_exposure_stays_low(tmp_path):
    """systemd's own exposure score of the sandbox (0 = locked down, 10 = none)."""
    path = unit_under_test(UNIT.read_text(), tmp_path)
    r = subprocess.run([analyze(), "security", "--offline=yes", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    m = re.search(r"Overall exposure level for ocsd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0, r.stdout
