# cijoe (PyPI, pinned: the version the tests run, checks/deps.sh) and withcache, which cijoe
# needs and nixpkgs does not have. The provisioning workflows of the live environment
# (cijoe-offline) and of bty-web (cijoe-online) run this `cijoe`.
{
  lib,
  python3Packages,
  fetchPypi,
}:

let
  py = python3Packages;

  withcache = py.buildPythonPackage rec {
    pname = "withcache";
    version = "0.13.3";
    pyproject = true;
    src = fetchPypi {
      inherit pname version;
      hash = "sha256-W4NdgwYPisy5Pgp9TzfSZsCHIFEn5Z5NN3fWQGP5zkU=";
    };
    build-system = [ py.hatchling ];
    dependencies = with py; [
      fastapi
      itsdangerous
      jinja2
      python-multipart
      uvicorn
    ];
    pythonImportsCheck = [ "withcache" ];
    meta = {
      description = "A caching proxy for downloads, used by cijoe";
      homepage = "https://pypi.org/project/withcache/";
      license = lib.licenses.bsd3;
    };
  };
in
py.buildPythonApplication rec {
  pname = "cijoe";
  version = "0.9.61";
  pyproject = true;
  src = fetchPypi {
    inherit pname version;
    hash = "sha256-rFi/AV5/CxK+aK8gAgHgi14CMNypLHibxGFPHJ3XTkc=";
  };
  build-system = with py; [
    setuptools
    wheel
  ];
  dependencies =
    (with py; [
      jinja2
      paramiko
      psutil
      pytest
      pytest-random-order
      pytest-reportlog
      pyyaml
      requests
      scp
      tomli-w
      watchdog
    ])
    ++ [ withcache ];
  pythonImportsCheck = [ "cijoe" ];
  # Its own tests need a target machine; bty's provisioning tests run it for real.
  doCheck = false;
  passthru = { inherit withcache; };
  meta = {
    description = "Tool-agnostic scripts and tasks for systems development and testing";
    homepage = "https://github.com/refenv/cijoe";
    license = lib.licenses.bsd3;
    mainProgram = "cijoe";
  };
}
