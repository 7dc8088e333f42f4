"""QEMU client VMs for bty's end-to-end checks (Python 3.11 standard library only).

A `VM` is one client machine: BIOS (SeaBIOS, i440fx) or UEFI (OVMF, q35, its own NVRAM file),
a NIC that network-boots first (iPXE from Debian's ipxe-qemu ROMs), raw disk files as
virtio-blk with a serial number, and QEMU user networking whose DHCP hands out the iPXE
bootstrap URL on a fixed guest-side server address (10.0.2.100:80) forwarded to a server on the
host's loopback. Everything the guest prints on COM1 goes to a log file that `wait_for` polls.

    from vm import VM, Disk
    with VM(workdir, firmware="uefi", disks=[Disk("disk.raw", "bty-disk-0")], server_port=8080) as vm:
        m, t = vm.wait_for(r"bty-live: network up (\\S+)", timeout=120)
        vm.kill()          # a power cut
        vm.start()         # power on again (same NVRAM, same disks, same log file)

The VM process and everything it forks (the per-connection `busybox nc` of the guestfwd) is
killed when the `with` block ends, on `kill()`, and at interpreter exit.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

QEMU = os.environ.get("BTY_QEMU", "qemu-system-x86_64")
DEFAULT_MAC = "52:54:00:12:34:56"
SERVER_IP = "10.0.2.100"  # the server as the guest sees it (guestfwd)
DEFAULT_BOOTFILE = f"http://{SERVER_IP}/pxe-bootstrap.ipxe"
DEBUG_EXIT_PORT = 0xF4
MARKER_EXIT_STATUS = 33  # QEMU's exit status when the marker disk writes 0x10 to port 0xf4

OVMF_CODE_CANDIDATES = ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]
OVMF_VARS_CANDIDATES = ["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"]
# OVMF's own network boot (PXE / HTTP boot over IPv4 and IPv6) would run after iPXE gives up
# and can stall a boot for about a minute; iPXE from the NIC ROM is all we want.
OVMF_FW_CFG = [
    "opt/org.tianocore/IPv4PXESupport,string=no",
    "opt/org.tianocore/IPv6PXESupport,string=no",
    "opt/org.tianocore/IPv6Support,string=no",
    "opt/org.tianocore/IPv4Support,string=no",
]


class VMError(Exception):
    """The VM did not do what was waited for; the message ends with the serial log's tail."""


@dataclasses.dataclass
class Disk:
    path: str | os.PathLike
    serial: str = "bty-disk-0"  # at most 20 characters
    bootindex: int | None = None  # default: 2, 3, ... in list order (the NIC has 1)
    format: str = "raw"
    bus: str = "virtio"  # "virtio" (virtio-blk-pci, /dev/vdX), "nvme" (/dev/nvmeXn1),
    #                      "sata" (AHCI, /dev/sdX)


def _no_comma(what: str, value: str) -> str:
    # QEMU option strings use ',' as separator; refuse instead of mis-escaping.
    if "," in value:
        raise ValueError(f"{what} must not contain a comma: {value!r}")
    return value


# --- acceleration -----------------------------------------------------------------------------

_accel_cache: str | None = None

# A boot sector that only writes 0x10 to port 0xf4 (isa-debug-exit): QEMU exits with 33 if the
# accelerator really runs guest code.
_PROBE_SECTOR = bytes.fromhex("baf400b010eef4ebfd").ljust(510, b"\0") + b"\x55\xaa"


def _kvm_probe(timeout: float = 20.0) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    # /dev/kvm can exist (and open) in a nested VM whose CPU lacks VT-x/AMD-V: no guest boots.
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        return False
    with tempfile.TemporaryDirectory(prefix="bty-kvm-probe.") as d:
        disk = Path(d, "probe.img")
        disk.write_bytes(_PROBE_SECTOR)
        cmd = [QEMU, "-accel", "kvm", "-m", "64", "-display", "none", "-nodefaults",
               "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
               "-drive", f"file={disk},format=raw,if=ide"]
        try:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            return False
        return r.returncode == MARKER_EXIT_STATUS


