# `bty-web backup` while the server runs (a timestamped directory under the backup directory),
# then a loss, then `bty-web restore SRC --force` with the server stopped: the machine records
# come back. The CLI reads the same bty.toml as the
# service (/etc/bty/bty.toml) and runs as the service's user.
{ pkgs, common }:

pkgs.testers.runNixOSTest {
  name = "bty-backup-restore";
  nodes = {
    inherit (common) server;
  };
  testScript = common.prelude + ''
    start_all()
    login()
    mac = "52:54:00:12:34:60"
    api("PUT", f"/machines/{mac}", {"policy": "inventory", "labels": ["rack-3"]})

    cli = "runuser -u bty-web -- env BTY_CONFIG_FILE=/etc/bty/bty.toml bty-web"
    with subtest("backup while serving"):
        backup = server.succeed(f"{cli} backup /var/lib/bty/backups").strip()
        server.succeed(f"sqlite3 {backup}/state.db 'PRAGMA integrity_check' | grep -qx ok")
        server.succeed(f"test -s {backup}/inventory.json")
        # Not while the server runs.
        server.fail(f"{cli} restore {backup} --force")

    with subtest("the record is lost"):
        api("DELETE", f"/machines/{mac}")
        server.fail(f"curl -sf -b /tmp/jar http://127.0.0.1:8080/machines/{mac}")

    with subtest("restore with the server stopped, then it serves the restored state"):
        server.systemctl("stop bty-web.service")
        # An existing state.db is only replaced when asked to.
        server.fail(f"{cli} restore {backup}")
        server.succeed(f"{cli} restore {backup} --force")
        server.systemctl("start bty-web.service")
        login()
        m = api("GET", f"/machines/{mac}")
        t.assertEqual(m["policy"], "inventory")
        t.assertIn("rack-3", m["labels"])
  '';
}
