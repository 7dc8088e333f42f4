# The workspace's binaries (bty, bty-web, and bty-tui once the crate exists) built with crane.
# Returns the package plus the crane derivations the flake's checks reuse, so dependencies are
# compiled once (buildDepsOnly) and shared by the build, clippy and the tests.
{
  lib,
  craneLib,
  pkg-config,
  zstd,
  gptfdisk,
  e2fsprogs,
  util-linux,
  procps,
  # A minisign public key (base64): the release key `bty os` verifies with when given no other.
  releasePublicKey ? null,
}:

let
  root = ../.;

  # Only what cargo needs: Rust sources, Cargo.{toml,lock}, rustfmt.toml, and the files the crates embed with
  # include_str!/include_bytes! (bty-web's UI templates and assets, bty-control's iPXE templates and SQL
  # migrations). Changing a Nix file, the README or the VM suite does not rebuild the binaries.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (root + "/rustfmt.toml")
      (root + "/rust/bty-web/templates")
      (root + "/rust/bty-web/assets")
      (root + "/rust/bty-control/templates")
      (root + "/rust/bty-control/migrations")
    ];
  };

  commonArgs = {
    inherit src;
    pname = "bty";
    version = (craneLib.crateNameFromCargoToml { cargoToml = root + "/Cargo.toml"; }).version;
    strictDeps = true;
    # zstd-sys, lzma-sys, bzip2-sys and rusqlite's bundled SQLite compile C code with the
    # stdenv compiler; pkg-config lets the -sys crates find system libraries when they look.
    nativeBuildInputs = [ pkg-config ];
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  bty = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoExtraArgs = "--locked --workspace";
      # The tests run as their own check (checks.<system>.bty-tests) so that a test failure
      # is reported as such, and the package can be rebuilt without rerunning them.
      doCheck = false;
      meta = {
        description = "Flash OS images onto bare-metal disks, from a USB stick or over PXE";
        license = lib.licenses.gpl3Only;
        mainProgram = "bty";
        platforms = lib.platforms.linux;
      };
    }
    # Read by bty-core at compile time (option_env!); set here only, so a new key rebuilds the
    # package and not the dependencies, clippy or the tests.
    // lib.optionalAttrs (releasePublicKey != null) { BTY_OS_PUBKEY = releasePublicKey; }
  );
in
{
  inherit bty;

  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets -- -D warnings";
    }
  );

  # Tests that need root (loop devices) skip themselves, saying why, inside the build sandbox.
  tests = craneLib.cargoTest (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoTestExtraArgs = "--workspace -- --test-threads=2";
      # The tests make their fixture images with the compressors (gzip, xz, bzip2 and tar
      # come with stdenv) and check partition tables with sgdisk.
      nativeCheckInputs = [
        zstd
        gptfdisk
        e2fsprogs
        util-linux
        procps
      ];
    }
  );

  fmt = craneLib.cargoFmt { inherit (commonArgs) src pname version; };
}