def accel() -> str:
    """'kvm' when a probe VM really runs under KVM, else 'tcg'. BTY_VM_ACCEL=kvm|tcg forces it."""
    global _accel_cache
    forced = os.environ.get("BTY_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if _accel_cache is None:
        _accel_cache = "kvm" if _kvm_probe() else "tcg"
    return _accel_cache


# --- waiting on the serial log ----------------------------------------------------------------

def read_log(path: str | os.PathLike) -> str:
    """The serial log as text; latin-1 so that string offsets are byte offsets."""
    try:
        return Path(path).read_bytes().decode("latin-1")
    except FileNotFoundError:
        return ""


def tail(path: str | os.PathLike, lines: int = 40) -> str:
    text = read_log(path)
    # Drop terminal escape sequences (OVMF, GRUB) so the tail is readable.
    text = re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", text)
    return "\n".join(text.splitlines()[-lines:])


def wait_for(log: str | os.PathLike, pattern: str | re.Pattern, timeout: float, *,
             after: int = 0, fail: str | re.Pattern | None = None,
             proc: subprocess.Popen | None = None, start: float | None = None,
             poll: float = 0.1) -> tuple[re.Match, float]:
    """Poll the serial log until `pattern` matches at or after byte offset `after`.

    Returns (match, elapsed seconds since `start` — a time.monotonic() value — or since the
    call). `match.end()` is a byte offset in the log: pass it as `after` to wait for what comes
    next. Raises VMError when `fail` matches first, when `proc` exits first, or on timeout.
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    frx = re.compile(fail) if isinstance(fail, str) else fail
    t0 = time.monotonic()
    base = t0 if start is None else start
    while True:
        text = read_log(log)
        m = rx.search(text, after)
        fm = frx.search(text, after) if frx else None
        if fm and (not m or fm.start() < m.start()):
            raise VMError(f"{fm.group(0)!r} seen while waiting for {rx.pattern!r}\n"
                          f"--- serial log tail ({log}) ---\n{tail(log)}")
        if m:
            return m, time.monotonic() - base
        if proc is not None and proc.poll() is not None:
            # One last read: the process may have written the match just before it exited.
            m = rx.search(read_log(log), after)
            if m:
                return m, time.monotonic() - base
            raise VMError(f"VM exited (status {proc.returncode}) before {rx.pattern!r} appeared\n"
                          f"--- serial log tail ({log}) ---\n{tail(log)}")
        if time.monotonic() - t0 > timeout:
            raise VMError(f"timed out after {timeout:.0f}s waiting for {rx.pattern!r}\n"
                          f"--- serial log tail ({log}) ---\n{tail(log)}")
        time.sleep(poll)


# --- the VM -----------------------------------------------------------------------------------

_live: "weakref.WeakSet[VM]" = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for vm in list(_live):
        vm.kill()


def _drain(sock) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


class VM:
    """One QEMU client machine. Use as a context manager (starts on enter, killed on exit)."""

    def __init__(self, workdir: str | os.PathLike, *, firmware: str = "bios",
                 mac: str = DEFAULT_MAC, disks: list[Disk] | tuple = (),
                 server_port: int | None = None, bootfile: str | None = DEFAULT_BOOTFILE,
                 net: bool = True, nic: str = "virtio-net-pci", memory_mib: int = 512,
                 smp: int = 1, no_reboot: bool = False, debug_exit: bool = True,
                 kernel: str | None = None, initrd: str | None = None, append: str | None = None,
                 accel_name: str | None = None, interactive: bool = False,
                 record_requests: bool = False, tap: tuple[str, str] | None = None,
                 own_pxe: bool = False, http_boot: bool = False,
                 hostfwd: list[tuple[int, int]] | tuple = (),
                 extra_args: list[str] | tuple = (), name: str = "vm"):
        if firmware not in ("bios", "uefi"):
            raise ValueError("firmware must be 'bios' or 'uefi'")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.firmware = firmware
        self.mac = mac.lower()
        self.disks = [d if isinstance(d, Disk) else Disk(*d) for d in disks]
        self.server_port = server_port
        self.bootfile = bootfile
        self.net = net
        self.nic = nic
        self.memory_mib = memory_mib
        self.smp = smp
        self.no_reboot = no_reboot
        self.debug_exit = debug_exit
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.accel_name = accel_name
        self.extra_args = list(extra_args)
        # (host port, guest port): TCP on 127.0.0.1:host reaches the guest's port (user networking).
        self.hostfwd = list(hostfwd)
        self.interactive = interactive
        self.record_requests = record_requests
        # (namespace, ifname): a tap device on a real layer-2 segment (see l2.py) instead of
        # QEMU's user networking; QEMU then runs inside that namespace.
        self.tap = tap
        # UEFI: the firmware's own PXE client (no iPXE option ROM on the NIC).
        self.own_pxe = own_pxe or http_boot
        # UEFI: the firmware's own HTTP boot (HTTPClient), its PXE switched off so it gets there.
        self.http_boot = http_boot
        self.requests_log = self.workdir / f"{name}.requests.log"  # guest->server bytes
        self.name = _no_comma("name", name)
        self.serial_log = self.workdir / f"{name}.serial.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.vars = self.workdir / f"{name}.OVMF_VARS.fd"
        self.serial_socket = self.workdir / f"{name}.serial.sock"  # with interactive=True
        self._sock = None
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.boots = 0
        self.log_mark = 0
        for d in self.disks:
            if len(d.serial) > 20:
                raise ValueError(f"virtio-blk serial {d.serial!r} is longer than 20 characters")

    # -- command line --
    def command(self) -> list[str]:
        acc = self.accel_name or accel()
        cmd = [QEMU, "-name", self.name, "-accel", acc, "-m", str(self.memory_mib),
               "-smp", str(self.smp), "-display", "none", "-nodefaults", "-no-user-config",
               "-chardev", self._serial_chardev(), "-serial", "chardev:ser0",
               "-rtc", "base=utc"]
        if acc == "kvm":
            cmd += ["-cpu", "host"]
        if self.no_reboot:
            cmd.append("-no-reboot")
        if self.debug_exit:
            cmd += ["-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"]
        if self.firmware == "uefi":
            code = next((p for p in OVMF_CODE_CANDIDATES if os.path.exists(p)), None)
            vars_tpl = next((p for p in OVMF_VARS_CANDIDATES if os.path.exists(p)), None)
            if not code or not vars_tpl:
                raise VMError("OVMF not found (install the ovmf package: checks/deps.sh)")
            if not self.vars.exists():  # the machine's NVRAM: kept across power cycles
                shutil.copyfile(vars_tpl, self.vars)
            cmd += ["-machine", "q35",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={_no_comma('vars', str(self.vars))}"]
            # With its own PXE wanted, OVMF keeps IPv4 PXE and loses only the IPv6 attempt.
            if self.http_boot:
                fw_cfg = [f for f in OVMF_FW_CFG if "PXE" in f or "IPv6" in f]
            elif self.own_pxe:
                fw_cfg = [f for f in OVMF_FW_CFG if "IPv6" in f]
            else:
                fw_cfg = OVMF_FW_CFG
            for fw in fw_cfg:
                cmd += ["-fw_cfg", f"name={fw}"]
        else:
            cmd += ["-machine", "pc"]
        if self.net and self.tap:
            rom = ",romfile=" if self.own_pxe else ""
            cmd += ["-netdev", f"tap,id=n0,ifname={_no_comma('tap', self.tap[1])},script=no,downscript=no",
                    "-device", f"{self.nic},netdev=n0,mac={self.mac},bootindex=1{rom}"]
            cmd = ["ip", "netns", "exec", self.tap[0]] + cmd
        elif self.net:
            netdev = "user,id=n0,restrict=on"
            if self.bootfile:
                netdev += f",bootfile={_no_comma('bootfile', self.bootfile)}"
            if self.server_port:
                # cmd: guestfwd runs one `busybox nc` per guest connection (a plain tcp:
                # guestfwd carries a single connection only). The command is split into words
                # and run without a shell: a pipeline needs an explicit `sh -c '...'`.
                fwd = f"busybox nc 127.0.0.1 {int(self.server_port)}"
                if self.record_requests:
                    log = _no_comma("requests log", str(self.requests_log))
                    if "'" in log or " " in log:
                        raise ValueError(f"requests log path must not contain quotes/spaces: {log}")
                    fwd = f"sh -c 'tee -a {log} | {fwd}'"
                netdev += f",guestfwd=tcp:{SERVER_IP}:80-cmd:{fwd}"
            for host, guest in self.hostfwd:
                netdev += f",hostfwd=tcp:127.0.0.1:{int(host)}-:{int(guest)}"
            cmd += ["-netdev", netdev,
                    "-device", f"{self.nic},netdev=n0,mac={self.mac},bootindex=1"]
            if os.environ.get("BTY_E2E_PCAP"):  # every frame the guest sends or gets, for Wireshark
                pcap = _no_comma("pcap path", str(self.workdir / f"{self.name}.pcap"))
                cmd += ["-object", f"filter-dump,id=dump0,netdev=n0,file={pcap}"]
        ahci = False
        for i, d in enumerate(self.disks):
            bi = d.bootindex if d.bootindex is not None else 2 + i
            path = _no_comma("disk path", str(Path(d.path).resolve()))
            serial = _no_comma("serial", d.serial)
            cmd += ["-drive", f"file={path},format={d.format},if=none,id=d{i}"]
            if d.bus == "virtio":
                cmd += ["-device", f"virtio-blk-pci,drive=d{i},serial={serial},bootindex={bi}"]
            elif d.bus == "nvme":
                cmd += ["-device", f"nvme,drive=d{i},serial={serial},bootindex={bi}"]
            elif d.bus == "sata":
                if not ahci:  # q35 has an AHCI controller built in, but its ports are taken
                    cmd += ["-device", "ahci,id=ahci0"]
                    ahci = True
                cmd += ["-device", f"ide-hd,drive=d{i},bus=ahci0.{i},serial={serial},"
                                   f"bootindex={bi}"]
            else:
                raise ValueError(f"unknown disk bus {d.bus!r}")
        if self.kernel:
            cmd += ["-kernel", self.kernel]
            if self.initrd:
                cmd += ["-initrd", self.initrd]
            if self.append:
                cmd += ["-append", self.append]
        return cmd + self.extra_args

    def _serial_chardev(self) -> str:
        log = _no_comma("serial log path", str(self.serial_log))
        if self.interactive:
            # COM1 on a unix socket (send() types into it), everything it prints also logged.
            sock = _no_comma("socket path", str(self.serial_socket))
            return f"socket,id=ser0,path={sock},server=on,wait=off,logfile={log},logappend=on"
        # append=on: one log across power cycles (a plain -serial file: truncates).
        return f"file,id=ser0,append=on,path={log}"

    def send(self, text: str | bytes, pace: float = 0.005) -> None:
        """Type on COM1 (interactive=True only), e.g. vm.send("ls /\r"). One byte every `pace`
        seconds: a long line sent at once was seen to lose characters in the guest's shell."""
        import socket
        if not self.interactive:
            raise VMError("send() needs VM(..., interactive=True)")
        if self._sock is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(str(self.serial_socket))
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            self._sock = s
            # Once a client is connected QEMU sends COM1's output to it as well as to the log;
            # unread, it stalls the guest's console output. The log keeps the copy we need.
            threading.Thread(target=_drain, args=(s,), daemon=True).start()
        data = text.encode() if isinstance(text, str) else text
        for i in range(len(data)):
            self._sock.sendall(data[i:i + 1])
            if pace:
                time.sleep(pace)

    # -- lifecycle --
    def start(self) -> "VM":
        """Power on. The serial log is appended to across power cycles; `self.log_mark` is the
        offset where this boot's output starts."""
        if self.running:
            raise VMError(f"{self.name} is already running")
        self.log_mark = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        cmd = self.command()
        qlog = open(self.qemu_log, "ab")
        qlog.write(("\n$ " + " ".join(cmd) + "\n").encode())
        qlog.flush()
        # A fresh session: kill() can end QEMU and the `nc` processes it forked, all at once.
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                     start_new_session=True)
        qlog.close()
        self.boots += 1
        _live.add(self)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def elapsed(self) -> float:
        """Seconds since this power-on."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def kill(self) -> None:
        """Pull the plug: SIGKILL QEMU and its children (a power cut). Idempotent."""
        if getattr(self, "_sock", None) is not None:
            self._sock.close()
            self._sock = None
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        else:
            # QEMU ended by itself; its guestfwd children may still hold connections.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    stop = kill

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to end by itself (poweroff, isa-debug-exit, -no-reboot); its status."""
        if self.proc is None:
            raise VMError("VM was never started")
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"{self.name} still running after {timeout:.0f}s\n"
                          f"--- serial log tail ({self.serial_log}) ---\n{tail(self.serial_log)}")
        self.kill()  # reap the session's leftovers
        return rc

    # -- observing --
    def log(self) -> str:
        return read_log(self.serial_log)

    def tail(self, lines: int = 40) -> str:
        return tail(self.serial_log, lines)

    def wait_for(self, pattern: str | re.Pattern, timeout: float, *, after: int | None = None,
                 fail: str | re.Pattern | None = None) -> tuple[re.Match, float]:
        """Like the module's wait_for on this VM's serial log; elapsed is since power-on, and by
        default only this power-on's output is searched (see start())."""
        return wait_for(self.serial_log, pattern, timeout,
                        after=self.log_mark if after is None else after,
                        fail=fail, proc=self.proc, start=self.started_at)

    def __enter__(self) -> "VM":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass
