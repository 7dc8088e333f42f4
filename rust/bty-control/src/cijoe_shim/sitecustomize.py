# bty: SSH host-key pinning for cijoe's paramiko transport.
#
# cijoe's SSH transport accepts any host key (paramiko's AutoAddPolicy). bty
# runs cijoe with this directory on PYTHONPATH, so Python imports this file
# at start and every paramiko SSHClient then checks the host key against
# BTY_SSH_KNOWN_HOSTS. An empty file means first contact: the key offered
# is accepted and written to BTY_SSH_LEARNED for bty to pin. A key that
# differs from the pinned one stops the connection, and what was offered
# is written to BTY_SSH_REFUSED.
import os

_known = os.environ.get("BTY_SSH_KNOWN_HOSTS")
if _known:
    import paramiko

    def _write(var, text):
        path = os.environ.get(var)
        if path:
            with open(path, "w") as f:
                f.write(text)

    class _Pinned(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            line = "%s %s\n" % (key.get_name(), key.get_base64())
            if os.path.getsize(_known) == 0:
                _write("BTY_SSH_LEARNED", line)
                return
            _write("BTY_SSH_REFUSED", line)
            raise paramiko.SSHException(
                "bty: the host key of %s is not the one pinned for this machine" % hostname
            )

    _set_policy = paramiko.SSHClient.set_missing_host_key_policy
    _connect = paramiko.SSHClient.connect

    def _pinned_policy(self, policy):
        _set_policy(self, _Pinned())

    def _pinned_connect(self, hostname, *args, **kwargs):
        self.load_host_keys(_known)
        _set_policy(self, _Pinned())
        try:
            return _connect(self, hostname, *args, **kwargs)
        except paramiko.BadHostKeyException as e:
            _write("BTY_SSH_REFUSED", "%s %s\n" % (e.key.get_name(), e.key.get_base64()))
            raise

    paramiko.SSHClient.set_missing_host_key_policy = _pinned_policy
    paramiko.SSHClient.connect = _pinned_connect
