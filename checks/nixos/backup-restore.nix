# `bty-web backup DEST` while the server runs, then a loss, then `bty-web restore SRC` with the
# server stopped: the machine records come back. The CLI reads the same bty.toml as the
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
        server.succeed(f"{cli} backup /var/lib/bty/backups/vm-test.db")
        server.succeed("sqlite3 /var/lib/bty/backups/vm-test.db 'PRAGMA integrity_check' | grep -qx ok")

    with subtest("the record is lost"):
        api("DELETE", f"/machines/{mac}")
        server.fail(f"curl -sf -b /tmp/jar http://127.0.0.1:8080/machines/{mac}")

    with subtest("restore with the server stopped, then it serves the restored state"):
        server.systemctl("stop bty-web.service")
        server.succeed(f"{cli} restore /var/lib/bty/backups/vm-test.db")
        server.systemctl("start bty-web.service")
        login()
        m = api("GET", f"/machines/{mac}")
        t.assertEqual(m["policy"], "inventory")
        t.assertIn("rack-3", m["labels"])
  '';
}
