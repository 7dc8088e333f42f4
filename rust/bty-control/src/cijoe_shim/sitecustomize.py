# bty: SSH host-key pinning for cijoe's paramiko transport.
#
# cijoe's SSH transport accepts any host key (paramiko's AutoAddPolicy). bty
# runs cijoe with this directory on PYTHONPATH, so Python imports this file
# at start and every paramiko SSHClient then checks the host key against
# BTY_SSH_KNOWN_HOSTS. An empty file means first contact: the key offered
# is accepted and written to BTY_SSH_LEARNED for bty to pin. A key that
# differs from the pinned one stops the connection, and what was offered
# is written to BTY_SSH_REFUSED; the pinned key met again is written to
# BTY_SSH_VERIFIED (also when the login then fails). bty fails a run in
# which none of the three was written.
#
# paramiko is patched when it is imported, not here: a wrapped interpreter
# (Nix's cijoe) adds its dependencies to sys.path only after start-up, so
# paramiko may not be importable yet when this file runs.
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_known = os.environ.get("BTY_SSH_KNOWN_HOSTS")


def _write(var, text):
    path = os.environ.get(var)
    if path:
        with open(path, "w") as f:
            f.write(text)


def _line(key):
    return "%s %s\n" % (key.get_name(), key.get_base64())


def _pinned_key():
    with open(_known) as f:
        return f.read().split()[1:3]


def _pin(paramiko):
    """Make every paramiko SSHClient check the pinned host key."""
    if getattr(paramiko.SSHClient, "_bty_pinned", False):
        return

    class _Refused(paramiko.SSHException):
        pass

    class _Pinned(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            pinned = _pinned_key()
            if not pinned:
                _write("BTY_SSH_LEARNED", _line(key))
                return
            if pinned == [key.get_name(), key.get_base64()]:
                _write("BTY_SSH_VERIFIED", _line(key))
                return
            _write("BTY_SSH_REFUSED", _line(key))
            raise _Refused(
                "bty: the host key of %s is not the one pinned for this machine" % hostname
            )

    def _verified(client):
        # The server's key, once the key exchange is done, is the pinned one.
        pinned = _pinned_key()
        transport = client.get_transport()
        if not pinned or transport is None:
            return
        try:
            key = transport.get_remote_server_key()
        except Exception:
            return
        if key is not None and pinned == [key.get_name(), key.get_base64()]:
            _write("BTY_SSH_VERIFIED", _line(key))

    _set_policy = paramiko.SSHClient.set_missing_host_key_policy
    _connect = paramiko.SSHClient.connect

    def _pinned_policy(self, policy):
        _set_policy(self, _Pinned())

    def _pinned_connect(self, hostname, *args, **kwargs):
        self.load_host_keys(_known)
        _set_policy(self, _Pinned())
        try:
            done = _connect(self, hostname, *args, **kwargs)
        except paramiko.BadHostKeyException as e:
            _write("BTY_SSH_REFUSED", _line(e.key))
            raise
        except _Refused:
            raise
        except Exception:
            # The key may have been checked before the login failed.
            _verified(self)
            raise
        _verified(self)
        return done

    paramiko.SSHClient.set_missing_host_key_policy = _pinned_policy
    paramiko.SSHClient.connect = _pinned_connect
    paramiko.SSHClient._bty_pinned = True


class _PatchAfterExec(importlib.abc.Loader):
    """paramiko's own loader, then the patch."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _pin(module)


class _PinOnImport(importlib.abc.MetaPathFinder):
    """Finds paramiko as the other finders do, with the patch applied once
    it has loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "paramiko":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchAfterExec(spec.loader)
                return spec
            if spec is not None:
                return None
        return None


def _chain():
    """Run the sitecustomize this file shadows (Nix's interpreter has one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if p and os.path.abspath(p) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except Exception as e:  # what it does is not bty's; a failure is only said
        sys.stderr.write("bty: %s failed: %s\n" % (spec.origin, e))


if _known:
    if "paramiko" in sys.modules:
        _pin(sys.modules["paramiko"])
    else:
        sys.meta_path.insert(0, _PinOnImport())
_chain()
